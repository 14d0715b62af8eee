package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6).
const soOriginalDst = 80

// OriginalDst asks the kernel where an accepted connection was originally going, the
// way Envoy's original_dst listener filter does.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	var out netip.AddrPort
	var serr error
	cerr := raw.Control(func(fd uintptr) {
		if local.Addr().Is4() {
			var sa unix.RawSockaddrInet4
			l := uint32(unsafe.Sizeof(sa))
			if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
				serr = e
				return
			}
			port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
			out = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			return
		}
		var sa unix.RawSockaddrInet6
		l := uint32(unsafe.Sizeof(sa))
		if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IPV6, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
			serr = e
			return
		}
		port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
		out = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	})
	return out, errors.Join(cerr, serr)
}

// RelayEvent is one connection as the relay saw it, printed as a JSON line.
type RelayEvent struct {
	From     string
	OrigDst  string // empty when SO_ORIGINAL_DST failed
	Errno    string // the getsockopt error, if any
	Upstream string // getpeername() of the upstream socket
}

// jsonLines returns a function that prints values as JSON lines on stdout, safe for
// concurrent use: how long-lived children report events.
func jsonLines[T any]() func(T) {
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	return func(v T) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(v)
	}
}

// serveEach listens on every address (IPv6 ones IPv6-only), prints "ready", and hands
// each accepted connection to serve on its own goroutine until a listener fails.
func serveEach(lc *net.ListenConfig, listen []netip.AddrPort, serve func(*net.TCPConn)) error {
	var lns []net.Listener
	for _, ap := range listen {
		network := "tcp4"
		if ap.Addr().Is6() {
			network = "tcp6"
		}
		ln, err := lc.Listen(context.Background(), network, ap.String())
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	fmt.Println("ready")
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				go serve(c.(*net.TCPConn))
			}
		}()
	}
	return <-errc
}

// relay plays Envoy's data-path role: accept on the listen addresses, read the original
// destination, connect there with the Envoy mark, and copy both ways with half-close.
func relay(listen []netip.AddrPort, mark int) error {
	emit := jsonLines[RelayEvent]()
	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) })
		return errors.Join(err, serr)
	}}
	return serveEach(&net.ListenConfig{}, listen, func(c *net.TCPConn) { relayConn(c, &dialer, emit) })
}

func relayConn(down *net.TCPConn, dialer *net.Dialer, emit func(RelayEvent)) {
	defer down.Close()
	ev := RelayEvent{From: down.RemoteAddr().String()}
	dst, err := OriginalDst(down)
	if err != nil {
		ev.Errno = ErrnoName(err)
		emit(ev)
		return
	}
	ev.OrigDst = dst.String()
	up, err := dialer.Dial("tcp", dst.String())
	if err != nil {
		ev.Errno = "upstream: " + err.Error()
		emit(ev)
		return
	}
	defer up.Close()
	ev.Upstream = up.RemoteAddr().String()
	emit(ev)
	var wg sync.WaitGroup
	wg.Add(2)
	// Copy through a buffer with read(2)/write(2), as Envoy does. io.Copy between two
	// TCPConns would use splice(2), which reads the socket's TCP queue directly and
	// never sees bytes that sk_msg put in the receive queue of a spliced socket.
	pipe := func(dst, src *net.TCPConn) {
		defer wg.Done()
		_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 64<<10))
		_ = dst.CloseWrite()
	}
	go pipe(up.(*net.TCPConn), down)
	go pipe(down, up.(*net.TCPConn))
	wg.Wait()
}

// errnoName names an errno the way tests compare them.
func ErrnoName(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}
