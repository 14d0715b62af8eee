package xds

import (
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Limits bound what the xDS clients can make the server hold. Every stream encodes its
// own copy of each response, and grpc-go queues a whole response while the stream has
// any write quota left, so a client that stops reading keeps about one response of
// each type it asked for queued in the agent, per stream, for as long as it stays
// connected. Zero fields take DefaultLimits'.
type Limits struct {
	// MaxStreams caps the xDS streams open at once, state-of-the-world and delta
	// together. Streams over it are refused with ResourceExhausted.
	MaxStreams int
	// SendTimeout is how long a response may stay unread: from the start of its send
	// (so a send blocked by flow control counts) until the client's next request names
	// its nonce. xDS clients acknowledge every response, ACK or NACK, and a stream
	// delivers in order, so naming one proves every earlier one read. Then the client's
	// connection is closed, with every stream on it: gRPC has no other way to drop what
	// a stream queued, or to unblock a send held by flow control.
	SendTimeout time.Duration
}

// DefaultLimits suit one node. Its clients are the node's Envoy, with one ADS stream,
// and proxyless gRPC processes, with one stream per xds:/// target they dial (grpc-go
// keeps an xDS client per target) and one more if they serve over xDS; a node full
// of pods (the kubelet's default is 110) with a couple of targets each fits in 256.
// The cap is also what bounds memory: a stream that stops reading holds about one
// response of each type it asked for (BenchmarkStalledStreams measures it) until
// SendTimeout. A healthy client stops reading only while it applies an update; 30s
// leaves a wide margin for that, and a client closed by mistake reconnects and is
// sent the current state.
var DefaultLimits = Limits{MaxStreams: 256, SendTimeout: 30 * time.Second}

func (l Limits) withDefaults() Limits {
	if l.MaxStreams <= 0 {
		l.MaxStreams = DefaultLimits.MaxStreams
	}
	if l.SendTimeout <= 0 {
		l.SendTimeout = DefaultLimits.SendTimeout
	}
	return l
}

// streamGuard enforces Limits on every stream of the gRPC server. It runs as a stream
// interceptor, before go-control-plane sees the stream, so a refused stream gets no
// request reader, watches or stream callbacks.
type streamGuard struct {
	limits Limits
	stats  Stats
	log    *slog.Logger
	open   atomic.Int64
}

func (g *streamGuard) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if n := g.open.Add(1); n > int64(g.limits.MaxStreams) {
		g.open.Add(-1)
		call0(g.stats.StreamsRefused)
		g.log.Warn("xDS stream refused: too many streams open", "limit", g.limits.MaxStreams, "peer", peerAddr(ss))
		return status.Errorf(codes.ResourceExhausted, "sockmesh xDS server: %d streams open, the limit (MaxStreams)", g.limits.MaxStreams)
	}
	defer g.open.Add(-1)
	if p, ok := peer.FromContext(ss.Context()); ok {
		if a, ok := p.Addr.(*connAddr); ok {
			rs := &readTimedStream{ServerStream: ss, guard: g, conn: a.conn}
			defer rs.stop()
			ss = rs
		}
	}
	return handler(srv, ss)
}

func peerAddr(ss grpc.ServerStream) string {
	if p, ok := peer.FromContext(ss.Context()); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// readTimedStream closes its connection when a response it sent stays unread past
// SendTimeout.
type readTimedStream struct {
	grpc.ServerStream
	guard *streamGuard
	conn  *trackedConn

	mu      sync.Mutex
	unread  []sentAt // oldest first
	timer   *time.Timer
	stopped bool
}

type sentAt struct {
	nonce string
	at    time.Time
}

func (s *readTimedStream) SendMsg(m any) error {
	if r, ok := m.(interface{ GetNonce() string }); ok && r.GetNonce() != "" {
		s.sending(r.GetNonce()) // before the send: a send that blocks is unread too
	}
	return s.ServerStream.SendMsg(m)
}

func (s *readTimedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if r, ok := m.(interface{ GetResponseNonce() string }); ok && err == nil && r.GetResponseNonce() != "" {
		s.read(r.GetResponseNonce())
	}
	return err
}

func (s *readTimedStream) sending(nonce string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unread = append(s.unread, sentAt{nonce, time.Now()})
	if len(s.unread) == 1 {
		s.arm()
	}
}

// read drops the response with nonce and every one sent before it.
func (s *readTimedStream) read(nonce string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.unread {
		if r.nonce == nonce {
			s.unread = slices.Delete(s.unread, 0, i+1)
			s.arm()
			return
		}
	}
}

// arm sets the timer for the oldest unread response, or stops it. Called locked.
func (s *readTimedStream) arm() {
	if len(s.unread) == 0 || s.stopped {
		if s.timer != nil {
			s.timer.Stop()
		}
		return
	}
	wait := time.Until(s.unread[0].at.Add(s.guard.limits.SendTimeout))
	if s.timer == nil {
		s.timer = time.AfterFunc(wait, s.expire)
		return
	}
	s.timer.Reset(wait)
}

func (s *readTimedStream) expire() {
	s.mu.Lock()
	overdue := !s.stopped && len(s.unread) > 0 && time.Since(s.unread[0].at) >= s.guard.limits.SendTimeout
	if !overdue {
		s.arm() // read meanwhile
	}
	s.stopped = s.stopped || overdue
	s.mu.Unlock()
	if overdue {
		call0(s.guard.stats.SlowStreamsClosed)
		s.guard.log.Warn("closed an xDS client's connection: it left a response unread too long",
			"timeout", s.guard.limits.SendTimeout, "peer", s.conn.addr.String())
		s.conn.Close()
	}
}

// stop ends the stream's timer when its handler returns.
func (s *readTimedStream) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
	}
}

// connTrackingListener gives each accepted connection an address of its own, through
// which a stream finds its connection (gRPC hands a stream its peer's address, never
// the connection). Unix clients would otherwise all be "@".
type connTrackingListener struct {
	net.Listener
	accepted atomic.Uint64
}

func (l *connTrackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c}
	tc.addr = &connAddr{network: l.Addr().Network(), id: l.accepted.Add(1), conn: tc}
	if ra := c.RemoteAddr(); ra != nil {
		tc.addr.remote = ra.String()
	}
	return tc, nil
}

// trackedConn is an accepted connection that reports its connAddr.
type trackedConn struct {
	net.Conn
	addr *connAddr
}

func (c *trackedConn) RemoteAddr() net.Addr { return c.addr }

// connAddr is a connection's peer address, unique to the connection.
type connAddr struct {
	network, remote string
	id              uint64
	conn            *trackedConn
}

func (a *connAddr) Network() string { return a.network }
func (a *connAddr) String() string  { return fmt.Sprintf("%s#%d", a.remote, a.id) }

func call0(f func()) {
	if f != nil {
		f()
	}
}
