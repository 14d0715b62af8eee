package tests

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

const relayPort = 15001

var (
	plain4 = netip.MustParseAddr("10.96.0.20")
	plain6 = netip.MustParseAddr("fd00:96::20")
)

// l7YAML is the demo service marked L7, plus the same backends as a plain service.
func l7YAML(backends []*netlab.Host) string {
	web := netlab.ServiceYAML("demo", "web", backends)
	web = strings.Replace(web, "metadata: {name: web, namespace: demo}", "metadata: {name: web, namespace: demo, annotations: {sockmesh.io/l7: \"true\"}}", 1)
	plain := netlab.ServiceYAML("demo", "plain", backends)
	plain = strings.ReplaceAll(plain, netlab.ClusterIPv4.String(), plain4.String())
	plain = strings.ReplaceAll(plain, netlab.ClusterIPv6.String(), plain6.String())
	return web + "---\n" + plain
}

type l7Env struct {
	*harness.Env
	agent  *harness.Agent
	relay  *harness.Proc
	listen []netip.AddrPort
}

func newL7Env(t *testing.T, extraAgentFlags ...string) *l7Env {
	if s := os.Getenv("SPLICE"); s != "" {
		extraAgentFlags = append(extraAgentFlags, "--splice", s)
	}
	env := harness.NewEnv(t, "node", "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	node := env.Host("node")
	listen := []netip.AddrPort{netip.AddrPortFrom(node.IPv4, relayPort), netip.AddrPortFrom(node.IPv6, relayPort)}
	flags := append([]string{"--envoy-redirect", listen[0].String() + "," + listen[1].String(),
		"--envoy-mark", "0x539", "--node-name", "node-1"}, extraAgentFlags...)
	a := env.StartAgent(t, env.WriteFile(t, "svc.yaml", l7YAML(env.Hosts("backend-1", "backend-2"))), flags...)
	return &l7Env{Env: env, agent: a, listen: listen}
}

func (e *l7Env) startRelay(t *testing.T) {
	e.relay = e.StartRelay(t, e.Host("node"), e.listen, agent.DefaultEnvoyMark)
}

func counter(t testing.TB, env *harness.Env, name string) uint64 {
	t.Helper()
	v, ok := env.Counters(t)[name]
	if !ok {
		t.Fatalf("no counter %s", name)
	}
	return v
}

func TestL7ServiceGoesThroughTheRelayWhichFindsTheClusterIP(t *testing.T) {
	env := newL7Env(t)
	env.startRelay(t)
	client := env.Host("client")
	const n = 40
	for _, vip := range []netip.Addr{vip4, vip6} {
		res := env.Run(t, client, "tcp", tcpTo(vip), n)
		if len(res.Errors) > 0 {
			t.Fatalf("%s: %v\nrelay saw %+v", vip, res.Errors[0], env.relay.Events(t))
		}
		seen := backendsSeen(res)
		if seen["backend-1"]+seen["backend-2"] != n || seen["backend-1"] == 0 || seen["backend-2"] == 0 {
			t.Fatalf("%s through the relay: %v", vip, seen)
		}
		for _, a := range res.TCP {
			if a.Peer != tcpTo(vip) {
				t.Fatalf("the app's getpeername() = %s, want the ClusterIP %s", a.Peer, tcpTo(vip))
			}
		}
	}
	evs := env.relay.Events(t)
	if len(evs) != 2*n {
		t.Fatalf("the relay saw %d connections, want %d: %+v", len(evs), 2*n, evs)
	}
	for _, ev := range evs {
		want := map[string]bool{tcpTo(vip4).String(): true, tcpTo(vip6).String(): true}
		if !want[ev.OrigDst] || ev.Errno != "" {
			t.Fatalf("relay event %+v: SO_ORIGINAL_DST should give the ClusterIP", ev)
		}
		if up := netip.MustParseAddrPort(ev.Upstream); up != netip.MustParseAddrPort(ev.OrigDst) {
			t.Fatalf("relay upstream getpeername %s, want the ClusterIP %s", up, ev.OrigDst)
		}
	}
	// The relay's own upstream connects were load-balanced, not redirected again.
	if r, x := counter(t, env.Env, "redirect"), counter(t, env.Env, "xlate_tcp4")+counter(t, env.Env, "xlate_tcp6"); r != 2*n || x != 2*n {
		t.Fatalf("redirects %d and translations %d, want %d each", r, x, 2*n)
	}
	if hit := counter(t, env.Env, "origdst_hit"); hit != 2*n {
		t.Fatalf("origdst_hit %d, want %d", hit, 2*n)
	}
	// The same, as operators see it: metrics and `sockmesh status`.
	if m := env.agent.Metric(t, "sockmesh_redirects_total", map[string]string{"result": "ok"}); m != 2*n {
		t.Fatalf("sockmesh_redirects_total{result=ok} = %v, want %d", m, 2*n)
	}
	if m := env.agent.Metric(t, "sockmesh_origdst_lookups_total", map[string]string{"result": "hit"}); m != 2*n {
		t.Fatalf("sockmesh_origdst_lookups_total{result=hit} = %v, want %d", m, 2*n)
	}
	// auto splices app -> relay where the kernel's spliced sockets behave like TCP
	// (every redirected connection is paired), and nothing where they do not.
	want := 0.0
	if env.agent.Metric(t, "sockmesh_splice_enabled", nil) == 1 {
		want = 2 * n
	}
	if m := env.agent.Metric(t, "sockmesh_splice_total", map[string]string{"what": "pairs"}); m != want {
		t.Fatalf("sockmesh_splice_total{what=pairs} = %v, want %v", m, want)
	}
	out := env.CLI(t, "status")
	if !strings.Contains(out, "redirect ") || !strings.Contains(out, "splice_bytes") {
		t.Fatalf("sockmesh status does not show redirect and splice counters:\n%s", out)
	}
	if wantLine := map[bool]string{true: "splicing  auto", false: "splicing  off"}[want != 0]; !strings.Contains(out, wantLine) {
		t.Fatalf("sockmesh status does not say %q:\n%s", wantLine, out)
	}
}

func TestPlainServiceFromTheSameAppSkipsTheRelay(t *testing.T) {
	env := newL7Env(t)
	env.startRelay(t)
	res := env.Run(t, env.Host("client"), "tcp", netip.AddrPortFrom(plain4, netlab.ServiceHTTPPort), 20)
	if len(res.Errors) > 0 || len(res.TCP) != 20 {
		t.Fatalf("plain service: %+v", res)
	}
	if evs := env.relay.Events(t); len(evs) != 0 {
		t.Fatalf("the relay saw connections for a plain service: %+v", evs)
	}
	if r := counter(t, env.Env, "redirect"); r != 0 {
		t.Fatalf("redirect counter %d for a plain service", r)
	}
}

// originalDstOutsideSockmesh reads SO_ORIGINAL_DST on a connection accepted in the node
// namespace by the test process itself, which is outside the test cgroup: what the
// kernel answers without sockmesh.
func originalDstOutsideSockmesh(t *testing.T, node, client *netlab.Host, port uint16, v6 bool) string {
	t.Helper()
	addr, network := node.IPv4, "tcp4"
	if v6 {
		addr, network = node.IPv6, "tcp6"
	}
	var ln net.Listener
	if err := node.Do(func() (err error) { ln, err = net.Listen(network, netip.AddrPortFrom(addr, port).String()); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		_ = client.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, port).String(), 3*time.Second)
			if err == nil {
				time.Sleep(100 * time.Millisecond)
				c.Close()
			}
			return err
		})
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := harness.OriginalDst(c.(*net.TCPConn)); err != nil {
		return harness.ErrnoName(err)
	}
	return "no error"
}

