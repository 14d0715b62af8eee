package tests

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Acceptance "A slow relay": an app streams through an L7 service, so through the node
// proxy, to a backend that echoes, while reading the echo back; and downloads from a
// backend that only sends. Every byte is checked by sha256 in both directions of every
// hop, in every splice mode, with no resets and no errors.
//
// The proxy is the harness relay (harness.StartRelay): each direction reads with a
// 64 KiB buffer, one read(2) at a time, and writes that chunk upstream in full before it
// reads again (io.CopyBuffer with ReaderFrom/WriterTo hidden, so never splice(2)),
// which is the slow relay of the acceptance: no variant needed.
//
// Topology: "client" runs the app, "node" the relay (agent --envoy-redirect, dialling
// with the Envoy mark), "backend" the splice-server; the backend is the service's only
// endpoint and on this node (nodeName = --node-name), so every local pair is a splice
// candidate in the modes that splice.

const (
	srNodeName  = "node-1"
	srPort      = 9400
	srRelayPort = 15001
	srReps      = 20
)

var (
	srVIP   = netip.MustParseAddr("10.96.0.60")
	srSizes = []int64{1 << 20, 16 << 20, 256 << 20}
	// everyMode is every --splice mode the agent takes.
	everyMode = []string{"off", "auto", "on"}
)

