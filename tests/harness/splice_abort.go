package harness

import (
	"io"
	"net"
	"time"
)

// AbortParams run four abort scenarios, one connection each (the server reports them
// as "A" to "D"); an abort is a close with SO_LINGER 0:
//   - A: the server reads ServerReads bytes, then aborts while the client sends (the
//     client's writes must fail);
//   - B: the server aborts after ServerIdle while the client waits in read;
//   - C: the client reads ClientReads bytes, then aborts while the server sends;
//   - D: the client aborts while the server waits in read.
//
// The client prints map[string]SpliceSide keyed "A" to "D".
type AbortParams struct {
	ServerReads int64
	ServerIdle  time.Duration
	ClientReads int64
}

func (AbortParams) Op() string { return "splice-abort" }

func init() {
	spClientOp(spClientAbort)
	spServe("abort-after", func(c *net.TCPConn, _ string, p AbortParams) *SpliceSide {
		var s SpliceSide
		if _, err := io.ReadFull(c, make([]byte, p.ServerReads)); err != nil {
			s.Err = spErrName(err)
		}
		s.At = spAbort(c)
		return &s
	})
	spServe("abort-idle", func(c *net.TCPConn, _ string, p AbortParams) *SpliceSide {
		time.Sleep(p.ServerIdle)
		return &SpliceSide{At: spAbort(c)}
	})
	spServe("send-until-error", func(c *net.TCPConn, _ string, _ AbortParams) *SpliceSide {
		// Paced chunks until the client's abort stops us.
		var s SpliceSide
		start := time.Now()
		chunk := spPattern(7, 16<<10)
		for time.Since(start) < 10*time.Second {
			n, err := c.Write(chunk)
			s.Sent += int64(n)
			if err != nil {
				s.Err = spErrName(err)
				s.At = time.Now().UnixNano()
				break
			}
			time.Sleep(time.Millisecond)
		}
		return &s
	})
	spServe("recv-until-error", func(c *net.TCPConn, _ string, _ AbortParams) *SpliceSide {
		var s SpliceSide
		s.Got, s.End = spDrainUntilError(c)
		s.At = time.Now().UnixNano()
		s.LaterWrite = spLaterWrite(c)
		return &s
	})
}

func spClientAbort(req ClientRequest, p AbortParams) (map[string]SpliceSide, error) {
	out := map[string]SpliceSide{}

	c, _, err := spDial(req.To, nil, "abort-after", "A", p)
	if err != nil {
		return nil, err
	}
	var s SpliceSide
	chunk := spPattern(8, 16<<10)
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for {
		// Paced, so that without backpressure the queue still stays small.
		n, err := c.Write(chunk)
		s.Sent += int64(n)
		if err != nil {
			s.Err = spErrName(err)
			s.At = time.Now().UnixNano()
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.Close()
	out["A"] = s

	c, _, err = spDial(req.To, nil, "abort-idle", "B", p)
	if err != nil {
		return nil, err
	}
	s = SpliceSide{}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	s.Got, s.End = spDrainUntilError(c)
	s.At = time.Now().UnixNano()
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	s.LaterWrite = spLaterWrite(c)
	c.Close()
	out["B"] = s

	c, _, err = spDial(req.To, nil, "send-until-error", "C", p)
	if err != nil {
		return nil, err
	}
	s = SpliceSide{}
	if _, err := io.ReadFull(c, make([]byte, p.ClientReads)); err != nil {
		s.Err = spErrName(err)
	}
	s.Got = p.ClientReads
	s.At = spAbort(c)
	out["C"] = s

	c, _, err = spDial(req.To, nil, "recv-until-error", "D", p)
	if err != nil {
		return nil, err
	}
	s = SpliceSide{}
	if _, err := c.Write(spPattern(9, 10<<10)); err != nil {
		s.Err = spErrName(err)
	}
	time.Sleep(200 * time.Millisecond) // the server is waiting in read by now
	s.At = spAbort(c)
	out["D"] = s
	return out, nil
}

// spLaterWrite tries a few writes after the connection was reset and returns the first
// error: a reset connection must refuse them.
func spLaterWrite(c net.Conn) string {
	for i := 0; i < 5; i++ {
		if _, err := c.Write([]byte("after the end\n")); err != nil {
			return spErrName(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ""
}

// spDrainUntilError reads and discards until an error and says how reading ended.
func spDrainUntilError(c net.Conn) (int64, string) {
	buf := make([]byte, 64<<10)
	var got int64
	for {
		n, err := c.Read(buf)
		got += int64(n)
		if err != nil {
			return got, spErrName(err)
		}
	}
}
