package harness

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Child operations for the splice end-to-end tests (tests/splice_test.go and the tests
// that reuse these scenarios), one file per scenario, splice_NAME.go, holding both its
// client op and the server's side of it.
//
// splice-server is one server with a small protocol, so that every scenario runs
// against the same kind of process: on accept it greets ("hello NAME\n") and then reads
// one command line (a JSON spCommand: the command, an ID, its typed parameters) and
// plays that scenario. The server speaking first matters: a client that has read the
// greeting knows both ends are established and paired, so its own first send cannot
// race the pairing and fall back to TCP (that fallback is correct, but these tests are
// about the spliced path). Server-side findings are printed as one JSON line
// (SpliceServerReport) per scenario.
//
// Every operation's parameters are a struct implementing SpliceOp, sent to the child as
// JSON in ClientRequest.Params (SpliceRequest builds the request).
//
// Data never goes through io.Copy between two TCP connections: Go would use splice(2),
// which reads the TCP queue and never sees bytes that sk_msg put in the receive queue.

// SpliceOp is the typed parameters of one splice child operation; Op names it.
type SpliceOp interface{ Op() string }

// SpliceRequest is the request that runs p in h's namespace: a scenario's client end
// (against to), or a server (to unused).
func SpliceRequest(h *netlab.Host, to netip.AddrPort, p SpliceOp) ClientRequest {
	raw, err := json.Marshal(p)
	if err != nil {
		panic(err) // plain structs of numbers, strings and addresses always marshal
	}
	return ClientRequest{Op: p.Op(), NetNS: h.NetNS, Name: h.Name, To: to, Params: raw}
}

// spClientOp registers a client operation: it decodes the request's Params as P and
// prints fn's result as one JSON value.
func spClientOp[P SpliceOp, R any](fn func(req ClientRequest, p P) (R, error)) {
	var zero P
	name := zero.Op()
	extraOps[name] = func(req ClientRequest) error {
		var p P
		if err := json.Unmarshal(req.Params, &p); err != nil {
			return fmt.Errorf("%s: params %q: %w", name, req.Params, err)
		}
		r, err := fn(req, p)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(r)
	}
}

// spCommand is the line a client sends the splice-server after its greeting.
type spCommand struct {
	Cmd    string
	ID     string // names the server's report; "-" when nobody reads it
	Params json.RawMessage
}

// spServerCmd plays one command's server side on an accepted connection; a non-nil
// result is reported under the command's ID.
type spServerCmd func(c *net.TCPConn, name string, params json.RawMessage) (*SpliceSide, error)

var spCommands = map[string]spServerCmd{}

// spServe registers the server side of command cmd, whose parameters are a P.
func spServe[P any](cmd string, fn func(c *net.TCPConn, name string, p P) *SpliceSide) {
	spCommands[cmd] = func(c *net.TCPConn, name string, raw json.RawMessage) (*SpliceSide, error) {
		var p P
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, err
		}
		return fn(c, name, p), nil
	}
}

// spOpTimeout bounds every scenario: no socket operation waits longer, so a datapath
// that loses a wakeup makes a test fail instead of hang.
const spOpTimeout = 90 * time.Second

// SpliceSide is what one end of a connection observed in a scenario.
type SpliceSide struct {
	Sent      int64  `json:",omitempty"`
	Got       int64  // bytes read
	PatternOK bool   `json:",omitempty"` // the bytes read are the ones the peer sent, in order
	End       string `json:",omitempty"` // how reading ended: "EOF", an errno name, "timeout"
	Err       string `json:",omitempty"` // the first other error
	// LaterWrite is the error of writes attempted after reading ended ("" = they were
	// accepted).
	LaterWrite string `json:",omitempty"`
	At         int64  `json:",omitempty"` // UnixNano of the scenario's key moment
	SentSHA    string `json:",omitempty"`
	RecvSHA    string `json:",omitempty"`
	Peek       int    `json:",omitempty"` // bytes MSG_PEEK saw queued
	INQ        int    // SIOCINQ (FIONREAD) with all of them queued
	INQHalf    int    // SIOCINQ after reading half of them
	// Stall is what a stalled-receiver scenario measured (splice_stalled.go).
	Stall   *SpliceStall `json:",omitempty"`
	Elapsed time.Duration
}

// SpliceServerReport is one server-side scenario's outcome.
type SpliceServerReport struct {
	ID   string
	Cmd  string
	Side SpliceSide
}

// SpliceCountResult is the outcome of a many-connection scenario.
type SpliceCountResult struct {
	Conns    int      // connections established
	Expected int      // exchanges that should have succeeded
	OK       int      // exchanges that did
	MaxOpen  int      // connections open at the same time
	Bytes    int64    // payload bytes the server sent back in the exchanges
	Errors   []string // the first few failures
	Elapsed  time.Duration
}

// SpliceServerParams start splice-server in a host.
type SpliceServerParams struct {
	Listen []netip.AddrPort
	// RcvBuf and SndBuf, when set, are the listeners' SO_RCVBUF and SO_SNDBUF,
	// inherited by accepted sockets; set before listen, so TCP's window matches them
	// and autotuning is off.
	RcvBuf, SndBuf int
}

func (SpliceServerParams) Op() string { return "splice-server" }

func init() { extraOps["splice-server"] = spliceServer }

// spliceServer serves every scenario's server side; req.Name is the name it greets with.
func spliceServer(req ClientRequest) error {
	var p SpliceServerParams
	if err := json.Unmarshal(req.Params, &p); err != nil {
		return fmt.Errorf("splice-server: params %q: %w", req.Params, err)
	}
	lc := net.ListenConfig{Control: spBufControl(p.RcvBuf, p.SndBuf)}
	report := jsonLines[SpliceServerReport]()
	return serveEach(&lc, p.Listen, func(c *net.TCPConn) { spServeConn(c, req.Name, report) })
}

