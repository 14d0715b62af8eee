package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/sockops"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Splice semantics, end to end: real sockets in the env's cgroup, the agent's sock_ops
// and sk_msg programs splicing them, and the kernel behaviours applications rely on
// (FIONREAD, EOF and half-close, resets, edge-triggered epoll) checked on
// spliced connections. Every test proves from the datapath counters that its
// connections were spliced, so none of them can pass by quietly running over TCP.
//
// Topology: "client" connects to "server", whose addresses are local (an endpoint with
// nodeName = the agent's --node-name), so the pair is spliced across two namespaces as
// an app and Envoy would be. "remote" is an endpoint on another node: connections to it
// are plain TCP, the control that shows what the kernel does without splicing.

const (
	spliceNodeName = "node-1"
	splicePort     = 9100
	spliceEpPort   = 9200
	spliceLoPort   = 9300
)

type spliceEnv struct {
	*harness.Env
	client, server, remote *netlab.Host
}

// spliceYAML makes server's addresses local to this node and remote's not.
func spliceYAML(server, remote *netlab.Host) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: splice, namespace: splicetest}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.40
  clusterIPs: [10.96.0.40, "fd00:96::40"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{name: tcp, port: %d, protocol: TCP}]
`, splicePort)
	for _, fam := range []string{"IPv4", "IPv6"} {
		addr := func(h *netlab.Host) netip.Addr {
			if fam == "IPv6" {
				return h.IPv6
			}
			return h.IPv4
		}
		fmt.Fprintf(&b, `---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: splice-%s, namespace: splicetest, labels: {kubernetes.io/service-name: splice}}
