package harness

import (
	"bytes"
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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Child operations for the splice end-to-end tests (tests/splice_test.go).
//
// splice-server is one server with a small line protocol, so that every scenario runs
// against the same kind of process: on accept it greets ("hello NAME\n") and then reads
// one command line ("CMD ID ARGS...") and plays that scenario. The server speaking first
// matters: a client that has read the greeting knows both ends are established and
// paired, so its own first send cannot race the pairing and fall back to TCP (that
// fallback is correct, but these tests are about the spliced path). Server-side
// findings are printed as one JSON line (SpliceServerReport) per scenario.
//
// splice-client plays the other end; Args[0] names the scenario. splice-epoll-server
// is an edge-triggered epoll server written with raw syscalls, the way nginx and Envoy
// drive their sockets.
//
// Data never goes through io.Copy between two TCP connections: Go would use splice(2),
// which reads the TCP queue and never sees bytes that sk_msg put in the receive queue.
func init() {
	extraOps["splice-server"] = spliceServer
	extraOps["splice-client"] = spliceClient
	extraOps["splice-epoll-server"] = spliceEpollServer
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
	RcvBuf     int    `json:",omitempty"`
	SndBuf     int    `json:",omitempty"`
	OutQ       int    `json:",omitempty"` // SIOCOUTQ when the writer stalled
	Stalled    bool   `json:",omitempty"`
	Queued     int64  `json:",omitempty"` // written, none read, when the writer stalled
	Elapsed    time.Duration
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

func spInq(c *net.TCPConn) int {
	v := -1
	_ = spRawFD(c, func(fd int) (err error) { v, err = unix.IoctlGetInt(fd, unix.SIOCINQ); return })
	return v
}

func spSockopt(c *net.TCPConn, opt int) int {
	v := -1
	_ = spRawFD(c, func(fd int) (err error) { v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt); return })
	return v
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
	s.INQ = spInq(c)
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf[:n/2]); err != nil {
		s.Err = "read: " + spErrName(err)
		return s
	}
	s.INQHalf = spInq(c)
	if _, err := io.ReadFull(c, buf[n/2:]); err != nil {
		s.Err = "read: " + spErrName(err)
		return s
	}
	s.Got = int64(n)
	s.PatternOK = bytes.Equal(buf, spPattern(seed, n))
	return s
}

func spAtoi(s []string, i int) int64 {
	if i >= len(s) {
		return 0
	}
	v, _ := strconv.ParseInt(s[i], 10, 64)
	return v
}

// spliceServer: Args are "listen=ADDR:PORT" (repeatable) and "rcvbuf=N" (SO_RCVBUF of
// the listeners, inherited by accepted sockets; set before listen, so TCP's window
// matches it). req.Name is the name the server greets with.
func spliceServer(req ClientRequest) error {
	var listen []netip.AddrPort
	rcvbuf := 0
	for _, a := range req.Args {
		k, v, _ := strings.Cut(a, "=")
		switch k {
		case "listen":
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return err
			}
			listen = append(listen, ap)
		case "rcvbuf":
			rcvbuf, _ = strconv.Atoi(v)
		default:
			return fmt.Errorf("splice-server: unknown argument %q", a)
		}
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		if rcvbuf == 0 {
			return nil
		}
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf) })
		return errors.Join(err, serr)
	}}
	report := jsonLines[SpliceServerReport]()
	return serveEach(&lc, listen, func(c *net.TCPConn) { spServe(c, req.Name, report) })
}

