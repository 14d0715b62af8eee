package harness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// FionreadParams: the server sends ServerSends bytes in one write and the client
// measures them (MSG_PEEK, SIOCINQ before and after reading half); then the client sends
// ClientSends and the server measures those the same way and sends its findings back.
// The client prints map[string]SpliceSide with "client" and "server".
type FionreadParams struct{ ServerSends, ClientSends int }

func (FionreadParams) Op() string { return "splice-fionread" }

func init() {
	spClientOp(spClientFionread)
	spServe("fionread", func(c *net.TCPConn, _ string, p FionreadParams) *SpliceSide {
		if _, err := c.Write(spPattern(1, p.ServerSends)); err != nil {
			return nil
		}
		s := spMeasureInq(c, p.ClientSends, 2)
		raw, _ := json.Marshal(s)
		_, _ = c.Write(append(raw, '\n'))
		return &s
	})
}

func spClientFionread(req ClientRequest, p FionreadParams) (map[string]SpliceSide, error) {
	c, _, err := spDial(req.To, nil, "fionread", "-", p)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	mine := spMeasureInq(c, p.ServerSends, 1)
	if _, err := c.Write(spPattern(2, p.ClientSends)); err != nil {
		return nil, err
	}
	line, err := spReadLine(c)
	if err != nil {
		return nil, fmt.Errorf("server's findings: %w", err)
	}
	var theirs SpliceSide
	if err := json.Unmarshal([]byte(line), &theirs); err != nil {
		return nil, err
	}
	return map[string]SpliceSide{"client": mine, "server": theirs}, nil
}

// spMeasureInq receives n bytes the peer sends in one write: it waits until they are
// readable, lets them all arrive, checks that MSG_PEEK sees them, and then asks
// SIOCINQ, before and after reading half.
func spMeasureInq(c *net.TCPConn, n, seed int) SpliceSide {
	var s SpliceSide
	if err := spWaitReadable(c, 10*time.Second); err != nil {
		s.Err = "poll: " + spErrName(err)
		return s
	}
	time.Sleep(200 * time.Millisecond) // the receiver sleeps while everything is queued
	s.Peek = spPeek(c, n, 5*time.Second)
	s.INQ = spIoctl(c, unix.SIOCINQ)
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf[:n/2]); err != nil {
		s.Err = "read: " + spErrName(err)
		return s
	}
	s.INQHalf = spIoctl(c, unix.SIOCINQ)
	if _, err := io.ReadFull(c, buf[n/2:]); err != nil {
		s.Err = "read: " + spErrName(err)
		return s
	}
	s.Got = int64(n)
	s.PatternOK = bytes.Equal(buf, spPattern(seed, n))
	return s
}

// spWaitReadable waits with poll(2) until the socket has something to read.
func spWaitReadable(c *net.TCPConn, timeout time.Duration) error {
	return spRawFD(c, func(fd int) error {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(pfd, int(timeout.Milliseconds()))
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return os.ErrDeadlineExceeded
			}
			return nil
		}
	})
}

// spPeek waits until n bytes are queued as MSG_PEEK sees them (which reads without
// consuming), and returns how many it saw last.
func spPeek(c *net.TCPConn, n int, timeout time.Duration) int {
	buf := make([]byte, n)
	seen := 0
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_ = spRawFD(c, func(fd int) error {
			m, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err == nil {
				seen = m
			}
			return nil
		})
		if seen >= n {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return seen
}
