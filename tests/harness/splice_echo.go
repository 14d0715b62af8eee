package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"strconv"
	"time"
)

// EchoParams are the "echo" command's: the server echoes everything until EOF with
// read/write (never splice(2)), then closes; with Report it hashes what it echoed and
// reports that. EchoStreamParams is its streaming client; the many-connection scenario
// (splice_many.go) is another.
type EchoParams struct{ Report bool }

// EchoStreamParams: on each of Reps connections (one at least), one after the other,
// the client sends Size bytes of stream Seed (Seed+1 for the next connection, ...)
// while it reads the echo back to EOF. The client prints one SpliceSide per connection;
// the server reports each as "echo-SEED".
type EchoStreamParams struct {
	Size int64
	Seed uint64
	Reps int
}

func (EchoStreamParams) Op() string { return "splice-echo-stream" }

// EchoID is the server's report ID for connection rep of p.
func (p EchoStreamParams) EchoID(rep int) string {
	return "echo-" + strconv.FormatUint(p.Seed+uint64(rep), 10)
}

func init() {
	spClientOp(spClientEchoStream)
	spServe("echo", func(c *net.TCPConn, _ string, p EchoParams) *SpliceSide {
		var s SpliceSide
		h := sha256.New()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				h.Write(buf[:n])
				s.Got += int64(n)
				m, werr := c.Write(buf[:n])
				s.Sent += int64(m)
				if werr != nil {
					s.Err = "write: " + spErrName(werr)
					break
				}
			}
			if err != nil {
				s.End = spErrName(err)
				break
			}
		}
		if !p.Report {
			return nil
		}
		s.RecvSHA = hex.EncodeToString(h.Sum(nil))
		if s.Err == "" {
			s.SentSHA = s.RecvSHA // every byte read was written back, in order
		}
		return &s
	})
}

func spClientEchoStream(req ClientRequest, p EchoStreamParams) ([]SpliceSide, error) {
	var out []SpliceSide
	for rep := 0; rep < max(p.Reps, 1); rep++ {
		c, _, err := spDial(req.To, nil, "echo", p.EchoID(rep), EchoParams{Report: true})
		if err != nil {
			return nil, err
		}
		var s SpliceSide
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			var err error
			s.Sent, s.SentSHA, err = spSend(c, p.Size, p.Seed+uint64(rep))
			s.Err = spErrName(err)
			_ = c.CloseWrite()
		}()
		got, sum, rerr := spRecvHash(c)
		<-done
		c.Close()
		s.Got, s.RecvSHA, s.End = got, sum, spErrName(rerr)
		s.Elapsed = time.Since(start)
		out = append(out, s)
	}
	return out, nil
}
