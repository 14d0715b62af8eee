package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// probeTimeout bounds every probe so a broken datapath fails a test instead of hanging it.
const probeTimeout = 3 * time.Second

// TCPAnswer is what one connection to a service saw.
type TCPAnswer struct {
	Backend string         // the name the backend answered with
	Peer    netip.AddrPort // getpeername() on the client socket
}

// DialTCP connects to addr (from the calling thread's namespace), sends one line and
// reads the backend's name. The connection is returned open for callers that keep it.
func DialTCP(addr netip.AddrPort) (*net.TCPConn, TCPAnswer, error) {
	c, err := net.DialTimeout("tcp", addr.String(), probeTimeout)
	if err != nil {
		return nil, TCPAnswer{}, err
	}
	tc := c.(*net.TCPConn)
	peer, err := peerName(tc)
	if err != nil {
		tc.Close()
		return nil, TCPAnswer{}, err
	}
	name, err := Ask(tc)
	if err != nil {
		tc.Close()
		return nil, TCPAnswer{}, err
	}
	return tc, TCPAnswer{Backend: name, Peer: peer}, nil
}

// Ask sends one request line on an open connection and returns the answer line.
func Ask(c net.Conn) (string, error) {
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("who\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// peerName calls getpeername(2) directly: what the application sees as its peer.
func peerName(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	return sockaddrToAddrPort(sa)
}

func sockaddrToAddrPort(sa unix.Sockaddr) (netip.AddrPort, error) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("unexpected sockaddr %T", sa)
}

// DNSAnswer is what one DNS query to a service saw.
type DNSAnswer struct {
	Backend string         // the TXT answer: which backend served it
	From    netip.AddrPort // the reply's source address as recvfrom() reports it
}

// QueryDNS sends a WhoamiName TXT query from an unconnected UDP socket, so the reply's
// source comes from recvmsg(): with socket-LB it must be the service address.
func QueryDNS(addr netip.AddrPort) (DNSAnswer, error) {
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	pc, err := net.ListenPacket(network, ":0")
	if err != nil {
		return DNSAnswer{}, err
	}
	defer pc.Close()
	q := new(dns.Msg)
	q.SetQuestion(WhoamiName, dns.TypeTXT)
	wire, err := q.Pack()
	if err != nil {
		return DNSAnswer{}, err
	}
	_ = pc.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := pc.WriteTo(wire, net.UDPAddrFromAddrPort(addr)); err != nil {
		return DNSAnswer{}, err
	}
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return DNSAnswer{}, err
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		return DNSAnswer{}, err
	}
	if r.Id != q.Id || len(r.Answer) != 1 {
		return DNSAnswer{}, fmt.Errorf("bad DNS reply: %v", r)
	}
	txt, ok := r.Answer[0].(*dns.TXT)
	if !ok || len(txt.Txt) != 1 {
		return DNSAnswer{}, errors.New("DNS reply without one TXT string")
	}
	return DNSAnswer{Backend: txt.Txt[0], From: from.(*net.UDPAddr).AddrPort()}, nil
}