func TestOriginalDstOfAnUnredirectedSocketIsWhatTheKernelSays(t *testing.T) {
	env := newL7Env(t)
	env.startRelay(t)
	for i, relayAddr := range env.listen {
		// Dial the relay directly: nothing redirected this connection.
		res := env.Run(t, env.Host("client"), "tcp", relayAddr, 1)
		if len(res.TCP) != 0 {
			t.Fatalf("a direct connection to the relay got an answer: %+v", res)
		}
		evs := env.relay.Events(t)
		ev := evs[len(evs)-1]
		kernel := originalDstOutsideSockmesh(t, env.Host("node"), env.Host("client"), relayPort+1, i == 1)
		if ev.OrigDst != "" || ev.Errno == "" {
			t.Fatalf("SO_ORIGINAL_DST on an unredirected socket answered %+v", ev)
		}
		if kernel != ev.Errno {
			t.Fatalf("with sockmesh: %s; without: %s", ev.Errno, kernel)
		}
		t.Logf("%s: unredirected SO_ORIGINAL_DST fails with %s, as without sockmesh (%s)", relayAddr, ev.Errno, kernel)
	}
	if miss := counter(t, env.Env, "origdst_miss"); miss != 2 {
		t.Fatalf("origdst_miss %d, want 2", miss)
	}
}

func TestL7ServiceFailsClosedWithoutTheRelayAndRecovers(t *testing.T) {
	env := newL7Env(t)
	client := env.Host("client")
	// No relay: refused (not a timeout), and never sent past the proxy to a backend.
	start := time.Now()
	res := env.Run(t, client, "tcp", tcpTo(vip4), 5)
	if len(res.TCP) != 0 || len(res.Errors) != 5 {
		t.Fatalf("L7 service without the relay: %+v", res)
	}
	for _, e := range res.Errors {
		if !strings.Contains(e, "connection refused") {
			t.Fatalf("want connection refused, got %q", e)
		}
	}
	t.Logf("5 refused connects took %v (process start included)", time.Since(start))
	if x := counter(t, env.Env, "xlate_tcp4"); x != 0 {
		t.Fatalf("%d L7 connects bypassed the proxy", x)
	}
	env.startRelay(t)
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 5); len(res.TCP) != 5 {
		t.Fatalf("relay back, L7 service: %+v", res)
	}
	env.relay.Stop()
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 2); len(res.TCP) != 0 {
		t.Fatalf("relay gone again, but connections succeeded: %+v", res)
	}
}
