package sockops

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// The kernel check: splicing changes how a socket behaves, so the agent splices only
// where the running kernel makes a spliced socket indistinguishable from TCP. At start
// it builds loopback connections in a private network namespace where it may, splices them with the
// datapath's own sk_msg program through a private sockhash (attached to no cgroup, so
// nothing else is touched), and runs every behaviour a program may rely on, side by
// side with the same behaviour on plain TCP. Any difference, on any receiver a splice
// creates, turns splicing off. This is the receiver matrix in the README.

// Receivers a splice creates.
const (
	// ReceiverSpliced is a socket whose peer's sends sk_msg moves into its receive
	// queue: Envoy's accepted socket under auto, both ends under on.
	ReceiverSpliced = "spliced"
	// ReceiverInSockhash is a socket in the sockhash that receives over TCP: it must be
	// there so its own sends can be spliced (the app under auto), yet the kernel then
	// reads its TCP bytes through the sockmap code too.
	ReceiverInSockhash = "tcp-in-sockhash"
)

// Finding is one behaviour on one receiver: what the program saw on plain TCP and on
// the spliced connection.
type Finding struct {
	Receiver  string
	Behaviour string
	TCP, Got  string
}

// LikeTCP says whether the receiver behaved as TCP did.
func (f Finding) LikeTCP() bool { return f.Got == f.TCP }

// Report is the outcome of CheckKernel.
type Report struct {
	Findings []Finding
	Err      error // the check could not run (no BPF, no sockhash): nothing is spliced
	// SharedNetns says why the check ran in the caller's network namespace rather than
	// a private one (unshare needs CAP_SYS_ADMIN, which the DaemonSet does not grant):
	// its loopback connections, resets included, then show in that namespace's counters.
	SharedNetns string
}

// Safe says whether every receiver behaved like TCP in every behaviour.
func (r Report) Safe() bool { return r.Err == nil && len(r.Differences()) == 0 }

// Differences lists the findings that were not like TCP.
func (r Report) Differences() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if !f.LikeTCP() {
			out = append(out, f)
		}
	}
	return out
}

// Find returns the finding for a receiver and behaviour.
func (r Report) Find(receiver, behaviour string) (Finding, bool) {
	for _, f := range r.Findings {
		if f.Receiver == receiver && f.Behaviour == behaviour {
			return f, true
		}
	}
	return Finding{}, false
}

// Summary says in one short line why the report is not safe: the behaviours that
// differ, by receiver (the Findings have what each program saw).
func (r Report) Summary() string {
	if r.Err != nil {
		return "the kernel check could not run: " + r.Err.Error()
	}
	var parts []string
	for _, kind := range []string{ReceiverSpliced, ReceiverInSockhash} {
		var rows []string
		for _, f := range r.Differences() {
			if f.Receiver == kind {
				rows = append(rows, f.Behaviour)
			}
		}
		if len(rows) > 0 {
			parts = append(parts, kind+" receiver: "+strings.Join(rows, ", "))
		}
	}
	return strings.Join(parts, "; ")
}

// Behaviours are the rows of the matrix, in order.
func Behaviours() []string {
	out := make([]string, len(behaviours))
	for i, b := range behaviours {
		out[i] = b.name
	}
	return out
}

