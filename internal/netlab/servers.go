package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// WhoamiName is the DNS name the backends answer with their own name (TXT).
const WhoamiName = "whoami.sockmesh."

// Backend serves, inside its host's namespace, a line-based TCP service that answers
// every line with the backend's name, and a DNS server that answers WhoamiName TXT
// with the same name.
type Backend struct {
	Name    string
	tcp     net.Listener
	udp     net.PacketConn
	dns     *dns.Server
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	Accepts int64 // connections accepted so far (guarded by mu)
}

// StartBackend listens on [::]:tcpPort and [::]:udpPort (both families) in h's namespace.
func StartBackend(h *Host, tcpPort, udpPort int) (*Backend, error) {
	b := &Backend{Name: h.Name, conns: map[net.Conn]struct{}{}}
	err := h.Do(func() error {
		var err error
		if b.tcp, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", tcpPort)); err != nil {
			return err
		}
		b.udp, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", udpPort))
		return err
	})
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("backend %s: %w", h.Name, err)
	}
	b.dns = &dns.Server{PacketConn: b.udp, Handler: dns.HandlerFunc(b.serveDNS)}
	started := make(chan struct{})
	b.dns.NotifyStartedFunc = func() { close(started) }
	b.wg.Add(2)
	go func() { defer b.wg.Done(); _ = b.dns.ActivateAndServe() }()
	go func() { defer b.wg.Done(); b.acceptLoop() }()
	<-started
	return b, nil
}

func (b *Backend) acceptLoop() {
	for {
		c, err := b.tcp.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.Accepts++
		b.mu.Unlock()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.serveConn(c)
		}()
	}
}

func (b *Backend) serveConn(c net.Conn) {
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	for {
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		if _, err := c.Write([]byte(b.Name + "\n")); err != nil {
			return
		}
	}
}

func (b *Backend) serveDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, WhoamiName) && q.Question[0].Qtype == dns.TypeTXT {
		m.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: WhoamiName, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{b.Name}}}
	} else {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// AcceptCount returns how many TCP connections the backend accepted.
func (b *Backend) AcceptCount() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Accepts
}

// Close stops both servers and closes open connections.
func (b *Backend) Close() error {
	var errs []error
	if b.dns != nil {
		errs = append(errs, b.dns.Shutdown())
	} else if b.udp != nil {
		errs = append(errs, b.udp.Close())
	}
	if b.tcp != nil {
		errs = append(errs, b.tcp.Close())
	}
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return errors.Join(errs...)
}