// spBufControl sets SO_RCVBUF and SO_SNDBUF (where non-zero) on a socket before it
// connects or listens.
func spBufControl(rcvbuf, sndbuf int) func(_, _ string, rc syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if rcvbuf != 0 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			}
			if sndbuf != 0 && serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
			}
		})
		return errors.Join(err, serr)
	}
}

// spServeConn greets, reads the command and plays its scenario on one connection.
func spServeConn(c *net.TCPConn, name string, report func(SpliceServerReport)) {
	defer c.Close() // a second Close after an abort is harmless
	_ = c.SetDeadline(time.Now().Add(spOpTimeout))
	if _, err := c.Write([]byte("hello " + name + "\n")); err != nil {
		return
	}
	line, err := spReadLine(c)
	if err != nil {
		return
	}
	var cmd spCommand
	if err := json.Unmarshal([]byte(line), &cmd); err != nil {
		return
	}
	rep := SpliceServerReport{ID: cmd.ID, Cmd: cmd.Cmd}
	start := time.Now()
	play, ok := spCommands[cmd.Cmd]
	if !ok {
		rep.Side.Err = "unknown command"
		report(rep)
		return
	}
	side, err := play(c, name, cmd.Params)
	switch {
	case err != nil:
		rep.Side.Err = "params: " + err.Error()
	case side == nil:
		return
	default:
		rep.Side = *side
	}
	rep.Side.Elapsed = time.Since(start)
	report(rep)
}

// spDial connects, reads the greeting and sends the command with its parameters.
func spDial(to netip.AddrPort, d *net.Dialer, cmd, id string, params any) (*net.TCPConn, string, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	d.Timeout = 5 * time.Second
	nc, err := d.Dial("tcp", to.String())
	if err != nil {
		return nil, "", err
	}
	c := nc.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(spOpTimeout))
	hello, err := spReadLine(c)
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("greeting: %w", err)
	}
	raw, err := json.Marshal(params)
	if err == nil {
		raw, err = json.Marshal(spCommand{Cmd: cmd, ID: id, Params: raw})
	}
	if err == nil {
		_, err = c.Write(append(raw, '\n'))
	}
	if err != nil {
		c.Close()
		return nil, "", err
	}
	return c, hello, nil
}

// spErrName names an error the way the tests compare them.
func spErrName(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

// spFill writes the pattern stream seed produces at offset off into b. 251 is prime,
// so the pattern never lines up with a power-of-two chunk: a lost, repeated or
// reordered chunk shows.
func spFill(seed int, off int64, b []byte) {
	for i := range b {
		b[i] = byte((off + int64(i) + int64(seed)*31) % 251)
	}
}

func spPattern(seed int, n int) []byte {
	b := make([]byte, n)
	spFill(seed, 0, b)
	return b
}

// spRawFD runs fn on the connection's file descriptor.
func spRawFD(c *net.TCPConn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// spIoctl returns ioctl(req) on the connection (SIOCINQ, SIOCOUTQ), -1 on error.
func spIoctl(c *net.TCPConn, req uint) int {
	v := -1
	_ = spRawFD(c, func(fd int) (err error) { v, err = unix.IoctlGetInt(fd, req); return })
	return v
}

func spSockopt(c *net.TCPConn, opt int) int {
	v := -1
	_ = spRawFD(c, func(fd int) (err error) { v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt); return })
	return v
}

// spReadLine reads one line a byte at a time: nothing after the newline is consumed,
// so the scenario that follows sees every byte of its data.
func spReadLine(c net.Conn) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 4096 {
		if _, err := io.ReadFull(c, one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
	return string(b), errors.New("line too long")
}

// spStream is a deterministic pseudo-random byte stream: both ends can hash what they
// sent and received without holding it, and a seed reproduces it.
type spStream struct {
	r   *rand.ChaCha8
	buf []byte
	off int // bytes of buf already sent
}

func newSpStream(seed uint64, chunk int) *spStream {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	s := &spStream{r: rand.NewChaCha8(key), buf: make([]byte, chunk)}
	s.off = chunk // empty: the first next() generates
	return s
}

// next returns the unsent rest of the current chunk, generating one when needed, at
// most limit bytes long.
func (s *spStream) next(limit int64) []byte {
	if s.off == len(s.buf) {
		_, _ = s.r.Read(s.buf)
		s.off = 0
	}
	b := s.buf[s.off:]
	if int64(len(b)) > limit {
		b = b[:limit]
	}
	return b
}

// spSend writes total bytes of stream seed, hashing exactly what was accepted.
func spSend(c net.Conn, total int64, seed uint64) (int64, string, error) {
	st := newSpStream(seed, 256<<10)
	h := sha256.New()
	var sent int64
	for sent < total {
		b := st.next(total - sent)
		n, err := c.Write(b)
		h.Write(b[:n])
		st.off += n
		sent += int64(n)
		if err != nil {
			return sent, hex.EncodeToString(h.Sum(nil)), err
		}
	}
	return sent, hex.EncodeToString(h.Sum(nil)), nil
}

// spRecvHash reads to the end of the stream, hashing.
func spRecvHash(c net.Conn) (int64, string, error) {
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var got int64
	for {
		n, err := c.Read(buf)
		h.Write(buf[:n])
		got += int64(n)
		if err != nil {
			return got, hex.EncodeToString(h.Sum(nil)), err
		}
	}
}

// spAbort closes with SO_LINGER 0: the kernel sends a reset and drops what is queued.
func spAbort(c *net.TCPConn) int64 {
	_ = c.SetLinger(0)
	at := time.Now().UnixNano()
	_ = c.Close()
	return at
}