// CheckKernel runs the matrix. It takes a fraction of a second: the behaviours run
// concurrently, each on connections of its own.
func CheckKernel() Report {
	sp, err := newSplicer()
	if err != nil {
		return Report{Err: err}
	}
	defer sp.close()
	pairs, shared := newPairFactory()
	defer pairs.stop()
	type result struct {
		i    int
		f    Finding
		err  error
		kind string
	}
	kinds := []string{ReceiverSpliced, ReceiverInSockhash}
	results := make(chan result, len(behaviours)*len(kinds))
	var wg sync.WaitGroup
	for i, b := range behaviours {
		for _, kind := range kinds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := Finding{Receiver: kind, Behaviour: b.name}
				var errs [2]error
				var done sync.WaitGroup
				done.Add(2)
				go func() { defer done.Done(); f.TCP, errs[0] = observe(b, sp, pairs, "") }()
				go func() { defer done.Done(); f.Got, errs[1] = observe(b, sp, pairs, kind) }()
				done.Wait()
				results <- result{i: i, f: f, err: errors.Join(errs[:]...), kind: kind}
			}()
		}
	}
	wg.Wait()
	close(results)
	byRow := make([][]Finding, len(behaviours))
	var errs []error
	for r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s on %s receiver: %w", r.f.Behaviour, r.kind, r.err))
		}
		byRow[r.i] = append(byRow[r.i], r.f)
	}
	rep := Report{SharedNetns: shared}
	for _, fs := range byRow {
		for _, kind := range kinds { // a stable order: spliced first
			for _, f := range fs {
				if f.Receiver == kind {
					rep.Findings = append(rep.Findings, f)
				}
			}
		}
	}
	rep.Err = errors.Join(errs...)
	return rep
}

// observe runs one behaviour on a fresh loopback connection, spliced as kind says ("" =
// plain TCP), and returns what the program saw.
func observe(b behaviour, sp *splicer, pairs *pairFactory, kind string) (string, error) {
	p, err := pairs.pair()
	if err != nil {
		return "", err
	}
	defer p.close()
	switch kind {
	case ReceiverSpliced:
		err = sp.splice(p.snd, p.rcv, true)
	case ReceiverInSockhash:
		err = sp.splice(p.snd, p.rcv, false)
	}
	if err != nil {
		return "", err
	}
	return b.run(p), nil
}

// splicer is a private copy of the datapath's sk_msg program and the maps it reads,
// unpinned: sockets are put in its sockhash by hand, as sock_ops would pair them.
type splicer struct {
	objs struct {
		SockMsg    *ebpf.Program `ebpf:"sock_msg"`
		SmSockhash *ebpf.Map     `ebpf:"sm_sockhash"`
		SmPeers    *ebpf.Map     `ebpf:"sm_peers"`
	}
}

