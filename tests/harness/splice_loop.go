package harness

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LoopParams is the loopback identity check. Each of Iterations connections goes from
// the fixed source Local to the server's "ask" command, checks that the greeting and
// Asks answers carry this host's name (the request's Name), and aborts (no TIME_WAIT,
// so the same 4-tuple is free at once). The first connection waits at the barrier
// directory until every one of Peers holds its connection too, so the same tuple is
// live in every namespace at once. The server closes a finished connection CloseDelay
// late. The client prints a SpliceCountResult.
type LoopParams struct {
	Local            netip.AddrPort
	Iterations, Asks int
	Barrier          string
	Peers            []string
	CloseDelay       time.Duration
}

func (LoopParams) Op() string { return "splice-loop" }

func init() {
	spClientOp(spClientLoop)
	// "ask" answers every line with the server's name, then closes CloseDelay after the end.
	spServe("ask", func(c *net.TCPConn, name string, p LoopParams) *SpliceSide {
		for {
			if _, err := spReadLine(c); err != nil {
				break
			}
			if _, err := c.Write([]byte(name + "\n")); err != nil {
				break
			}
		}
		// A server closes its socket when it gets round to it, not the instant the
		// peer went away: meanwhile the client may already reuse the 4-tuple.
		time.Sleep(p.CloseDelay)
		return nil
	})
}

func spClientLoop(req ClientRequest, p LoopParams) (SpliceCountResult, error) {
	var res SpliceCountResult
	res.Expected = p.Iterations * (p.Asks + 1)
	start := time.Now()
	fail := func(format string, a ...any) {
		if len(res.Errors) < 10 {
			res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
		}
	}
	d := &net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(p.Local),
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return errors.Join(err, serr)
		},
	}
	for it := 0; it < p.Iterations; it++ {
		c, hello, err := spDial(req.To, d, "ask", "-", p)
		if err != nil {
			fail("iteration %d: %v", it, err)
			continue
		}
		res.Conns++
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if la := c.LocalAddr().(*net.TCPAddr).AddrPort(); la != p.Local {
			fail("iteration %d: bound to %s, want %s", it, la, p.Local)
		}
		if hello == "hello "+req.Name {
			res.OK++
		} else {
			fail("iteration %d: greeting %q, want from %s", it, hello, req.Name)
		}
		if it == 0 && p.Barrier != "" {
			if err := spBarrier(p.Barrier, req.Name, p.Peers); err != nil {
				fail("barrier: %v", err)
			}
		}
		for k := 0; k < p.Asks; k++ {
			if _, err := c.Write([]byte("?\n")); err != nil {
				fail("iteration %d ask %d: %v", it, k, err)
				break
			}
			ans, err := spReadLine(c)
			if err != nil {
				fail("iteration %d ask %d: %v", it, k, err)
				break
			}
			if ans != req.Name {
				fail("iteration %d ask %d: answer from %q, want %q", it, k, ans, req.Name)
				continue
			}
			res.OK++
		}
		spAbort(c)
	}
	res.MaxOpen = 1
	res.Elapsed = time.Since(start)
	return res, nil
}

// spBarrier marks this client as connected and waits until every peer is.
func spBarrier(dir, me string, peers []string) error {
	if err := os.WriteFile(filepath.Join(dir, me+".connected"), nil, 0o644); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range peers {
		for {
			if _, err := os.Stat(filepath.Join(dir, p+".connected")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("peer %s never connected", p)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return nil
}
