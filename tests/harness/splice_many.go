package harness

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// ManyParams: the client opens Conns connections to the server's "echo" command
// (splice_echo.go) and, once all are open, exchanges Messages messages on each at once.
// It prints a SpliceCountResult.
type ManyParams struct{ Conns, Messages int }

func (ManyParams) Op() string { return "splice-many" }

func init() { spClientOp(spClientMany) }

// spClientMany opens the connections (at most 100 handshakes at a time), and only once
// all are open, exchanges the messages on each at once; they close after every exchange
// is over, so all of them are open together throughout.
func spClientMany(req ClientRequest, p ManyParams) (SpliceCountResult, error) {
	n, msgs := p.Conns, p.Messages
	res := SpliceCountResult{Expected: n * msgs}
	start := time.Now()
	var mu sync.Mutex
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(res.Errors) < 10 {
			res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
		}
	}
	conns := make([]*net.TCPConn, n)
	sem := make(chan struct{}, 100)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := spDial(req.To, nil, "echo", "-", EchoParams{})
			if err != nil {
				fail("conn %d: %v", i, err)
				return
			}
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			conns[i] = c
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			res.Conns++
		}
	}
	res.MaxOpen = res.Conns
	var ok sync.WaitGroup
	var okCount int64
	for i, c := range conns {
		if c == nil {
			continue
		}
		ok.Add(1)
		go func() {
			defer ok.Done()
			for j := 0; j < msgs; j++ {
				msg := []byte(fmt.Sprintf("conn %04d message %d %s\n", i, j, strings.Repeat("x", (i*7+j*13)%200)))
				if _, err := c.Write(msg); err != nil {
					fail("conn %d message %d: write: %v", i, j, err)
					return
				}
				back := make([]byte, len(msg))
				if _, err := io.ReadFull(c, back); err != nil {
					fail("conn %d message %d: read: %v", i, j, err)
					return
				}
				if !bytes.Equal(back, msg) {
					fail("conn %d message %d: got %q, want %q", i, j, back, msg)
					return
				}
				mu.Lock()
				okCount++
				res.Bytes += int64(len(msg))
				mu.Unlock()
			}
		}()
	}
	ok.Wait()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	res.OK = int(okCount)
	res.Elapsed = time.Since(start)
	return res, nil
}