func srYAML(backend *netlab.Host) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: slowrelay, namespace: slowrelay, annotations: {sockmesh.io/l7: "true"}}
spec:
  type: ClusterIP
  clusterIP: %[1]s
  clusterIPs: [%[1]s]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports: [{name: tcp, port: %[2]d, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: slowrelay-ipv4, namespace: slowrelay, labels: {kubernetes.io/service-name: slowrelay}}
addressType: IPv4
ports: [{name: tcp, port: %[2]d, protocol: TCP}]
endpoints:
- {addresses: ["%[3]s"], nodeName: %[4]s, conditions: {ready: true}}
`, srVIP, srPort, backend.IPv4, srNodeName)
}

func TestSlowRelayEchoAndDownloadEveryMode(t *testing.T) {
	harness.RequirePrivileged(t)
	start := time.Now()
	for _, mode := range everyMode {
		t.Run(mode, func(t *testing.T) { slowRelayMode(t, mode) })
	}
	t.Logf("all modes: %v", time.Since(start).Round(time.Millisecond))
}

func slowRelayMode(t *testing.T, mode string) {
	start := time.Now()
	env := harness.NewEnv(t, "node", "backend")
	client, node, backend := env.Host("client"), env.Host("node"), env.Host("backend")
	relayListen := []netip.AddrPort{netip.AddrPortFrom(node.IPv4, srRelayPort)}
	a := env.StartAgent(t, env.WriteFile(t, "slowrelay.yaml", srYAML(backend)),
		"--splice", mode, "--node-name", srNodeName,
		"--envoy-redirect", relayListen[0].String(), "--envoy-mark", fmt.Sprintf("%#x", agent.DefaultEnvoyMark))
	splicing := a.Metric(t, "sockmesh_splice_enabled", nil)
	relay := env.StartRelay(t, node, relayListen, agent.DefaultEnvoyMark)
	waitSmLocal(t, env, backend.IPv4)
	srv := env.StartProc(t, harness.SpliceRequest(backend, netip.AddrPort{},
		harness.SpliceServerParams{Listen: []netip.AddrPort{netip.AddrPortFrom(backend.IPv4, srPort)}}))
	to := netip.AddrPortFrom(srVIP, srPort)
	hosts := []*netlab.Host{client, node, backend}
	tcpBefore := tcpStats(t, hosts)
	countsBefore := spliceCountsOf(t, env)
	redirectsBefore := counter(t, env, "redirect")
	setup := time.Since(start)

	var runs int
	var bytes int64
	for i, size := range srSizes {
		// Upload with the echo coming back: both directions of both hops at once.
		ep := harness.EchoStreamParams{Size: size, Seed: uint64(1_000_000 * (i + 1)), Reps: srReps}
		var echo []harness.SpliceSide
		t0 := time.Now()
		runSplice(t, env, client, to, 3*time.Minute, &echo, ep)
		upTook := time.Since(t0)
		if len(echo) != srReps {
			t.Fatalf("echo %d: %d results, want %d", size, len(echo), srReps)
		}
		for rep, c := range echo {
			s := spliceReportWithin(t, srv, ep.EchoID(rep), 30*time.Second)
			label := fmt.Sprintf("echo %d bytes, run %d", size, rep)
			if c.Sent != size || c.Got != size || c.End != "EOF" || c.Err != "" {
				t.Errorf("%s: client sent %d and got back %d (want %d each), reading ended %q, error %q", label, c.Sent, c.Got, size, c.End, c.Err)
			}
			if s.Got != size || s.Sent != size || s.End != "EOF" || s.Err != "" {
				t.Errorf("%s: backend received %d and echoed %d (want %d each), reading ended %q, error %q", label, s.Got, s.Sent, size, s.End, s.Err)
			}
			if c.SentSHA != s.RecvSHA || s.SentSHA != c.RecvSHA {
				t.Errorf("%s: client → backend sha256 %s → %s; backend → client %s → %s", label, c.SentSHA, s.RecvSHA, s.SentSHA, c.RecvSHA)
			}
			bytes += c.Sent + c.Got
		}
		// Download: the backend sends, the client only reads (and half-closes at once).
		dp := harness.StreamParams{ServerSends: size, Seed: uint64(1_000_000*(i+1) + 500_000), Reps: srReps}
		var down []harness.SpliceSide
		t0 = time.Now()
		runSplice(t, env, client, to, 3*time.Minute, &down, dp)
		downTook := time.Since(t0)
		if len(down) != srReps {
			t.Fatalf("download %d: %d results, want %d", size, len(down), srReps)
		}
		for rep, c := range down {
			s := spliceReportWithin(t, srv, dp.StreamID(rep), 30*time.Second)
			label := fmt.Sprintf("download %d bytes, run %d", size, rep)
			if c.Got != size || c.End != "EOF" || c.Err != "" || s.Sent != size || s.Got != 0 || s.End != "EOF" || s.Err != "" {
				t.Errorf("%s: backend sent %d (error %q, its reading ended %q after %d bytes), client got %d (want %d), reading ended %q, error %q",
					label, s.Sent, s.Err, s.End, s.Got, c.Got, size, c.End, c.Err)
			}
			if s.SentSHA != c.RecvSHA {
				t.Errorf("%s: backend → client sha256 %s → %s", label, s.SentSHA, c.RecvSHA)
			}
			bytes += c.Got
		}
		runs += 2 * srReps
		t.Logf("%d MiB × %d: echo in %v (%.0f MB/s each way), download in %v (%.0f MB/s)", size>>20, srReps,
			upTook.Round(time.Millisecond), float64(size*srReps)/upTook.Seconds()/1e6,
			downTook.Round(time.Millisecond), float64(size*srReps)/downTook.Seconds()/1e6)
		if t.Failed() {
			t.FailNow() // the first size that fails says enough
		}
	}

	// Every connection went through the relay, which found the ClusterIP.
	evs := relay.Events(t)
	if len(evs) != runs {
		t.Errorf("the relay saw %d connections, want %d", len(evs), runs)
	}
	for _, ev := range evs {
		if ev.OrigDst != to.String() || ev.Errno != "" {
			t.Errorf("relay event %+v: want SO_ORIGINAL_DST %s", ev, to)
			break
		}
	}
	if r := counter(t, env, "redirect") - redirectsBefore; r != uint64(runs) {
		t.Errorf("%d connects redirected to the relay, want %d", r, runs)
	}
	tcp := tcpStats(t, hosts).since(tcpBefore)
	// The client's ActiveOpens show these are its namespace's counters, not another's.
	if tcp["client"]["ActiveOpens"] != int64(runs) {
		t.Errorf("the client's namespace counted %d active opens, want %d", tcp["client"]["ActiveOpens"], runs)
	}
	for _, h := range hosts {
		n, detail := connectionResets(tcp[h.Name])
		if n != 0 {
			t.Errorf("%s: %d connections reset in its namespace (%s)", h.Name, n, detail)
		} else if tcp[h.Name]["OutRsts"] != 0 {
			t.Logf("%s: no connection reset; RSTs answered stray segments (%s)", h.Name, detail)
		}
	}
	d := spliceCountsOf(t, env).since(countsBefore)
	t.Logf("--splice %s: sockmesh_splice_enabled %v; %d runs, %d payload bytes in %v (setup %v); TCP OutRsts client %d node %d backend %d; splice counters: %s",
		mode, splicing, runs, bytes, time.Since(start).Round(time.Millisecond), setup.Round(time.Millisecond),
		tcp["client"]["OutRsts"], tcp["node"]["OutRsts"], tcp["backend"]["OutRsts"], d)
	if splicing == 0 && d["splice_pairs"] != 0 {
		t.Errorf("sockmesh_splice_enabled is 0, yet %d connections were paired: %s", d["splice_pairs"], d)
	}
}

// waitSmLocal waits until the datapath knows addr is on this node: before that, no
// mode would consider its connections for splicing.
func waitSmLocal(t *testing.T, env *harness.Env, addr netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		maps, err := bpf.OpenPinned(env.BPFFS)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := bpf.AddrFrom(addr)
		var v uint8
		found := maps.SmLocal.Lookup(k, &v) == nil
		maps.Close()
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sm_local never held %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hostTCP is each host's TCP counters: /proc/net/snmp's Tcp (OutRsts, EstabResets, ...)
// and /proc/net/netstat's TcpExt, the latter as "TcpExt.<name>".
type hostTCP map[string]map[string]int64

func (h hostTCP) since(before hostTCP) hostTCP {
	out := hostTCP{}
	for host, m := range h {
		out[host] = map[string]int64{}
		for k, v := range m {
			out[host][k] = v - before[host][k]
		}
	}
	return out
}

// abortCounters are the TcpExt counters of connections the kernel reset on a live
// socket: an app closing with unread data, lingering 0, memory, timeouts.
var abortCounters = []string{"TCPAbortOnData", "TCPAbortOnClose", "TCPAbortOnMemory", "TCPAbortOnTimeout", "TCPAbortOnLinger", "TCPAbortFailed"}

// connectionResets counts, from a delta, the connections that were reset: established
// ones reset by a peer (EstabResets) and live ones the kernel aborted. OutRsts is not
// among them: it also counts the RSTs a stack sends in answer to a stray segment for a
// socket that no longer exists (a late retransmission after close, a SYN that meets a
// TIME_WAIT), which reset nothing; detail names it with every nonzero TcpExt counter so
// such a case can be told apart in the log.
func connectionResets(delta map[string]int64) (n int64, detail string) {
	n = delta["EstabResets"]
	for _, c := range abortCounters {
		n += delta["TcpExt."+c]
	}
	parts := []string{fmt.Sprintf("OutRsts %d, EstabResets %d", delta["OutRsts"], delta["EstabResets"])}
	var ext []string
	for k, v := range delta {
		if strings.HasPrefix(k, "TcpExt.") && v != 0 {
			ext = append(ext, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "TcpExt."), v))
		}
	}
	sort.Strings(ext)
	return n, strings.Join(append(parts, ext...), ", ")
}

// tcpStats reads each host's counters from a thread inside its namespace (thread-self:
// /proc/self/net is the main thread's namespace, not this one's).
func tcpStats(t *testing.T, hosts []*netlab.Host) hostTCP {
	t.Helper()
	out := hostTCP{}
	for _, h := range hosts {
		tcp := map[string]int64{}
		if err := h.Do(func() error {
			return errors.Join(readCounters("/proc/thread-self/net/snmp", "Tcp:", "", tcp),
				readCounters("/proc/thread-self/net/netstat", "TcpExt:", "TcpExt.", tcp))
		}); err != nil {
			t.Fatal(err)
		}
		out[h.Name] = tcp
	}
	return out
}

// readCounters parses the header and value lines of one section (such as "Tcp:") of an
// snmp-style file into out, each name prefixed.
func readCounters(path, section, prefix string, out map[string]int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var lines [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 0 && fields[0] == section {
			lines = append(lines, fields[1:])
		}
	}
	if len(lines) != 2 || len(lines[0]) != len(lines[1]) {
		return fmt.Errorf("%s: no %s header and values", path, section)
	}
	for i, k := range lines[0] {
		out[prefix+k], _ = strconv.ParseInt(lines[1][i], 10, 64)
	}
	return nil
}
