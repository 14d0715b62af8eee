package harness

import (
	"bytes"
	"net"
	"time"
)

// HalfCloseParams run two connections. "hc-client": the client sends ClientSends bytes
// and half-closes; the server reads them to EOF, sends ServerReplies back and closes.
// "hc-server": the server sends ServerSends bytes and half-closes; the client reads
// them to EOF, sends ClientReplies back and closes. The client prints map[string]
// SpliceSide with "hc-client" and "hc-server"; the server reports "hc-client-ADDR" and
// "hc-server-ADDR", ADDR being the address the client dialled.
type HalfCloseParams struct {
	ClientSends, ServerReplies int64
	ServerSends, ClientReplies int64
}

func (HalfCloseParams) Op() string { return "splice-halfclose" }

func init() {
	spClientOp(spClientHalfClose)
	spServe("hc-client", func(c *net.TCPConn, _ string, p HalfCloseParams) *SpliceSide {
		s := spReadPattern(c, 3, p.ClientSends)
		if _, err := c.Write(spPattern(4, int(p.ServerReplies))); err != nil {
			s.Err = "write after the peer's half-close: " + spErrName(err)
		}
		s.Sent = p.ServerReplies
		return &s
	})
	spServe("hc-server", func(c *net.TCPConn, _ string, p HalfCloseParams) *SpliceSide {
		var werr string
		if _, err := c.Write(spPattern(5, int(p.ServerSends))); err != nil {
			werr = spErrName(err)
		}
		if err := c.CloseWrite(); err != nil {
			werr = "shutdown: " + spErrName(err)
		}
		s := spReadPattern(c, 6, p.ClientReplies)
		s.Sent, s.Err = p.ServerSends, werr
		return &s
	})
}

func spClientHalfClose(req ClientRequest, p HalfCloseParams) (map[string]SpliceSide, error) {
	out := map[string]SpliceSide{}
	c, _, err := spDial(req.To, nil, "hc-client", "hc-client-"+req.To.Addr().String(), p)
	if err != nil {
		return nil, err
	}
	var werr string
	if _, err := c.Write(spPattern(3, int(p.ClientSends))); err != nil {
		werr = spErrName(err)
	}
	if err := c.CloseWrite(); err != nil {
		werr = "shutdown: " + spErrName(err)
	}
	r := spReadPattern(c, 4, p.ServerReplies)
	r.Sent, r.Err = p.ClientSends, werr
	out["hc-client"] = r
	c.Close()

	c, _, err = spDial(req.To, nil, "hc-server", "hc-server-"+req.To.Addr().String(), p)
	if err != nil {
		return nil, err
	}
	r = spReadPattern(c, 5, p.ServerSends)
	if _, err := c.Write(spPattern(6, int(p.ClientReplies))); err != nil {
		r.Err = "write after the peer's half-close: " + spErrName(err)
	}
	r.Sent = p.ClientReplies
	c.Close() // a full close: the server must see it as EOF after the data
	out["hc-server"] = r
	return out, nil
}

// spReadPattern reads until the end of the stream (or max+1 bytes, or an error) and
// checks the bytes against pattern seed.
func spReadPattern(c net.Conn, seed int, max int64) SpliceSide {
	var s SpliceSide
	s.PatternOK = true
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	for {
		n, err := c.Read(buf)
		if n > 0 {
			spFill(seed, s.Got, want[:n])
			if !bytes.Equal(buf[:n], want[:n]) {
				s.PatternOK = false
			}
			s.Got += int64(n)
		}
		if err != nil {
			s.End = spErrName(err)
			s.At = time.Now().UnixNano()
			return s
		}
		if s.Got > max {
			s.End = "too much data"
			return s
		}
	}
}
