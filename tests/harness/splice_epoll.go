package harness

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// EpollServerParams start splice-epoll-server, an edge-triggered epoll server written
// with raw syscalls, the way nginx and Envoy drive their sockets, listening on Listen.
// It prints one JSON spEpConn per connection it closes.
type EpollServerParams struct{ Listen netip.AddrPort }

func (EpollServerParams) Op() string { return "splice-epoll-server" }

// EpollParams: the client runs Conns connections to the epoll server concurrently,
// each doing Rounds rounds of pipelined requests, and prints a SpliceCountResult.
type EpollParams struct{ Conns, Rounds int }

func (EpollParams) Op() string { return "splice-epoll" }

func init() {
	extraOps["splice-epoll-server"] = spliceEpollServer
	spClientOp(func(req ClientRequest, p EpollParams) (SpliceCountResult, error) {
		return spClientEpoll(req.To, p.Conns, p.Rounds)
	})
}

// The epoll protocol: a request is 16 bytes (magic, connection, round, response size);
// the response is that many bytes, starting with the request and then a pattern.
const spEpMagic = 0x5e11ce55

func spEpRequest(conn, round, size uint32) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b[0:], spEpMagic)
	binary.BigEndian.PutUint32(b[4:], conn)
	binary.BigEndian.PutUint32(b[8:], round)
	binary.BigEndian.PutUint32(b[12:], size)
	return b
}

func spEpResponse(req []byte) []byte {
	size := binary.BigEndian.Uint32(req[12:])
	b := make([]byte, size)
	copy(b, req)
	seed := binary.BigEndian.Uint32(req[4:]) + binary.BigEndian.Uint32(req[8:])
	for i := 16; i < len(b); i++ {
		b[i] = byte((uint32(i) + seed) % 251)
	}
	return b
}

// spEpConn is one connection of the epoll server: what was read but not yet parsed,
// what is still to be written, and counts for the report.
type spEpConn struct {
	fd      int
	in, out []byte
	eof     bool
	Served  int
	WAgain  int // writes that hit EAGAIN and waited for EPOLLOUT
	Reads   int
	MaxOutQ int
}

// spliceEpollServer: one thread, non-blocking sockets, EPOLLET on everything: each
// readiness edge must be drained to EAGAIN, and a server that misses an edge waits
// forever, which the client's deadlines turn into a failure.
func spliceEpollServer(req ClientRequest) error {
	var p EpollServerParams
	if err := json.Unmarshal(req.Params, &p); err != nil {
		return fmt.Errorf("splice-epoll-server: params %q: %w", req.Params, err)
	}
	ap := p.Listen
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	if ap.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.Bind(lfd, sa); err != nil {
		return err
	}
	if err := unix.Listen(lfd, 1024); err != nil {
		return err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(lfd)}); err != nil {
		return err
	}
	fmt.Println("ready")
	enc := json.NewEncoder(os.Stdout)
	conns := map[int]*spEpConn{}
	closeConn := func(c *spEpConn) {
		unix.Close(c.fd)
		delete(conns, c.fd)
		_ = enc.Encode(c)
	}
	evs := make([]unix.EpollEvent, 128)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range evs[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
					if errors.Is(err, unix.EAGAIN) {
						break
					}
					if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
						continue
					}
					if err != nil {
						return err
					}
					c := &spEpConn{fd: cfd, out: []byte("hello\n")}
					conns[cfd] = c
					if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{
						Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(cfd)}); err != nil {
						return err
					}
					if !c.flush() {
						closeConn(c)
					}
				}
				continue
			}
			c := conns[fd]
			if c == nil {
				continue
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.readAll(buf) {
				closeConn(c)
				continue
			}
			c.process()
			if !c.flush() || (c.eof && len(c.out) == 0) {
				closeConn(c)
			}
		}
	}
}

// readAll reads until EAGAIN, as edge-triggered readiness requires; false on an error.
func (c *spEpConn) readAll(buf []byte) bool {
	for !c.eof {
		n, err := unix.Read(c.fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return true
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false
		case n == 0:
			c.eof = true
		default:
			c.Reads++
			c.in = append(c.in, buf[:n]...)
		}
	}
	return true
}

// process turns every complete request into its response.
func (c *spEpConn) process() {
	for len(c.in) >= 16 {
		if binary.BigEndian.Uint32(c.in) != spEpMagic {
			c.eof, c.in = true, nil // garbage: stop reading, close once flushed
			return
		}
		c.out = append(c.out, spEpResponse(c.in[:16])...)
		c.in = c.in[16:]
		c.Served++
	}
	c.MaxOutQ = max(c.MaxOutQ, len(c.out))
}

// flush writes until done or EAGAIN (then EPOLLOUT's edge resumes it); false on error.
func (c *spEpConn) flush() bool {
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		switch {
		case errors.Is(err, unix.EAGAIN):
			c.WAgain++
			return true
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false
		}
		c.out = c.out[n:]
	}
	c.out = nil
	return true
}

// spClientEpoll runs conns connections concurrently, each doing rounds rounds of 1–3
// pipelined requests (sent in one write) of assorted response sizes, and checks every
// response byte.
func spClientEpoll(to netip.AddrPort, conns, rounds int) (SpliceCountResult, error) {
	res := SpliceCountResult{}
	start := time.Now()
	sizes := []uint32{16, 100, 1500, 16 << 10, 64<<10 + 7, 33, 200 << 10}
	var mu sync.Mutex
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(res.Errors) < 10 {
			res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
		}
	}
	var wg sync.WaitGroup
	for ci := 0; ci < conns; ci++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := net.DialTimeout("tcp", to.String(), 5*time.Second)
			if err != nil {
				fail("conn %d: %v", ci, err)
				return
			}
			c := nc.(*net.TCPConn)
			defer c.Close()
			mu.Lock()
			res.Conns++
			mu.Unlock()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			hello := make([]byte, 6)
			if _, err := io.ReadFull(c, hello); err != nil || string(hello) != "hello\n" {
				fail("conn %d: greeting %q: %v", ci, hello, err)
				return
			}
			for r := 0; r < rounds; r++ {
				p := 1 + r%3
				var batch, want []byte
				for k := 0; k < p; k++ {
					q := spEpRequest(uint32(ci), uint32(r*3+k), sizes[(r+k+ci)%len(sizes)])
					batch = append(batch, q...)
					want = append(want, spEpResponse(q)...)
				}
				mu.Lock()
				res.Expected += p
				mu.Unlock()
				// Every round must finish within 5s: a missed edge stalls it for good.
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(batch); err != nil {
					fail("conn %d round %d: write: %v", ci, r, err)
					return
				}
				got := make([]byte, len(want))
				if n, err := io.ReadFull(c, got); err != nil {
					fail("conn %d round %d: read %d of %d bytes: %v", ci, r, n, len(want), err)
					return
				}
				if !bytes.Equal(got, want) {
					fail("conn %d round %d: wrong response bytes", ci, r)
					return
				}
				mu.Lock()
				res.OK += p
				res.Bytes += int64(len(want))
				mu.Unlock()
			}
			// The server closes once it has seen our EOF and flushed everything.
			_ = c.CloseWrite()
			if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				fail("conn %d: after our half-close: %d bytes, %v (want EOF)", ci, n, err)
			}
		}()
	}
	wg.Wait()
	res.MaxOpen = res.Conns
	res.Elapsed = time.Since(start)
	return res, nil
}
