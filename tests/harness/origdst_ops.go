package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Child operations for the original-destination tests: a client that dials from a
// fixed source address and port (so two namespaces can make the very same 4-tuple), and
// a proxy that accepts one connection but asks SO_ORIGINAL_DST only once told to, as a
// busy Envoy may, so that both twins' connections exist when the answers are read.

func init() {
	extraOps["dial-from"] = dialFrom
	extraOps["origdst-late"] = origDstLate
}

// OrigDstAnswer is what origdst-late printed for its one connection.
type OrigDstAnswer struct {
	From    string
	OrigDst string
	Errno   string
}

// DialFrom runs a client in h that connects from src to to and holds the connection
// until the test ends.
func (e *Env) DialFrom(t testing.TB, netNS string, src, to netip.AddrPort) *Proc {
	return e.startProc(t, ClientRequest{Op: "dial-from", NetNS: netNS, To: to, Args: []string{src.String()}})
}

// OrigDstLate runs origdst-late in a namespace: it listens on listen, accepts one
// connection, and answers its SO_ORIGINAL_DST once the file release exists.
func (e *Env) OrigDstLate(t testing.TB, netNS string, listen netip.AddrPort, release string) *Proc {
	return e.startProc(t, ClientRequest{Op: "origdst-late", NetNS: netNS, Targets: []netip.AddrPort{listen}, Args: []string{release}})
}

func dialFrom(req ClientRequest) error {
	src, err := netip.ParseAddrPort(req.Args[0])
	if err != nil {
		return err
	}
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(src), Timeout: 5 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return errors.Join(err, serr)
		}}
	c, err := d.Dial("tcp", req.To.String())
	if err != nil {
		return fmt.Errorf("dial %s from %s: %w", req.To, src, err)
	}
	defer c.Close()
	fmt.Println("ready")
	select {} // hold the tuple until killed
}

func origDstLate(req ClientRequest) error {
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", req.Targets[0].String())
	if err != nil {
		return err
	}
	fmt.Println("ready")
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(req.Args[0]); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("never released")
		}
	}
	ans := OrigDstAnswer{From: c.RemoteAddr().String()}
	if dst, err := OriginalDst(c.(*net.TCPConn)); err != nil {
		ans.Errno = ErrnoName(err)
	} else {
		ans.OrigDst = dst.String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(ans); err != nil {
		return err
	}
	select {} // keep the accepted socket until killed
}
