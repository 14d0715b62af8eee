package sockops

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// behaviour is one row of the receiver matrix: a small program that uses a receiving
// socket the way real programs do and says what it saw, in words that are equal on
// two runs exactly when the socket behaved the same.
type behaviour struct {
	name string
	run  func(p *loopbackPair) string
}

var behaviours = []behaviour{
	{"read", rowRead},
	{"readv", rowReadv},
	{"MSG_PEEK", rowPeek},
	{"MSG_WAITALL", rowWaitAll},
	{"FIONREAD/SIOCINQ", rowInq},
	{"SO_RCVLOWAT", rowRcvLowat},
	{"blocking read", rowBlockingRead},
	{"non-blocking read", rowNonBlockingRead},
	{"poll", rowPoll},
	{"epoll level-triggered", rowEpollLevel},
	{"epoll edge-triggered", rowEpollEdge},
	{"splice(2)", rowSplice},
	{"half-close", rowHalfClose},
	{"peer reset", rowPeerReset},
	{"close with unread data", rowCloseUnread},
	{"reader and writer threads", rowTwoThreads},
	{"memory bound", rowMemoryBound},
}

const chunk = 1000

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func errName(err error) string {
	if errno, ok := err.(unix.Errno); ok {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// readFull reads n bytes with read(2), within the socket's receive timeout.
func readFull(fd, n int) ([]byte, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n)
	for len(out) < n {
		k, err := unix.Read(fd, buf[:n-len(out)])
		if err != nil {
			return out, err
		}
		if k == 0 {
			return out, fmt.Errorf("EOF")
		}
		out = append(out, buf[:k]...)
	}
	return out, nil
}

func intact(got []byte, err error, want []byte) string {
	if err != nil {
		return fmt.Sprintf("%d bytes, then %s", len(got), errName(err))
	}
	return fmt.Sprintf("%d bytes, intact %v", len(got), bytes.Equal(got, want))
}

func readable(fd int, timeout time.Duration) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(pfd, int(timeout/time.Millisecond))
	return n > 0 && pfd[0].Revents&unix.POLLIN != 0
}

func rowRead(p *loopbackPair) string {
	want := pattern(chunk)
	if _, err := unix.Write(p.snd, want); err != nil {
		return "send: " + errName(err)
	}
	got, err := readFull(p.rcv, chunk)
	return intact(got, err, want)
}

func rowReadv(p *loopbackPair) string {
	want := pattern(chunk)
	if _, err := unix.Write(p.snd, want); err != nil {
		return "send: " + errName(err)
	}
	a, b := make([]byte, 300), make([]byte, chunk-300)
	got := 0
	for got < chunk && readable(p.rcv, ioTimeout) {
		iov := [][]byte{a[min(got, 300):], b[max(got-300, 0):]}
		n, err := unix.Readv(p.rcv, iov)
		if err != nil || n == 0 {
			return fmt.Sprintf("%d bytes, then %v", got, err)
		}
		got += n
	}
	return fmt.Sprintf("%d bytes, intact %v", got, bytes.Equal(append(a, b...), want))
}

func rowPeek(p *loopbackPair) string {
	want := pattern(chunk)
	if _, err := unix.Write(p.snd, want); err != nil {
		return "send: " + errName(err)
	}
	readable(p.rcv, ioTimeout)
	buf := make([]byte, 2*chunk)
	n1, _, err1 := unix.Recvfrom(p.rcv, buf, unix.MSG_PEEK)
	peeked := append([]byte(nil), buf[:max(n1, 0)]...)
	n2, _, err2 := unix.Recvfrom(p.rcv, buf, 0)
	return fmt.Sprintf("peek %d (%v), then read %d (%v), same bytes %v", n1, err1, n2, err2, bytes.Equal(peeked, buf[:max(n2, 0)]))
}

// rowWaitAll: half the bytes are queued, the rest come 100 ms later; MSG_WAITALL must
// wait for all of them.
func rowWaitAll(p *loopbackPair) string {
	want := pattern(chunk)
	if _, err := unix.Write(p.snd, want[:chunk/2]); err != nil {
		return "send: " + errName(err)
	}
	done := make(chan string, 1)
	go func() {
		buf := make([]byte, chunk)
		n, _, err := unix.Recvfrom(p.rcv, buf, unix.MSG_WAITALL)
		if err != nil {
			done <- errName(err)
			return
		}
		done <- fmt.Sprintf("returned %d of %d", n, chunk)
	}()
	time.Sleep(100 * time.Millisecond)
	_, _ = unix.Write(p.snd, want[chunk/2:])
	return <-done
}