// spServe plays the scenario the client asks for on one accepted connection.
func spServe(c *net.TCPConn, name string, report func(SpliceServerReport)) {
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	_ = c.SetDeadline(time.Now().Add(spOpTimeout))
	if _, err := c.Write([]byte("hello " + name + "\n")); err != nil {
		return
	}
	line, err := spReadLine(c)
	if err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return
	}
	cmd, id, args := f[0], f[1], f[2:]
	rep := SpliceServerReport{ID: id, Cmd: cmd}
	s := &rep.Side
	start := time.Now()
	switch cmd {
	case "fionread": // N M: send N bytes in one write, then measure the client's M
		n, m := int(spAtoi(args, 0)), int(spAtoi(args, 1))
		if _, err := c.Write(spPattern(1, n)); err != nil {
			return
		}
		rep.Side = spMeasureInq(c, m, 2)
		raw, _ := json.Marshal(rep.Side)
		_, _ = c.Write(append(raw, '\n'))
	case "stream": // SIZE SEED: send SIZE bytes of stream SEED+1 while reading to EOF
		size, seed := spAtoi(args, 0), uint64(spAtoi(args, 1))
		done := make(chan struct{})
		go func() {
			defer close(done)
			var err error
			s.Sent, s.SentSHA, err = spSend(c, size, seed+1)
			s.Err = spErrName(err)
			_ = c.CloseWrite()
		}()
		var err error
		s.Got, s.RecvSHA, err = spRecvHash(c)
		s.End = spErrName(err)
		<-done
	case "hc-client": // A B: the client sends A bytes and half-closes; then B back, then close
		a, b := spAtoi(args, 0), spAtoi(args, 1)
		*s = spReadPattern(c, 3, a)
		if _, err := c.Write(spPattern(4, int(b))); err != nil {
			s.Err = "write after the peer's half-close: " + spErrName(err)
		}
		s.Sent = b
	case "hc-server": // C D: send C bytes and half-close; then read the client's D to EOF
		cc, d := spAtoi(args, 0), spAtoi(args, 1)
		if _, err := c.Write(spPattern(5, int(cc))); err != nil {
			s.Err = spErrName(err)
		}
		s.Sent = cc
		if err := c.CloseWrite(); err != nil {
			s.Err = "shutdown: " + spErrName(err)
		}
		sent, err := s.Sent, s.Err
		*s = spReadPattern(c, 6, d)
		s.Sent, s.Err = sent, err
	case "slowread": // DELAYMS: read nothing for a while, then everything, and tell
		s.RcvBuf = spSockopt(c, unix.SO_RCVBUF)
		time.Sleep(time.Duration(spAtoi(args, 0)) * time.Millisecond)
		s.INQ = spInq(c)
		var err error
		s.Got, s.RecvSHA, err = spRecvHash(c)
		s.End = spErrName(err)
		raw, _ := json.Marshal(rep.Side)
		_, _ = c.Write(append(raw, '\n'))
	case "echo": // echo until EOF, with read/write (never splice(2))
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case "abort-after": // N: read N bytes, then abort while the client keeps sending
		if _, err := io.ReadFull(c, make([]byte, spAtoi(args, 0))); err != nil {
			s.Err = spErrName(err)
		}
		closed = true
		s.At = spAbort(c)
	case "abort-idle": // MS: abort while the client waits in read
		time.Sleep(time.Duration(spAtoi(args, 0)) * time.Millisecond)
		closed = true
		s.At = spAbort(c)
	case "send-until-error": // send paced chunks until the client's abort stops us
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
	case "recv-until-error": // wait in read until the client's abort ends it
		s.Got, s.End = spDrainUntilError(c)
		s.At = time.Now().UnixNano()
		s.LaterWrite = spLaterWrite(c)
	case "ask": // DELAYMS: answer every line with our name; close DELAYMS after the end
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
		time.Sleep(time.Duration(spAtoi(args, 0)) * time.Millisecond)
		return
	default:
		rep.Side.Err = "unknown command"
	}
	rep.Side.Elapsed = time.Since(start)
	report(rep)
}