func newSplicer() (*splicer, error) {
	spec, err := loadSockops()
	if err != nil {
		return nil, err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
		if m.MaxEntries > 1024 {
			m.MaxEntries = 1024
		}
	}
	sp := &splicer{}
	if err := spec.LoadAndAssign(&sp.objs, nil); err != nil {
		return nil, fmt.Errorf("load sk_msg: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: sp.objs.SmSockhash.FD(), Program: sp.objs.SockMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		sp.close()
		return nil, fmt.Errorf("attach sk_msg: %w", err)
	}
	return sp, nil
}

func (sp *splicer) close() {
	for _, c := range []interface{ Close() error }{sp.objs.SockMsg, sp.objs.SmSockhash, sp.objs.SmPeers} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// splice puts rcv in the sockhash; with spliced, snd too, its sends redirected into
// rcv. Otherwise snd stays plain TCP and rcv is a TCP receiver in the sockhash.
func (sp *splicer) splice(snd, rcv int, spliced bool) error {
	rk, rc, err := keyOf(rcv)
	if err != nil {
		return err
	}
	sk, sc, err := keyOf(snd)
	if err != nil {
		return err
	}
	if err := sp.objs.SmPeers.Put(rk, SplicePeer{Peer: sk, Cookie: rc, PeerCookie: sc, State: uint32(sockopsSpliceStateSPLICE_UNSPLICED)}); err != nil {
		return err
	}
	if err := sp.objs.SmSockhash.Put(rk, uint64(rcv)); err != nil {
		return fmt.Errorf("sockhash: %w", err)
	}
	if !spliced {
		return nil
	}
	if err := sp.objs.SmPeers.Put(sk, SplicePeer{Peer: rk, Cookie: sc, PeerCookie: rc, State: uint32(sockopsSpliceStateSPLICE_ACTIVE)}); err != nil {
		return err
	}
	if err := sp.objs.SmSockhash.Put(sk, uint64(snd)); err != nil {
		return fmt.Errorf("sockhash: %w", err)
	}
	return nil
}

// keyOf is a socket's sockhash key as sk_msg computes it, and its cookie.
func keyOf(fd int) (SockKey, uint64, error) {
	var k SockKey
	la, err := unix.Getsockname(fd)
	if err != nil {
		return k, 0, err
	}
	ra, err := unix.Getpeername(fd)
	if err != nil {
		return k, 0, err
	}
	l, r := la.(*unix.SockaddrInet4), ra.(*unix.SockaddrInet4)
	lAddr, _ := bpf.AddrFrom(netipFrom4(l.Addr))
	rAddr, _ := bpf.AddrFrom(netipFrom4(r.Addr))
	k.T = SockTuple{LocalPort: uint32(l.Port), RemotePort: uint32(r.Port), Family: unix.AF_INET}
	k.T.Local.Addr, k.T.Remote.Addr = lAddr.Addr, rAddr.Addr
	netns, err := getsockoptU64(fd, unix.SO_NETNS_COOKIE)
	if err != nil {
		return k, 0, fmt.Errorf("SO_NETNS_COOKIE: %w", err)
	}
	k.Netns = netns
	cookie, err := getsockoptU64(fd, unix.SO_COOKIE)
	return k, cookie, err
}

// pairFactory makes loopback pairs on one OS thread that moved into a private network
// namespace, so the check's resets and aborted connections never show in the agent's
// namespace (its TCP counters are what operators and tests read). A socket belongs to
// the namespace of the thread that created it, wherever it is used afterwards.
type pairFactory struct {
	reqs chan chan pairResult // nil: make pairs in the caller's namespace
}

type pairResult struct {
	p   *loopbackPair
	err error
}

// newPairFactory returns the factory and, when no private namespace could be had, why.
func newPairFactory() (*pairFactory, string) {
	f := &pairFactory{reqs: make(chan chan pairResult)}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still in the caller's namespace: the thread is reusable
			ready <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		// Never unlocked: the thread exits with this goroutine, and the namespace goes
		// with the last socket in it.
		if err := loopbackUp(); err != nil {
			ready <- fmt.Errorf("bringing up lo in the private namespace: %w", err)
			return
		}
		ready <- nil
		for r := range f.reqs {
			p, err := newLoopbackPair()
			r <- pairResult{p, err}
		}
	}()
	if err := <-ready; err != nil {
		return &pairFactory{}, err.Error()
	}
	return f, ""
}

func (f *pairFactory) pair() (*loopbackPair, error) {
	if f.reqs == nil {
		return newLoopbackPair()
	}
	r := make(chan pairResult, 1)
	f.reqs <- r
	res := <-r
	return res.p, res.err
}

func (f *pairFactory) stop() {
	if f.reqs != nil {
		close(f.reqs)
	}
}

// loopbackUp sets IFF_UP on lo in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// loopbackPair is one TCP connection over 127.0.0.1: snd connected, rcv accepted, both
// blocking with a receive timeout so that no behaviour can hang the check.
type loopbackPair struct{ snd, rcv int }

const ioTimeout = 2 * time.Second

func newLoopbackPair() (*loopbackPair, error) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(ln)
	lo := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := unix.Bind(ln, lo); err != nil {
		return nil, err
	}
	if err := unix.Listen(ln, 1); err != nil {
		return nil, err
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		return nil, err
	}
	p := &loopbackPair{snd: -1, rcv: -1}
	if p.snd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, err
	}
	if err := unix.Connect(p.snd, sa); err != nil {
		p.close()
		return nil, err
	}
	if p.rcv, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC); err != nil {
		p.close()
		return nil, err
	}
	tv := unix.NsecToTimeval(ioTimeout.Nanoseconds())
	for _, fd := range []int{p.snd, p.rcv} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			p.close()
			return nil, err
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			p.close()
			return nil, err
		}
	}
	return p, nil
}

func (p *loopbackPair) close() {
	for _, fd := range []int{p.snd, p.rcv} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	p.snd, p.rcv = -1, -1
}
