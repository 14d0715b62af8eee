package harness

import (
	"net"
	"strconv"
	"time"
)

// StreamParams: on each of Reps connections (one at least), one after the other, the
// client sends ClientSends bytes of stream Seed while the server sends ServerSends
// bytes of stream Seed+1, each reading the other's to EOF at the same time; the
// connection after uses Seed+2 and Seed+3, and so on. The client prints one SpliceSide
// per connection; the server reports each as "stream-SEED".
type StreamParams struct {
	ClientSends, ServerSends int64
	Seed                     uint64
	Reps                     int
}

func (StreamParams) Op() string { return "splice-stream" }

// StreamID is the server's report ID for connection rep of p.
func (p StreamParams) StreamID(rep int) string {
	return "stream-" + strconv.FormatUint(p.Seed+2*uint64(rep), 10)
}

func init() {
	spClientOp(spClientStream)
	spServe("stream", func(c *net.TCPConn, _ string, p StreamParams) *SpliceSide {
		var s SpliceSide
		done := make(chan struct{})
		go func() {
			defer close(done)
			var err error
			s.Sent, s.SentSHA, err = spSend(c, p.ServerSends, p.Seed+1)
			s.Err = spErrName(err)
			_ = c.CloseWrite()
		}()
		var err error
		s.Got, s.RecvSHA, err = spRecvHash(c)
		s.End = spErrName(err)
		<-done
		return &s
	})
}

func spClientStream(req ClientRequest, p StreamParams) ([]SpliceSide, error) {
	var out []SpliceSide
	for rep := 0; rep < max(p.Reps, 1); rep++ {
		one := p
		one.Seed, one.Reps = p.Seed+2*uint64(rep), 1
		c, _, err := spDial(req.To, nil, "stream", p.StreamID(rep), one)
		if err != nil {
			return nil, err
		}
		var s SpliceSide
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			var err error
			s.Sent, s.SentSHA, err = spSend(c, one.ClientSends, one.Seed)
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
