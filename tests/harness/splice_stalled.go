package harness

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// StalledParams: two connections at once, each with a receiver that reads nothing for
// Stall and then everything: "up", where the client sends and the server stalls, and
// "down", where the server sends and the client stalls. The sender writes until a write
// has blocked for 300ms (the peer's window and its own buffer are full) or Cap bytes
// went without that; both ends measure what is queued one second before the stall
// ends; then the sender writes After more bytes, which only the resumed reader lets
// through, and half-closes, and the receiver reads to EOF. Both hash. SndBuf and
// RcvBuf are the client sockets' buffers, set before connect; the server's are its
// listeners' (SpliceServerParams). The client prints map[string]SpliceSide, "up" its
// sending side and "down" its receiving side; the server reports ID+"-up" (receiving)
// and ID+"-down" (sending).
type StalledParams struct {
	ID             string
	Stall          time.Duration
	Cap, After     int64
	SndBuf, RcvBuf int
	Seed           uint64 // the client sends stream Seed, the server Seed+1
}

func (StalledParams) Op() string { return "splice-stalled" }

// SpliceStall is what one end measured of a stall.
type SpliceStall struct {
	Role           string // "sender" or "receiver"
	SndBuf, RcvBuf int    // SO_SNDBUF and SO_RCVBUF as the kernel reports them
	Stalled        bool   // sender: a write blocked for 300ms
	Queued         int64  // sender: bytes written when it stalled, none of them read
	OutQ           int    // SIOCOUTQ during the stall (the sender's is the one that counts)
	INQ            int    // SIOCINQ during the stall (the receiver's is the one that counts)
	Mem            SkMeminfo
	Sockstat       Sockstat // this namespace's, during the stall
}

// SkMeminfo is getsockopt(SO_MEMINFO): the socket's own memory accounting in bytes
// (sk_rmem_alloc, sk_wmem_queued, ...), what ss -m prints as skmem.
type SkMeminfo struct {
	RmemAlloc, RcvBuf, WmemAlloc, SndBuf, FwdAlloc, WmemQueued, Optmem, Backlog, Drops uint32
}

// Sockstat is the TCP line of /proc/net/sockstat. InUse and TW count this network
// namespace's sockets; Orphan, Alloc and Mem (pages) are machine-wide, as the kernel
// accounts TCP memory globally, and Mem lags by up to net.core.mem_pcpu_rsv pages per
// CPU (each CPU batches its charges).
type Sockstat struct{ InUse, Orphan, TW, Alloc, Mem int64 }

func init() {
	spClientOp(spClientStalled)
	spServe("stall-recv", func(c *net.TCPConn, _ string, p StalledParams) *SpliceSide {
		s := spStallRecv(c, p)
		return &s
	})
	spServe("stall-send", func(c *net.TCPConn, _ string, p StalledParams) *SpliceSide {
		s := spStallSend(c, p, p.Seed+1)
		return &s
	})
}