addressType: %s
ports: [{name: tcp, port: %d, protocol: TCP}]
endpoints:
- {addresses: ["%s"], nodeName: %s, conditions: {ready: true}}
- {addresses: ["%s"], nodeName: node-2, conditions: {ready: true}}
`, strings.ToLower(fam), fam, splicePort, addr(server), spliceNodeName, addr(remote))
	}
	return b.String()
}

// newSpliceEnv starts the agent with splicing on for every local pair, and waits until
// the server's addresses are in sm_local (and the remote's are not).
func newSpliceEnv(t *testing.T, extraHosts ...string) *spliceEnv {
	env := harness.NewEnv(t, append([]string{"server", "remote"}, extraHosts...)...)
	e := &spliceEnv{Env: env, client: env.Host("client"), server: env.Host("server"), remote: env.Host("remote")}
	agent := env.StartAgent(t, env.WriteFile(t, "splice.yaml", spliceYAML(e.server, e.remote)),
		"--splice", "on", "--node-name", spliceNodeName)
	forceSplice(t, env, agent)
	deadline := time.Now().Add(10 * time.Second)
	for {
		local := e.localAddrs(t)
		if local[e.server.IPv4] && local[e.server.IPv6] && !local[e.remote.IPv4] && !local[e.remote.IPv6] {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("sm_local never held exactly the server's addresses: %v", local)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// forceSplice turns splicing on in the running datapath through the pinned config, as
// root can. The agent itself keeps it off wherever the kernel check finds spliced
// sockets unlike TCP (sockops.CheckKernel); these tests exercise the pairing machinery
// that would run on a kernel that passes, so they switch it on by hand.
func forceSplice(t *testing.T, env *harness.Env, agent *harness.Agent) {
	t.Helper()
	enabled := agent.Metric(t, "sockmesh_splice_enabled", nil)
	if safe := sockops.CheckKernel().Safe(); enabled != map[bool]float64{true: 1, false: 0}[safe] {
		t.Fatalf("sockmesh_splice_enabled = %v, but the kernel check says safe = %v", enabled, safe)
	}
	c := env.DatapathConfig(t)
	c.Splice = bpf.SpliceOn
	env.SetDatapathConfig(t, c)
}

func (e *spliceEnv) localAddrs(t *testing.T) map[netip.Addr]bool {
	t.Helper()
	maps, err := bpf.OpenPinned(e.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	out := map[netip.Addr]bool{}
	for _, h := range []*netlab.Host{e.server, e.remote} {
		for _, a := range []netip.Addr{h.IPv4, h.IPv6} {
			k, fam := bpf.AddrFrom(a)
			var v uint8
			if maps.SmLocal.Lookup(k, &v) == nil {
				out[k.ToAddr(fam)] = true
			}
		}
	}
	return out
}

// startServer runs splice-server in h on h's addresses (or the given ones).
func (e *spliceEnv) startServer(t *testing.T, h *netlab.Host, listen []netip.AddrPort) *harness.Proc {
	t.Helper()
	if listen == nil {
		listen = spliceAddrs(h, splicePort)
	}
	return e.StartProc(t, harness.SpliceRequest(h, netip.AddrPort{}, harness.SpliceServerParams{Listen: listen}))
}

// run runs scenario p's client end in h against to and decodes its output into out.
func (e *spliceEnv) run(t *testing.T, h *netlab.Host, to netip.AddrPort, timeout time.Duration, out any, p harness.SpliceOp) {
	t.Helper()
	runSplice(t, e.Env, h, to, timeout, out, p)
}

// runSplice runs scenario p's client end in h against to and decodes its output into
// out. The child bounds every socket operation itself; the timeout here only turns a
// hang the child could not catch into a failure (the env's cleanup then kills the
// child).
func runSplice(t *testing.T, env *harness.Env, h *netlab.Host, to netip.AddrPort, timeout time.Duration, out any, p harness.SpliceOp) {
	t.Helper()
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		o, err := env.RunOp(t, harness.SpliceRequest(h, to, p))
		done <- result{o, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("%s %+v in %s: %v\n%s", p.Op(), p, h.Name, r.err, r.out)
		}
		if err := json.Unmarshal(r.out, out); err != nil {
			t.Fatalf("%s %+v output %q: %v", p.Op(), p, r.out, err)
		}
	case <-time.After(timeout):
		t.Fatalf("%s %+v in %s did not finish in %v", p.Op(), p, h.Name, timeout)
	}
}

// spliceReport waits for the server's report of scenario id.
func spliceReport(t *testing.T, p *harness.Proc, id string) harness.SpliceSide {
	t.Helper()
	return spliceReportWithin(t, p, id, 10*time.Second)
}

func spliceReportWithin(t *testing.T, p *harness.Proc, id string, wait time.Duration) harness.SpliceSide {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for _, l := range p.Lines() {
			var r harness.SpliceServerReport
			if json.Unmarshal([]byte(l), &r) == nil && r.ID == id {
				return r.Side
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server never reported %s; it said: %q", id, p.Lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// spliceCounts are the datapath's splice counters at one moment.
type spliceCounts map[string]uint64

func (e *spliceEnv) counts(t *testing.T) spliceCounts {
	t.Helper()
	return spliceCountsOf(t, e.Env)
}

// spliceCountsOf reads env's splice_* datapath counters.
func spliceCountsOf(t *testing.T, env *harness.Env) spliceCounts {
	t.Helper()
	out := spliceCounts{}
	for name, v := range env.Counters(t) {
		if strings.HasPrefix(name, "splice_") {
			out[name] = v
		}
	}
	return out
}

// since is what happened after before.
func (c spliceCounts) since(before spliceCounts) spliceCounts {
	out := spliceCounts{}
	for k, v := range c {
		out[k] = v - before[k]
	}
	return out
}

func (c spliceCounts) String() string {
	var keys []string
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", strings.TrimPrefix(k, "splice_"), c[k]))
	}
	return strings.Join(parts, " ")
}

// requireSpliced fails unless exactly pairs connections were paired and the whole
// payload went through sk_msg redirects: a direction is spliced for its life or not.
func requireSpliced(t *testing.T, d spliceCounts, pairs uint64, payload int64) {
	t.Helper()
	if d["splice_pairs"] != pairs || d["splice_bytes"] < uint64(payload) {
		t.Fatalf("not spliced as expected: want %d pairs and %d spliced bytes; counters: %s", pairs, payload, d)
	}
}

func spliceAddrs(h *netlab.Host, port uint16) []netip.AddrPort {
	return []netip.AddrPort{netip.AddrPortFrom(h.IPv4, port), netip.AddrPortFrom(h.IPv6, port)}
}

// checkSpliceInq checks what both ends saw of the FIONREAD exchange: the client
// received n bytes, the server m. It returns false if anything differed.
func checkSpliceInq(t *testing.T, label string, res map[string]harness.SpliceSide, n, m int) bool {
	t.Helper()
	ok := true
	for _, side := range []struct {
		name string
		want int
	}{{"client", n}, {"server", m}} {
		s := res[side.name]
		switch {
		case s.Err != "" || !s.PatternOK || s.Got != int64(side.want):
			t.Errorf("%s: %s receiving %d bytes: got %d, pattern ok %v, error %q", label, side.name, side.want, s.Got, s.PatternOK, s.Err)
			ok = false
		case s.Peek != side.want:
			t.Errorf("%s: %s: MSG_PEEK saw %d of the %d queued bytes", label, side.name, s.Peek, side.want)
			ok = false
		case s.INQ != side.want || s.INQHalf != side.want-side.want/2:
			t.Errorf("%s: %s: ioctl(SIOCINQ/FIONREAD) = %d with %d bytes queued (MSG_PEEK sees %d), and %d after reading %d (want %d)",
				label, side.name, s.INQ, side.want, s.Peek, s.INQHalf, side.want/2, side.want-side.want/2)
			ok = false
		}
	}
	return ok
}

func TestSpliceFIONREADReportsQueuedBytes(t *testing.T) {
	e := newSpliceEnv(t)
	e.startServer(t, e.server, nil)
	e.startServer(t, e.remote, nil)
	const n, m = 10000, 7000
	fp := harness.FionreadParams{ServerSends: n, ClientSends: m}

	// The same exchange over plain TCP: proves the test measures what the kernel does.
	before := e.counts(t)
	var ctl map[string]harness.SpliceSide
	e.run(t, e.client, netip.AddrPortFrom(e.remote.IPv4, splicePort), 30*time.Second, &ctl, fp)
	if d := e.counts(t).since(before); d["splice_pairs"] != 0 {
		t.Fatalf("the TCP control was spliced: %s", d)
	}
	if !checkSpliceInq(t, "TCP control", ctl, n, m) {
		t.Fatalf("the test is wrong: plain TCP does not pass it: %+v", ctl)
	}

	for _, to := range spliceAddrs(e.server, splicePort) {
		before := e.counts(t)
		var res map[string]harness.SpliceSide
		e.run(t, e.client, to, 30*time.Second, &res, fp)
		d := e.counts(t).since(before)
		requireSpliced(t, d, 1, n+m)
		if checkSpliceInq(t, "spliced "+to.String(), res, n, m) {
			t.Logf("%s: SIOCINQ %d/%d (client), %d/%d (server); counters %s", to, res["client"].INQ, res["client"].INQHalf, res["server"].INQ, res["server"].INQHalf, d)
		} else {
			t.Logf("%s: counters %s", to, d)
		}
	}
}

func TestSpliceStreams1GiBEachWayAtOnce(t *testing.T) {
	e := newSpliceEnv(t)
	srv := e.startServer(t, e.server, nil)
	const size = int64(1) << 30
	const seed = 4242
	before := e.counts(t)
	p := harness.StreamParams{ClientSends: size, ServerSends: size, Seed: seed}
	var cs []harness.SpliceSide
	e.run(t, e.client, netip.AddrPortFrom(e.server.IPv4, splicePort), 150*time.Second, &cs, p)
	if len(cs) != 1 {
		t.Fatalf("%d connections' results, want 1: %+v", len(cs), cs)
	}
	c := cs[0]
	s := spliceReport(t, srv, p.StreamID(0))
	d := e.counts(t).since(before)
	t.Logf("client: sent %d got %d in %v (%.1f Gbit/s both ways); counters %s", c.Sent, c.Got, c.Elapsed,
		float64(c.Sent+c.Got)*8/c.Elapsed.Seconds()/1e9, d)
	for _, x := range []struct {
		name string
		s    harness.SpliceSide
	}{{"client", c}, {"server", s}} {
		if x.s.Sent != size || x.s.Got != size || x.s.End != "EOF" || x.s.Err != "" {
			t.Errorf("%s: sent %d, received %d (want %d each), reading ended with %q, error %q", x.name, x.s.Sent, x.s.Got, size, x.s.End, x.s.Err)
		}
	}
	if c.SentSHA != s.RecvSHA {
		t.Errorf("client → server: sent sha256 %s, server received %s", c.SentSHA, s.RecvSHA)
	}
	if s.SentSHA != c.RecvSHA {
		t.Errorf("server → client: sent sha256 %s, client received %s", s.SentSHA, c.RecvSHA)
	}
	requireSpliced(t, d, 1, 2*size)
	if d["splice_fallback_sent_early"] != 0 {
		t.Errorf("a direction fell back to TCP: %s", d)
	}
}

func TestSpliceHalfCloseAndCloseDeliverEOFAfterTheData(t *testing.T) {
	e := newSpliceEnv(t)
	srv := e.startServer(t, e.server, nil)
	const a, b, c, d = 300007, 200003, 250001, 150001
	for _, to := range spliceAddrs(e.server, splicePort) {
		t.Run(to.Addr().String(), func(t *testing.T) {
			before := e.counts(t)
			var res map[string]harness.SpliceSide
			e.run(t, e.client, to, 30*time.Second, &res,
				harness.HalfCloseParams{ClientSends: a, ServerReplies: b, ServerSends: c, ClientReplies: d})
			hcc := spliceReport(t, srv, "hc-client-"+to.Addr().String())
			hcs := spliceReport(t, srv, "hc-server-"+to.Addr().String())
			cnt := e.counts(t).since(before)
			requireSpliced(t, cnt, 2, a+b+c+d)

			// Client half-closes: the server reads all a bytes, then EOF; its b bytes
			// back still arrive; its close() is EOF for the client after them.
			if hcc.Got != a || !hcc.PatternOK || hcc.End != "EOF" || hcc.Err != "" {
				t.Errorf("after the client's shutdown(SHUT_WR) the server read %d of %d bytes (pattern ok %v), then %q; error %q",
					hcc.Got, a, hcc.PatternOK, hcc.End, hcc.Err)
			}
			if r := res["hc-client"]; r.Got != b || !r.PatternOK || r.End != "EOF" || r.Err != "" {
				t.Errorf("the half-closed client read %d of the server's %d bytes (pattern ok %v), then %q (want EOF at close); error %q",
					r.Got, b, r.PatternOK, r.End, r.Err)
			}
			// Server half-closes: the client reads c bytes, then EOF; its d bytes still
			// reach the server, and its close() is EOF for the server after them.
			if r := res["hc-server"]; r.Got != c || !r.PatternOK || r.End != "EOF" || r.Err != "" {
				t.Errorf("after the server's shutdown(SHUT_WR) the client read %d of %d bytes (pattern ok %v), then %q; error %q",
					r.Got, c, r.PatternOK, r.End, r.Err)
			}
			if hcs.Got != d || !hcs.PatternOK || hcs.End != "EOF" || hcs.Err != "" {
				t.Errorf("the half-closed server read %d of the client's %d bytes (pattern ok %v), then %q (want EOF at close); error %q",
					hcs.Got, d, hcs.PatternOK, hcs.End, hcs.Err)
			}
			t.Logf("counters %s", cnt)
		})
	}
}

func TestSplice1000ConcurrentConnections(t *testing.T) {
	e := newSpliceEnv(t)
	e.startServer(t, e.server, nil)
	const conns, msgs = 1000, 5
	before := e.counts(t)
	var res harness.SpliceCountResult
	e.run(t, e.client, netip.AddrPortFrom(e.server.IPv4, splicePort), 90*time.Second, &res, harness.ManyParams{Conns: conns, Messages: msgs})
	d := e.counts(t).since(before)
	t.Logf("%d connections open at once, %d/%d echoes in %v; counters %s", res.MaxOpen, res.OK, res.Expected, res.Elapsed, d)
	if res.Conns != conns || res.OK != conns*msgs || len(res.Errors) > 0 {
		t.Fatalf("%d of %d connections, %d of %d echoes right; first errors: %q", res.Conns, conns, res.OK, conns*msgs, res.Errors)
	}
	// Both directions of every message: the greeting makes every pair ready before
	// the client's first send, so nothing falls back.
	requireSpliced(t, d, conns, 2*res.Bytes)
	if d["splice_fallback_sent_early"] != 0 || d["splice_fallback_map_full"] != 0 {
		t.Fatalf("fallbacks among 1000 connections: %s", d)
	}
}

func TestSpliceAbortIsSeenByThePeerPromptly(t *testing.T) {
	e := newSpliceEnv(t)
	srv := e.startServer(t, e.server, nil)
	p := harness.AbortParams{ServerReads: 64 << 10, ServerIdle: 300 * time.Millisecond, ClientReads: 256 << 10}
	before := e.counts(t)
	var res map[string]harness.SpliceSide
	e.run(t, e.client, netip.AddrPortFrom(e.server.IPv4, splicePort), 60*time.Second, &res, p)
	srvSide := map[string]harness.SpliceSide{}
	for _, id := range []string{"A", "B", "C", "D"} {
		srvSide[id] = spliceReport(t, srv, id)
	}
	d := e.counts(t).since(before)
	t.Logf("counters %s", d)
	requireSpliced(t, d, 4, p.ServerReads+p.ClientReads)

	const bound = 3 * time.Second
	lag := func(from, to int64) time.Duration { return time.Duration(to - from) }
	resetOrPipe := func(s string) bool { return s == "ECONNRESET" || s == "EPIPE" }
	resetOrEOF := func(s string) bool { return s == "ECONNRESET" || s == "EOF" }

	// A: the server aborts while the client sends.
	a, as := res["A"], srvSide["A"]
	t.Logf("A: client sent %d bytes, then %q %v after the server's abort", a.Sent, a.Err, lag(as.At, a.At))
	if !resetOrPipe(a.Err) || lag(as.At, a.At) > bound {
		t.Errorf("A: the sending client got %q %v after the server's SO_LINGER 0 close (want ECONNRESET or EPIPE within %v)", a.Err, lag(as.At, a.At), bound)
	}
	// B: the server aborts while the client waits in read.
	b, bs := res["B"], srvSide["B"]
	t.Logf("B: client read ended with %q %v after the abort; a later write: %q", b.End, lag(bs.At, b.At), b.LaterWrite)
	if !resetOrEOF(b.End) || lag(bs.At, b.At) > bound {
		t.Errorf("B: the reading client got %q %v after the server's abort (want ECONNRESET or EOF within %v)", b.End, lag(bs.At, b.At), bound)
	}
	if !resetOrPipe(b.LaterWrite) {
		t.Errorf("B: writes after the reset: %q (want ECONNRESET or EPIPE)", b.LaterWrite)
	}
	// C: the client aborts while the server sends.
	c, cs := res["C"], srvSide["C"]
	t.Logf("C: server sent %d bytes, then %q %v after the client's abort", cs.Sent, cs.Err, lag(c.At, cs.At))
	if !resetOrPipe(cs.Err) || lag(c.At, cs.At) > bound {
		t.Errorf("C: the sending server got %q %v after the client's abort (want ECONNRESET or EPIPE within %v)", cs.Err, lag(c.At, cs.At), bound)
	}
	// D: the client aborts while the server waits in read.
	dd, ds := res["D"], srvSide["D"]
	t.Logf("D: server read %d bytes, then %q %v after the abort; a later write: %q", ds.Got, ds.End, lag(dd.At, ds.At), ds.LaterWrite)
	if !resetOrEOF(ds.End) || lag(dd.At, ds.At) > bound {
		t.Errorf("D: the reading server got %q %v after the client's abort (want ECONNRESET or EOF within %v)", ds.End, lag(dd.At, ds.At), bound)
	}
	if !resetOrPipe(ds.LaterWrite) {
		t.Errorf("D: writes after the reset: %q (want ECONNRESET or EPIPE)", ds.LaterWrite)
	}
}

func TestSpliceEdgeTriggeredEpollServerNeverStalls(t *testing.T) {
	e := newSpliceEnv(t)
	to := netip.AddrPortFrom(e.server.IPv4, spliceEpPort)
	srv := e.StartProc(t, harness.SpliceRequest(e.server, netip.AddrPort{}, harness.EpollServerParams{Listen: to}))
	const conns, rounds = 8, 300
	before := e.counts(t)
	var res harness.SpliceCountResult
	e.run(t, e.client, to, 90*time.Second, &res, harness.EpollParams{Conns: conns, Rounds: rounds})
	d := e.counts(t).since(before)
	t.Logf("%d connections, %d/%d responses (%d bytes) in %v; counters %s", res.Conns, res.OK, res.Expected, res.Bytes, res.Elapsed, d)
	time.Sleep(100 * time.Millisecond) // let the server log its closed connections
	for _, l := range srv.Lines() {
		t.Logf("server: %s", l)
	}
	if res.Conns != conns || res.OK != res.Expected || res.Expected == 0 || len(res.Errors) > 0 {
		t.Fatalf("%d of %d connections, %d of %d responses; first errors: %q", res.Conns, conns, res.OK, res.Expected, res.Errors)
	}
	requireSpliced(t, d, conns, res.Bytes)
}

func TestSpliceLoopbackTuplesNeverCrossNamespaces(t *testing.T) {
	e := newSpliceEnv(t, "ns-a", "ns-b")
	hosts := []*netlab.Host{e.Host("ns-a"), e.Host("ns-b")}
	lo := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), spliceLoPort),
		netip.AddrPortFrom(netip.IPv6Loopback(), spliceLoPort)}
	for _, h := range hosts {
		e.startServer(t, h, lo)
	}
	// Both namespaces listen on the same loopback address and their clients connect
	// from the same fixed source port: identical 4-tuples, live at the same time (the
	// clients' first connections wait for each other at a barrier), then reused by
	// reconnecting over and over. Every answer must come from the client's own
	// namespace. The servers close a finished connection 30ms late, as a busy server
	// gets round to it, so the reused tuple's new connection overlaps the old server
	// socket every time rather than when the scheduler happens to allow it.
	const iterations, asks, closeDelay = 150, 3, 30 * time.Millisecond
	for i, to := range lo {
		t.Run(to.Addr().String(), func(t *testing.T) {
			local := netip.AddrPortFrom(to.Addr(), uint16(40000+i))
			barrier := filepath.Join(e.Dir, "barrier-"+itoa(i))
			if err := os.Mkdir(barrier, 0o755); err != nil {
				t.Fatal(err)
			}
			before := e.counts(t)
			results := make([]harness.SpliceCountResult, len(hosts))
			done := make(chan int, len(hosts))
			for k, h := range hosts {
				go func() {
					defer func() { done <- k }()
					// Off the test goroutine: report through the result, never t.Fatal.
					out, err := e.RunOp(t, harness.SpliceRequest(h, to, harness.LoopParams{Local: local, Iterations: iterations, Asks: asks,
						Barrier: barrier, Peers: []string{"ns-a", "ns-b"}, CloseDelay: closeDelay}))
					if err == nil {
						err = json.Unmarshal(out, &results[k])
					}
					if err != nil {
						results[k].Errors = append(results[k].Errors, fmt.Sprintf("client: %v %s", err, out))
					}
				}()
			}
			timeout := time.After(60 * time.Second)
			for range hosts {
				select {
				case <-done:
				case <-timeout:
					t.Fatal("the loopback clients did not finish in 60s")
				}
			}
			d := e.counts(t).since(before)
			for k, h := range hosts {
				r := results[k]
				t.Logf("%s: %d connections from %s, %d/%d answers from the right server, in %v", h.Name, r.Conns, local, r.OK, r.Expected, r.Elapsed)
				if r.Conns != iterations || r.OK != r.Expected || len(r.Errors) > 0 {
					t.Errorf("%s: %d of %d connections, %d of %d greetings and answers from its own server; first errors: %q",
						h.Name, r.Conns, iterations, r.OK, r.Expected, r.Errors)
				}
			}
			t.Logf("counters %s", d)
			// Beyond correctness, every connection must have been spliced, and stayed
			// spliced: every message (greeting, command, asks, answers) went by sk_msg.
			conns := uint64(len(hosts) * iterations)
			msgs := conns * (2 + 2*asks)
			if d["splice_pairs"] != conns {
				t.Errorf("%d of %d connections were paired (%d refused on a sequence mismatch); counters %s",
					d["splice_pairs"], conns, d["splice_fallback_seq_mismatch"], d)
			}
			if d["splice_fallback_peer_gone"] != 0 {
				t.Errorf("%d sends fell back to TCP because their peer was marked gone, though every send happens before "+
					"either end closes: a closing socket marked a newer pair with the same 4-tuple; counters %s", d["splice_fallback_peer_gone"], d)
			}
			if d["splice_messages"] < msgs {
				t.Errorf("%d of the %d messages of these connections were spliced; counters %s", d["splice_messages"], msgs, d)
			}
		})
	}
}