// spliceClient: Args[0] is the scenario, the rest its parameters; To is the server.
func spliceClient(req ClientRequest) error {
	if len(req.Args) == 0 {
		return errors.New("splice-client: no scenario")
	}
	var out any
	var err error
	args := req.Args[1:]
	switch req.Args[0] {
	case "fionread":
		out, err = spClientFionread(req.To, int(spAtoi(args, 0)), int(spAtoi(args, 1)))
	case "stream":
		out, err = spClientStream(req.To, spAtoi(args, 0), uint64(spAtoi(args, 1)))
	case "halfclose":
		out, err = spClientHalfClose(req.To, spAtoi(args, 0), spAtoi(args, 1), spAtoi(args, 2), spAtoi(args, 3))
	case "backpressure":
		out, err = spClientBackpressure(req.To, spAtoi(args, 0), spAtoi(args, 1), int(spAtoi(args, 2)))
	case "many":
		out, err = spClientMany(req.To, int(spAtoi(args, 0)), int(spAtoi(args, 1)))
	case "abort":
		out, err = spClientAbort(req.To)
	case "epoll":
		out, err = spClientEpoll(req.To, int(spAtoi(args, 0)), int(spAtoi(args, 1)))
	case "loop":
		out, err = spClientLoop(req, args)
	default:
		return fmt.Errorf("splice-client: unknown scenario %q", req.Args[0])
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// spDial connects, reads the greeting and sends the command.
func spDial(to netip.AddrPort, d *net.Dialer, cmd string) (*net.TCPConn, string, error) {
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
	if cmd != "" {
		if _, err := c.Write([]byte(cmd + "\n")); err != nil {
			c.Close()
			return nil, "", err
		}
	}
	return c, hello, nil
}

func spClientFionread(to netip.AddrPort, n, m int) (map[string]SpliceSide, error) {
	c, _, err := spDial(to, nil, fmt.Sprintf("fionread - %d %d", n, m))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	mine := spMeasureInq(c, n, 1)
	if _, err := c.Write(spPattern(2, m)); err != nil {
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

func spClientStream(to netip.AddrPort, size int64, seed uint64) (SpliceSide, error) {
	var s SpliceSide
	c, _, err := spDial(to, nil, fmt.Sprintf("stream stream-%d %d %d", seed, size, seed))
	if err != nil {
		return s, err
	}
	defer c.Close()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		s.Sent, s.SentSHA, err = spSend(c, size, seed)
		s.Err = spErrName(err)
		_ = c.CloseWrite()
	}()
	got, sum, rerr := spRecvHash(c)
	<-done
	s.Got, s.RecvSHA, s.End = got, sum, spErrName(rerr)
	s.Elapsed = time.Since(start)
	return s, nil
}

// spClientHalfClose runs two connections: "hc-client", where the client half-closes
// first (then the server answers and closes), and "hc-server", where the server
// half-closes first (then the client answers and closes).
func spClientHalfClose(to netip.AddrPort, a, b, cc, d int64) (map[string]SpliceSide, error) {
	out := map[string]SpliceSide{}
	c, _, err := spDial(to, nil, fmt.Sprintf("hc-client hc-client-%s %d %d", to.Addr(), a, b))
	if err != nil {
		return nil, err
	}
	var s SpliceSide
	if _, err := c.Write(spPattern(3, int(a))); err != nil {
		s.Err = spErrName(err)
	}
	s.Sent = a
	if err := c.CloseWrite(); err != nil {
		s.Err = "shutdown: " + spErrName(err)
	}
	r := spReadPattern(c, 4, b)
	r.Sent, r.Err = s.Sent, s.Err
	out["hc-client"] = r
	c.Close()

	c, _, err = spDial(to, nil, fmt.Sprintf("hc-server hc-server-%s %d %d", to.Addr(), cc, d))
	if err != nil {
		return nil, err
	}
	r = spReadPattern(c, 5, cc)
	if _, err := c.Write(spPattern(6, int(d))); err != nil {
		r.Err = "write after the peer's half-close: " + spErrName(err)
	}
	r.Sent = d
	c.Close() // a full close: the server must see it as EOF after the data
	out["hc-server"] = r
	return out, nil
}

// spClientBackpressure writes without reading anything back while the server sleeps:
// each write may block at most 300ms before it counts as a stall. Once stalled (or
// after capBytes without a stall) it writes 4 MiB more, which only the reader's
// draining lets through, half-closes, and compares the server's count and hash.
func spClientBackpressure(to netip.AddrPort, delayMs, capBytes int64, sndbuf int) (map[string]SpliceSide, error) {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf) })
		return errors.Join(err, serr)
	}}
	c, _, err := spDial(to, d, fmt.Sprintf("slowread - %d", delayMs))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var s SpliceSide
	start := time.Now()
	st := newSpStream(7, 64<<10)
	h := sha256.New()
	write := func(limit int64, deadline time.Time) error {
		_ = c.SetWriteDeadline(deadline)
		b := st.next(limit)
		n, err := c.Write(b)
		h.Write(b[:n])
		st.off += n
		s.Sent += int64(n)
		return err
	}
	for s.Sent < capBytes {
		err := write(capBytes-s.Sent, time.Now().Add(300*time.Millisecond))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.Stalled = true
			break
		}
		if err != nil {
			s.Err = spErrName(err)
			return map[string]SpliceSide{"client": s}, nil
		}
	}
	s.Queued = s.Sent
	s.SndBuf = spSockopt(c, unix.SO_SNDBUF)
	_ = spRawFD(c, func(fd int) (err error) { s.OutQ, err = unix.IoctlGetInt(fd, unix.SIOCOUTQ); return })
	if s.Stalled {
		// Everything from here on passes only because the reader drains.
		target := s.Sent + 4<<20
		for s.Sent < target {
			if err := write(target-s.Sent, time.Now().Add(20*time.Second)); err != nil {
				s.Err = "after the stall: " + spErrName(err)
				return map[string]SpliceSide{"client": s}, nil
			}
		}
	}
	s.SentSHA = hex.EncodeToString(h.Sum(nil))
	if err := c.CloseWrite(); err != nil {
		s.Err = "shutdown: " + spErrName(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := spReadLine(c)
	if err != nil {
		s.Err = "server's findings: " + spErrName(err)
		return map[string]SpliceSide{"client": s}, nil
	}
	s.Elapsed = time.Since(start)
	var theirs SpliceSide
	if err := json.Unmarshal([]byte(line), &theirs); err != nil {
		return nil, err
	}
	return map[string]SpliceSide{"client": s, "server": theirs}, nil
}

// spClientMany opens n connections to the echo server (at most 100 handshakes at a
// time), and only once all are open, exchanges msgs messages on each at once; they
// close after every exchange is over, so all n are open together throughout.
func spClientMany(to netip.AddrPort, n, msgs int) (SpliceCountResult, error) {
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
			c, _, err := spDial(to, nil, "echo -")
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

// spClientAbort runs the four abort scenarios, one connection each:
//   - A: the server aborts while the client sends (the client's writes must fail);
//   - B: the server aborts while the client waits in read;
//   - C: the client aborts while the server sends;
//   - D: the client aborts while the server waits in read.
func spClientAbort(to netip.AddrPort) (map[string]SpliceSide, error) {
	out := map[string]SpliceSide{}

	c, _, err := spDial(to, nil, "abort-after A 65536")
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

	c, _, err = spDial(to, nil, "abort-idle B 300")
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

	c, _, err = spDial(to, nil, "send-until-error C")
	if err != nil {
		return nil, err
	}
	s = SpliceSide{}
	if _, err := io.ReadFull(c, make([]byte, 256<<10)); err != nil {
		s.Err = spErrName(err)
	}
	s.Got = 256 << 10
	s.At = spAbort(c)
	out["C"] = s

	c, _, err = spDial(to, nil, "recv-until-error D")
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

// spClientLoop is the loopback identity check: Args "local=ADDR:PORT" (the client's
// fixed source), "iterations=N", "asks=K", "barrier=DIR", "peers=a,b", "closedelay=MS".
// Each iteration connects from the same source port, checks that the greeting and K
// answers carry this host's name, and aborts (no TIME_WAIT, so the same 4-tuple is
// free at once). The first connection waits at the barrier until every peer's client
// holds its connection too, so the same tuple is live in every namespace at once.
func spClientLoop(req ClientRequest, args []string) (SpliceCountResult, error) {
	var res SpliceCountResult
	opts := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		opts[k] = v
	}
	local, err := netip.ParseAddrPort(opts["local"])
	if err != nil {
		return res, err
	}
	iterations, _ := strconv.Atoi(opts["iterations"])
	asks, _ := strconv.Atoi(opts["asks"])
	res.Expected = iterations * (asks + 1)
	start := time.Now()
	fail := func(format string, a ...any) {
		if len(res.Errors) < 10 {
			res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
		}
	}
	d := &net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(local),
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return errors.Join(err, serr)
		},
	}
	for it := 0; it < iterations; it++ {
		c, hello, err := spDial(req.To, d, "ask - "+opts["closedelay"])
		if err != nil {
			fail("iteration %d: %v", it, err)
			continue
		}
		res.Conns++
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if la := c.LocalAddr().(*net.TCPAddr).AddrPort(); la != local {
			fail("iteration %d: bound to %s, want %s", it, la, local)
		}
		if hello == "hello "+req.Name {
			res.OK++
		} else {
			fail("iteration %d: greeting %q, want from %s", it, hello, req.Name)
		}
		if it == 0 && opts["barrier"] != "" {
			if err := spBarrier(opts["barrier"], req.Name, strings.Split(opts["peers"], ",")); err != nil {
				fail("barrier: %v", err)
			}
		}
		for k := 0; k < asks; k++ {
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

// The epoll protocol: a request is 16 bytes (magic, connection, round, response size);
// the response is that many bytes, starting with the request and then a pattern.
const spEpMagic = 0x5e11ce55

func spEpRequest(conn, round, size uint32) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b[0:], spEpMagic)
	binary.BigEndian.PutUint32(b[4:], conn)
	binary.BigEndian.PutUint32(b[8:], round)
	binary.BigEndian.PutUint32(b[12:], size)
	return b
}

func spEpResponse(req []byte) []byte {
	size := binary.BigEndian.Uint32(req[12:])
	b := make([]byte, size)
	copy(b, req)
	seed := binary.BigEndian.Uint32(req[4:]) + binary.BigEndian.Uint32(req[8:])
	for i := 16; i < len(b); i++ {
		b[i] = byte((uint32(i) + seed) % 251)
	}
	return b
}

// spEpConn is one connection of the epoll server: what was read but not yet parsed,
// what is still to be written, and counts for the report.
type spEpConn struct {
	fd      int
	in, out []byte
	eof     bool
	Served  int
	WAgain  int // writes that hit EAGAIN and waited for EPOLLOUT
	Reads   int
	MaxOutQ int
}

// spliceEpollServer: Args[0] is the listen address. One thread, non-blocking sockets,
// EPOLLET on everything: each readiness edge must be drained to EAGAIN, and a server
// that misses an edge waits forever, which the client's deadlines turn into a failure.
func spliceEpollServer(req ClientRequest) error {
	ap, err := netip.ParseAddrPort(req.Args[0])
	if err != nil {
		return err
	}
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	if ap.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.Bind(lfd, sa); err != nil {
		return err
	}
	if err := unix.Listen(lfd, 1024); err != nil {
		return err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(lfd)}); err != nil {
		return err
	}
	fmt.Println("ready")
	enc := json.NewEncoder(os.Stdout)
	conns := map[int]*spEpConn{}
	closeConn := func(c *spEpConn) {
		unix.Close(c.fd)
		delete(conns, c.fd)
		_ = enc.Encode(c)
	}
	evs := make([]unix.EpollEvent, 128)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range evs[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
					if errors.Is(err, unix.EAGAIN) {
						break
					}
					if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
						continue
					}
					if err != nil {
						return err
					}
					c := &spEpConn{fd: cfd, out: []byte("hello\n")}
					conns[cfd] = c
					if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{
						Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(cfd)}); err != nil {
						return err
					}
					if !c.flush() {
						closeConn(c)
					}
				}
				continue
			}
			c := conns[fd]
			if c == nil {
				continue
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.readAll(buf) {
				closeConn(c)
				continue
			}
			c.process()
			if !c.flush() || (c.eof && len(c.out) == 0) {
				closeConn(c)
			}
		}
	}
}