func spClientStalled(req ClientRequest, p StalledParams) (map[string]SpliceSide, error) {
	out := map[string]SpliceSide{}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, dir := range []string{"up", "down"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := map[string]string{"up": "stall-recv", "down": "stall-send"}[dir]
			d := &net.Dialer{Control: spBufControl(p.RcvBuf, p.SndBuf)}
			c, _, err := spDial(req.To, d, cmd, p.ID+"-"+dir, p)
			var s SpliceSide
			if err == nil {
				if dir == "up" {
					s = spStallSend(c, p, p.Seed)
				} else {
					s = spStallRecv(c, p)
				}
				c.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			}
			out[dir] = s
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// spStallMeasure is when, after start, both ends measure: late in the stall, with the
// sender long stalled, so both ends' snapshots are of the same moment.
func spStallMeasure(p StalledParams) time.Duration { return p.Stall - time.Second }

// spStallSend is the sending end of a stall; seed names its stream.
func spStallSend(c *net.TCPConn, p StalledParams, seed uint64) SpliceSide {
	start := time.Now()
	st := &SpliceStall{Role: "sender"}
	s := SpliceSide{Stall: st}
	stream := newSpStream(seed, 64<<10)
	h := sha256.New()
	write := func(limit int64, deadline time.Time) error {
		_ = c.SetWriteDeadline(deadline)
		b := stream.next(limit)
		n, err := c.Write(b)
		h.Write(b[:n])
		stream.off += n
		s.Sent += int64(n)
		return err
	}
	for s.Sent < p.Cap {
		err := write(p.Cap-s.Sent, time.Now().Add(300*time.Millisecond))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			st.Stalled = true
			break
		}
		if err != nil {
			s.Err = spErrName(err)
			return s
		}
	}
	st.Queued = s.Sent
	time.Sleep(time.Until(start.Add(spStallMeasure(p))))
	spStallSnapshot(c, st)
	// Everything from here on passes only because the reader drains.
	for target := s.Sent + p.After; s.Sent < target; {
		if err := write(target-s.Sent, start.Add(p.Stall+30*time.Second)); err != nil {
			s.Err = "after the stall: " + spErrName(err)
			return s
		}
	}
	s.SentSHA = hex.EncodeToString(h.Sum(nil))
	if err := c.CloseWrite(); err != nil {
		s.Err = "shutdown: " + spErrName(err)
		return s
	}
	// The receiver closes once it has read our EOF: an orderly end on both sides.
	_ = c.SetReadDeadline(start.Add(p.Stall + 30*time.Second))
	n, err := c.Read(make([]byte, 1))
	s.Got, s.End = int64(n), spErrName(err)
	return s
}

// spStallRecv is the receiving end: it reads nothing for the stall, then to EOF.
func spStallRecv(c *net.TCPConn, p StalledParams) SpliceSide {
	start := time.Now()
	st := &SpliceStall{Role: "receiver"}
	s := SpliceSide{Stall: st}
	time.Sleep(time.Until(start.Add(spStallMeasure(p))))
	spStallSnapshot(c, st)
	time.Sleep(time.Until(start.Add(p.Stall)))
	_ = c.SetReadDeadline(start.Add(p.Stall + 30*time.Second))
	var err error
	s.Got, s.RecvSHA, err = spRecvHash(c)
	s.End = spErrName(err)
	return s
}

// spStallSnapshot records the socket's queues, buffers and memory and the namespace's
// sockstat, all at one moment.
func spStallSnapshot(c *net.TCPConn, st *SpliceStall) {
	st.OutQ = spIoctl(c, unix.SIOCOUTQ)
	st.INQ = spIoctl(c, unix.SIOCINQ)
	st.SndBuf = spSockopt(c, unix.SO_SNDBUF)
	st.RcvBuf = spSockopt(c, unix.SO_RCVBUF)
	_ = spRawFD(c, func(fd int) error {
		l := uint32(unsafe.Sizeof(st.Mem))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&st.Mem)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			return e
		}
		return nil
	})
	st.Sockstat, _ = ReadSockstat("/proc/self/net/sockstat")
}

// ReadSockstat reads the TCP line of a sockstat file. /proc/self/net is the namespace
// of the process's main thread (a splice child runs wholly inside its host's);
// /proc/thread-self/net is the calling thread's.
func ReadSockstat(path string) (Sockstat, error) {
	var s Sockstat
	f, err := os.Open(path)
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "TCP: ")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		for i := 0; i+1 < len(fields); i += 2 {
			v, _ := strconv.ParseInt(fields[i+1], 10, 64)
			switch fields[i] {
			case "inuse":
				s.InUse = v
			case "orphan":
				s.Orphan = v
			case "tw":
				s.TW = v
			case "alloc":
				s.Alloc = v
			case "mem":
				s.Mem = v
			}
		}
	}
	return s, sc.Err()
}