func rowInq(p *loopbackPair) string {
	if _, err := unix.Write(p.snd, pattern(chunk)); err != nil {
		return "send: " + errName(err)
	}
	readable(p.rcv, ioTimeout)
	n, err := unix.IoctlGetInt(p.rcv, unix.SIOCINQ)
	if err != nil {
		return errName(err)
	}
	return fmt.Sprintf("%d with %d queued", n, chunk)
}

func rowRcvLowat(p *loopbackPair) string {
	if err := unix.SetsockoptInt(p.rcv, unix.SOL_SOCKET, unix.SO_RCVLOWAT, chunk); err != nil {
		return errName(err)
	}
	_, _ = unix.Write(p.snd, pattern(10))
	early := readable(p.rcv, 50*time.Millisecond)
	_, _ = unix.Write(p.snd, pattern(chunk-10))
	return fmt.Sprintf("readable at 10 of %d: %v; at %d: %v", chunk, early, chunk, readable(p.rcv, ioTimeout))
}

func rowBlockingRead(p *loopbackPair) string {
	done := make(chan string, 1)
	go func() {
		buf := make([]byte, chunk)
		n, err := unix.Read(p.rcv, buf)
		if err != nil {
			done <- errName(err)
			return
		}
		done <- fmt.Sprintf("returned %d", n)
	}()
	time.Sleep(20 * time.Millisecond)
	_, _ = unix.Write(p.snd, pattern(10))
	return <-done
}

func rowNonBlockingRead(p *loopbackPair) string {
	buf := make([]byte, chunk)
	_, _, err := unix.Recvfrom(p.rcv, buf, unix.MSG_DONTWAIT)
	before := "no error"
	if err != nil {
		before = errName(err)
	}
	_, _ = unix.Write(p.snd, pattern(10))
	readable(p.rcv, ioTimeout)
	n, _, err := unix.Recvfrom(p.rcv, buf, unix.MSG_DONTWAIT)
	return fmt.Sprintf("empty: %s; after 10 bytes: %d %v", before, n, err)
}

func rowPoll(p *loopbackPair) string {
	before := readable(p.rcv, 0)
	_, _ = unix.Write(p.snd, pattern(10))
	return fmt.Sprintf("readable empty %v, with data %v", before, readable(p.rcv, ioTimeout))
}

func epollWait(ep int, timeout time.Duration) int {
	ev := make([]unix.EpollEvent, 4)
	n, _ := unix.EpollWait(ep, ev, int(timeout/time.Millisecond))
	return n
}

func withEpoll(fd int, events uint32, fn func(ep int) string) string {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return errName(err)
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)}); err != nil {
		return errName(err)
	}
	return fn(ep)
}

func rowEpollLevel(p *loopbackPair) string {
	return withEpoll(p.rcv, unix.EPOLLIN, func(ep int) string {
		_, _ = unix.Write(p.snd, pattern(100))
		first := epollWait(ep, ioTimeout)
		again := epollWait(ep, 0)
		_, _ = readFull(p.rcv, 100)
		return fmt.Sprintf("events %d, unread again %d, drained %d", first, again, epollWait(ep, 0))
	})
}

func rowEpollEdge(p *loopbackPair) string {
	return withEpoll(p.rcv, unix.EPOLLIN|unix.EPOLLET, func(ep int) string {
		_, _ = unix.Write(p.snd, pattern(100))
		first := epollWait(ep, ioTimeout)
		again := epollWait(ep, 0)
		_, _ = unix.Write(p.snd, pattern(100))
		second := epollWait(ep, ioTimeout)
		got, err := readFull(p.rcv, 200)
		return fmt.Sprintf("events %d, no new data %d, new data %d, read %d %v", first, again, second, len(got), err)
	})
}