// readAll reads until EAGAIN, as edge-triggered readiness requires; false on an error.
func (c *spEpConn) readAll(buf []byte) bool {
	for !c.eof {
		n, err := unix.Read(c.fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return true
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false
		case n == 0:
			c.eof = true
		default:
			c.Reads++
			c.in = append(c.in, buf[:n]...)
		}
	}
	return true
}

// process turns every complete request into its response.
func (c *spEpConn) process() {
	for len(c.in) >= 16 {
		if binary.BigEndian.Uint32(c.in) != spEpMagic {
			c.eof, c.in = true, nil // garbage: stop reading, close once flushed
			return
		}
		c.out = append(c.out, spEpResponse(c.in[:16])...)
		c.in = c.in[16:]
		c.Served++
	}
	c.MaxOutQ = max(c.MaxOutQ, len(c.out))
}

// flush writes until done or EAGAIN (then EPOLLOUT's edge resumes it); false on error.
func (c *spEpConn) flush() bool {
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		switch {
		case errors.Is(err, unix.EAGAIN):
			c.WAgain++
			return true
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false
		}
		c.out = c.out[n:]
	}
	c.out = nil
	return true
}

// spClientEpoll runs conns connections concurrently, each doing rounds rounds of 1–3
// pipelined requests (sent in one write) of assorted response sizes, and checks every
// response byte.
func spClientEpoll(to netip.AddrPort, conns, rounds int) (SpliceCountResult, error) {
	res := SpliceCountResult{}
	start := time.Now()
	sizes := []uint32{16, 100, 1500, 16 << 10, 64<<10 + 7, 33, 200 << 10}
	var mu sync.Mutex
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(res.Errors) < 10 {
			res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
		}
	}
	var wg sync.WaitGroup
	for ci := 0; ci < conns; ci++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := net.DialTimeout("tcp", to.String(), 5*time.Second)
			if err != nil {
				fail("conn %d: %v", ci, err)
				return
			}
			c := nc.(*net.TCPConn)
			defer c.Close()
			mu.Lock()
			res.Conns++
			mu.Unlock()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			hello := make([]byte, 6)
			if _, err := io.ReadFull(c, hello); err != nil || string(hello) != "hello\n" {
				fail("conn %d: greeting %q: %v", ci, hello, err)
				return
			}
			for r := 0; r < rounds; r++ {
				p := 1 + r%3
				var batch, want []byte
				for k := 0; k < p; k++ {
					q := spEpRequest(uint32(ci), uint32(r*3+k), sizes[(r+k+ci)%len(sizes)])
					batch = append(batch, q...)
					want = append(want, spEpResponse(q)...)
				}
				mu.Lock()
				res.Expected += p
				mu.Unlock()
				// Every round must finish within 5s: a missed edge stalls it for good.
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(batch); err != nil {
					fail("conn %d round %d: write: %v", ci, r, err)
					return
				}
				got := make([]byte, len(want))
				if n, err := io.ReadFull(c, got); err != nil {
					fail("conn %d round %d: read %d of %d bytes: %v", ci, r, n, len(want), err)
					return
				}
				if !bytes.Equal(got, want) {
					fail("conn %d round %d: wrong response bytes", ci, r)
					return
				}
				mu.Lock()
				res.OK += p
				res.Bytes += int64(len(want))
				mu.Unlock()
			}
			// The server closes once it has seen our EOF and flushed everything.
			_ = c.CloseWrite()
			if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				fail("conn %d: after our half-close: %d bytes, %v (want EOF)", ci, n, err)
			}
		}()
	}
	wg.Wait()
	res.MaxOpen = res.Conns
	res.Elapsed = time.Since(start)
	return res, nil
}