func rowSplice(p *loopbackPair) string {
	if _, err := unix.Write(p.snd, pattern(chunk)); err != nil {
		return "send: " + errName(err)
	}
	readable(p.rcv, ioTimeout)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		return errName(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	// Non-blocking, so that a socket whose bytes splice(2) cannot see answers EAGAIN
	// instead of hanging.
	if err := unix.SetNonblock(p.rcv, true); err != nil {
		return errName(err)
	}
	n, err := unix.Splice(p.rcv, nil, pipe[1], nil, chunk, unix.SPLICE_F_NONBLOCK)
	if err != nil {
		return errName(err)
	}
	return fmt.Sprintf("moved %d", n)
}

func rowHalfClose(p *loopbackPair) string {
	want := pattern(chunk)
	_, _ = unix.Write(p.snd, want)
	_ = unix.Shutdown(p.snd, unix.SHUT_WR)
	got, err := readFull(p.rcv, chunk)
	buf := make([]byte, 16)
	n, eofErr := unix.Read(p.rcv, buf)
	_, _ = unix.Write(p.rcv, pattern(10))
	back, backErr := readFull(p.snd, 10)
	return fmt.Sprintf("%s; then read %d %v; reply %d %v", intact(got, err, want), n, eofErr, len(back), backErr)
}

func rowPeerReset(p *loopbackPair) string {
	_, _ = unix.Write(p.snd, pattern(chunk))
	_ = unix.SetsockoptLinger(p.snd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(p.snd)
	p.snd = -1
	time.Sleep(20 * time.Millisecond)
	var out []string
	buf := make([]byte, 2*chunk)
	for i := 0; i < 3; i++ {
		n, err := unix.Read(p.rcv, buf)
		if err != nil {
			out = append(out, errName(err))
			break
		}
		out = append(out, fmt.Sprint(n))
		if n == 0 {
			break
		}
	}
	return fmt.Sprint("reads: ", out)
}

// rowCloseUnread: a receiver that closes with bytes unread resets the connection in TCP,
// so the sender learns they were never read.
func rowCloseUnread(p *loopbackPair) string {
	_, _ = unix.Write(p.snd, pattern(chunk))
	readable(p.rcv, ioTimeout)
	unix.Close(p.rcv)
	p.rcv = -1
	readable(p.snd, ioTimeout)
	buf := make([]byte, 16)
	n, err := unix.Read(p.snd, buf)
	if err != nil {
		return "sender reads " + errName(err)
	}
	return fmt.Sprintf("sender reads %d", n)
}

// rowTwoThreads: one thread blocks reading while another thread writes on the same
// socket, which keeps waking the reader as its send buffer drains; the bytes the reader
// waits for come only after the writer is done.
func rowTwoThreads(p *loopbackPair) string {
	const in, out = 64 << 10, 2 << 20
	if err := unix.SetsockoptInt(p.rcv, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10); err != nil {
		return errName(err)
	}
	read := make(chan string, 1)
	go func() {
		got, err := readFull(p.rcv, in)
		read <- intact(got, err, pattern(in))
	}()
	drained := make(chan int, 1)
	go func() {
		got, _ := readFull(p.snd, out)
		drained <- len(got)
	}()
	msg := pattern(4096)
	for sent := 0; sent < out; sent += len(msg) {
		if _, err := unix.Write(p.rcv, msg); err != nil {
			break
		}
	}
	peerGot := <-drained
	_, _ = unix.Write(p.snd, pattern(in))
	return fmt.Sprintf("reader %s; writer's peer got %d", <-read, peerGot)
}

// rowMemoryBound: a receiver that never reads must stop its sender once the buffers are
// full, as TCP's window does.
func rowMemoryBound(p *loopbackPair) string {
	const limit = 64 << 20
	if err := unix.SetNonblock(p.snd, true); err != nil {
		return errName(err)
	}
	msg := make([]byte, 64<<10)
	for sent := 0; sent < limit; {
		n, err := unix.Write(p.snd, msg)
		if err == unix.EAGAIN {
			return "sender blocked before 64 MiB"
		}
		if err != nil {
			return "sender failed: " + errName(err)
		}
		sent += n
	}
	return "64 MiB accepted without blocking"
}

func getsockoptU64(fd, opt int) (uint64, error) {
	var b [8]byte
	l := uint32(len(b))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, e
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

func netipFrom4(a [4]byte) netip.Addr { return netip.AddrFrom4(a) }
