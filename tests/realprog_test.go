package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Real programs from Debian through sockmesh, in every splice mode: nginx, curl, ab,
// redis-server/redis-benchmark and iperf3 are applications whose use of sockets
// (sendfile, FIONREAD, large writes, half-close, many short connections) our own Go
// clients do not cover. Each mode gets a fresh env and agent; every body is checked
// byte for byte by sha256 and every program run is bounded, so a stall fails.
//
// Topology: "client" runs the clients (and a reverse-proxy nginx in front of the
// service); "server" runs nginx, redis-server and iperf3 and is the service's only
// endpoint, on this node (nodeName = --node-name), so its pairs are splice candidates.
// The relay path adds "node", where the test relay plays Envoy.

const (
	rpNodeName  = "node-1"
	rpHTTPPort  = 80
	rpNginxPort = 8080
	rpRedisPort = 6379
	rpIperfPort = 5201
	rpProxyPort = 8081 // the client's reverse-proxy nginx, on its loopback
	rpRelayPort = 15001
	rpBigSize   = 100 << 20
	rpPutSize   = 32 << 20
)

var (
	rpPlainVIP = netip.MustParseAddr("10.96.0.50")
	rpL7VIP    = netip.MustParseAddr("10.96.0.51")
	rpModes    = []string{"off", "auto", "on"}
)

// The node proxy on the L7 path: none (plain ClusterIP), the test relay (Envoy's
// data-path role), or Debian's squid intercepting, a proxy nobody here wrote that reads
// SO_ORIGINAL_DST as it does behind iptables REDIRECT (HTTP only).
const (
	rpNoProxy = ""
	rpRelay   = "relay"
	rpSquid   = "squid"
)

func TestRealProgramsThroughClusterIPEveryMode(t *testing.T) { rpEveryMode(t, rpNoProxy) }

func TestRealProgramsThroughTheRelayEveryMode(t *testing.T) { rpEveryMode(t, rpRelay) }

func TestRealProgramsThroughSquidEveryMode(t *testing.T) { rpEveryMode(t, rpSquid) }

// rpEveryMode runs every program check once per splice mode, each mode in its own env.
func rpEveryMode(t *testing.T, proxy string) {
	harness.RequirePrivileged(t)
	content := newRPContent(t)
	for _, mode := range rpModes {
		t.Run(mode, func(t *testing.T) {
			e := newRPEnv(t, mode, proxy, content)
			e.step(t, "nginx-get-sendfile", e.checkBigGet)
			e.step(t, "nginx-put-dav", e.checkPut)
			e.step(t, "nginx-4k-header", e.checkBigHeader)
			e.step(t, "proxy-buffered", func(t *testing.T) { e.checkProxyGet(t, "buffered") })
			e.step(t, "proxy-unbuffered", func(t *testing.T) { e.checkProxyGet(t, "unbuffered") })
			e.step(t, "ab-small", e.checkAB)
			if proxy == rpSquid {
				e.checkProxiedByOrigDst(t, 6)
				return // squid proxies HTTP only
			}
			e.step(t, "redis-benchmark", e.checkRedis)
			e.step(t, "iperf3", e.checkIperf3)
			if proxy == rpRelay {
				e.checkRelaySawEveryPort(t)
			}
		})
	}
}

// rpContent is what every mode serves and uploads, made once per top-level test.
type rpContent struct {
	www     string // nginx root: big.bin and small.txt
	putFile string
	bigSum  string
	putSum  string
}

func newRPContent(t *testing.T) *rpContent {
	dir := t.TempDir()
	c := &rpContent{www: filepath.Join(dir, "www"), putFile: filepath.Join(dir, "put.bin")}
	if err := os.Mkdir(c.www, 0o755); err != nil {
		t.Fatal(err)
	}
	c.bigSum = harness.WriteRandomFile(t, filepath.Join(c.www, "big.bin"), rpBigSize)
	c.putSum = harness.WriteRandomFile(t, c.putFile, rpPutSize)
	if err := os.WriteFile(filepath.Join(c.www, "small.txt"), []byte(strings.Repeat("small\n", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// rpYAML is one IPv4 service with the three programs' ports, whose only endpoint is
// server on this node; l7 marks it for the node proxy.
func rpYAML(vip netip.Addr, l7 bool, server *netlab.Host) string {
	annotations := ""
	if l7 {
		annotations = `, annotations: {sockmesh.io/l7: "true"}`
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: realprog, namespace: realprog%[1]s}
spec:
  type: ClusterIP
  clusterIP: %[2]s
  clusterIPs: [%[2]s]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports:
  - {name: http, port: %[3]d, targetPort: %[4]d, protocol: TCP}
  - {name: redis, port: %[5]d, protocol: TCP}
  - {name: iperf, port: %[6]d, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: realprog-ipv4, namespace: realprog, labels: {kubernetes.io/service-name: realprog}}
addressType: IPv4
ports:
- {name: http, port: %[4]d, protocol: TCP}
- {name: redis, port: %[5]d, protocol: TCP}
- {name: iperf, port: %[6]d, protocol: TCP}
endpoints:
- {addresses: ["%[7]s"], nodeName: %[8]s, conditions: {ready: true}}
`, annotations, vip, rpHTTPPort, rpNginxPort, rpRedisPort, rpIperfPort, server.IPv4, rpNodeName)
}

type rpEnv struct {
	*harness.Env
	client, server *netlab.Host
	vip            netip.Addr
	l7             bool
	relay          *harness.Proc // the node proxy, on the relay path
	content        *rpContent
	davDir         string       // where the backend nginx stores PUTs
	splice         spliceCounts // splice counters after the last step
	splicing       bool         // the agent's decision: sockmesh_splice_enabled
	agent          *harness.Agent
}

// newRPEnv starts the agent in mode (and for l7 the relay as the node proxy), then the
// servers, so that they start on a node where sockmesh already runs, as pods do.
func newRPEnv(t *testing.T, mode, proxy string, content *rpContent) *rpEnv {
	l7 := proxy != rpNoProxy
	hosts := []string{"server"}
	if l7 {
		hosts = append(hosts, "node")
	}
	env := harness.NewEnv(t, hosts...)
	e := &rpEnv{Env: env, client: env.Host("client"), server: env.Host("server"), vip: rpPlainVIP, l7: l7,
		content: content, davDir: filepath.Join(env.Dir, "dav")}
	flags := []string{"--splice", mode, "--node-name", rpNodeName}
	var relayListen []netip.AddrPort
	if l7 {
		e.vip = rpL7VIP
		node := env.Host("node")
		relayListen = []netip.AddrPort{netip.AddrPortFrom(node.IPv4, rpRelayPort), netip.AddrPortFrom(node.IPv6, rpRelayPort)}
		if proxy == rpSquid {
			relayListen = relayListen[:1] // the service is IPv4-only
		}
		var redirect []string
		for _, ap := range relayListen {
			redirect = append(redirect, ap.String())
		}
		flags = append(flags, "--envoy-redirect", strings.Join(redirect, ","),
			"--envoy-mark", fmt.Sprintf("%#x", agent.DefaultEnvoyMark))
	}
	a := env.StartAgent(t, env.WriteFile(t, "realprog.yaml", rpYAML(e.vip, l7, e.server)), flags...)
	// Whether this mode splices is the agent's call after its kernel check.
	e.agent = a
	e.splicing = a.Metric(t, "sockmesh_splice_enabled", nil) == 1
	t.Logf("--splice %s: sockmesh_splice_enabled = %v", mode, e.splicing)
	switch proxy {
	case rpRelay:
		e.relay = env.StartRelay(t, env.Host("node"), relayListen, agent.DefaultEnvoyMark)
	case rpSquid:
		env.StartSquid(t, env.Host("node"), relayListen[0], agent.DefaultEnvoyMark)
	}
	waitSmLocal(t, env, e.server.IPv4)
	e.startServers(t)
	e.splice = spliceCountsOf(t, env)
	return e
}

func (e *rpEnv) startServers(t *testing.T) {
	t.Helper()
	nginx := netip.AddrPortFrom(e.server.IPv4, rpNginxPort)
	e.StartNginx(t, e.server, nginx, fmt.Sprintf(`
	sendfile on;
	server {
		listen %s;
		root %s;
		location /upload/ {
			root %s;
			dav_methods PUT;
			create_full_put_path on;
			client_max_body_size 64m;
		}
	}`, nginx, e.content.www, e.davDir))
	e.StartRedis(t, e.server, netip.AddrPortFrom(e.server.IPv4, rpRedisPort))
	e.StartIperf3(t, e.server, netip.AddrPortFrom(e.server.IPv4, rpIperfPort))
	// The reverse proxy sits in the client namespace: its upstream connections are the
	// ones sockmesh load-balances (or redirects), as for an app's sidecar-less nginx.
	proxy := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rpProxyPort)
	e.StartNginx(t, e.client, proxy, fmt.Sprintf(`
	server {
		listen %[1]s;
		location /buffered/ { proxy_pass http://%[2]s/; }
		location /unbuffered/ { proxy_pass http://%[2]s/; proxy_buffering off; }
	}`, proxy, e.service(rpHTTPPort)))
}

func (e *rpEnv) service(port uint16) netip.AddrPort { return netip.AddrPortFrom(e.vip, port) }

func (e *rpEnv) url(path string) string {
	return "http://" + e.service(rpHTTPPort).String() + path
}

// step runs one program check as a subtest and logs how the splice counters moved
// during it. Whether a mode splices is the agent's decision per kernel; when it decided
// not to, nothing may have been paired.
func (e *rpEnv) step(t *testing.T, name string, check func(t *testing.T)) {
	t.Run(name, check)
	now := spliceCountsOf(t, e.Env)
	var moved []string
	for _, n := range sortedKeys(now) {
		if d := now[n] - e.splice[n]; d != 0 {
			moved = append(moved, fmt.Sprintf("%s=+%d", n, d))
		}
	}
	if !e.splicing && now["splice_pairs"] != e.splice["splice_pairs"] {
		t.Errorf("%s: the agent reported splicing off, yet %d connections were paired", name, now["splice_pairs"]-e.splice["splice_pairs"])
	}
	e.splice = now
	if len(moved) == 0 {
		moved = []string{"none"}
	}
	t.Logf("%s: splice counters moved: %s", name, strings.Join(moved, " "))
}

// checkProxiedByOrigDst shows the runs went through the node proxy: at least n of its
// accepted connections were answered SO_ORIGINAL_DST by sockmesh.
func (e *rpEnv) checkProxiedByOrigDst(t *testing.T, n float64) {
	t.Helper()
	if hit := e.agent.Metric(t, "sockmesh_origdst_lookups_total", map[string]string{"result": "hit"}); hit < n {
		t.Errorf("sockmesh_origdst_lookups_total{result=hit} = %v: the proxy did not learn the original destination of the %v+ connections it took", hit, n)
	}
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// curl runs curl in the client with its own deadline (so a stall reports how far it
// got) inside a slightly longer one of the harness; it returns what -w printed.
func (e *rpEnv) curl(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	base := []string{"-sS", "--fail", "--noproxy", "*", "--max-time", strconv.Itoa(int(timeout.Seconds())), "-w", "%{http_code}"}
	return e.RunProgram(t, timeout+5*time.Second, e.client, "curl", append(base, args...)...)
}

// getAndCompare downloads url to a file and compares it with big.bin.
func (e *rpEnv) getAndCompare(t *testing.T, url string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "got.bin")
	if code := e.curl(t, 20*time.Second, "-o", out, url); code != "200" {
		t.Fatalf("GET %s: HTTP %s", url, code)
	}
	sum, n := harness.FileSHA256(t, out)
	if sum != e.content.bigSum || n != rpBigSize {
		t.Fatalf("GET %s: got %d bytes with sha256 %s, want %d bytes with %s", url, n, sum, rpBigSize, e.content.bigSum)
	}
}

func (e *rpEnv) checkBigGet(t *testing.T) { e.getAndCompare(t, e.url("/big.bin")) }

func (e *rpEnv) checkPut(t *testing.T) {
	code := e.curl(t, 20*time.Second, "-o", "/dev/null", "-T", e.content.putFile, e.url("/upload/put.bin"))
	if code != "201" {
		t.Fatalf("PUT: HTTP %s, want 201 Created", code)
	}
	sum, n := harness.FileSHA256(t, filepath.Join(e.davDir, "upload", "put.bin"))
	if sum != e.content.putSum || n != rpPutSize {
		t.Fatalf("nginx stored %d bytes with sha256 %s, curl sent %d bytes with %s", n, sum, rpPutSize, e.content.putSum)
	}
}

func (e *rpEnv) checkBigHeader(t *testing.T) {
	pad := "X-Pad: " + strings.Repeat("p", 4096)
	if code := e.curl(t, 10*time.Second, "-o", "/dev/null", "-H", pad, e.url("/small.txt")); code != "200" {
		t.Fatalf("GET with a 4 KiB header: HTTP %s", code)
	}
}

// checkProxyGet downloads big.bin through the client's reverse proxy; unbuffered, nginx
// writes each upstream read straight to the client instead of spooling to disk.
func (e *rpEnv) checkProxyGet(t *testing.T, mode string) {
	proxy := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rpProxyPort)
	e.getAndCompare(t, "http://"+proxy.String()+"/"+mode+"/big.bin")
}

var (
	abComplete = regexp.MustCompile(`(?m)^Complete requests:\s+(\d+)`)
	abFailed   = regexp.MustCompile(`(?m)^Failed requests:\s+(\d+)`)
)

// checkAB makes many short connections: each one a fresh connect through sockmesh.
func (e *rpEnv) checkAB(t *testing.T) {
	const n = 2000
	out := e.RunProgram(t, 60*time.Second, e.client, "ab", "-q", "-n", strconv.Itoa(n), "-c", "16", "-s", "20", e.url("/small.txt"))
	complete, failed := abComplete.FindStringSubmatch(out), abFailed.FindStringSubmatch(out)
	if complete == nil || failed == nil {
		t.Fatalf("ab printed no request counts:\n%s", out)
	}
	if complete[1] != strconv.Itoa(n) || failed[1] != "0" || strings.Contains(out, "Non-2xx responses") {
		t.Fatalf("ab: %s complete, %s failed, want %d and 0 and no non-2xx:\n%s", complete[1], failed[1], n, out)
	}
}

var redisRate = regexp.MustCompile(`(?m)^([A-Z]+): ([0-9.]+) requests per second`)

// checkRedis runs small values with many clients, then 1 MiB values, which span many
// TCP segments in each direction.
func (e *rpEnv) checkRedis(t *testing.T) {
	for _, args := range [][]string{
		{"-n", "20000", "-c", "20", "-d", "1024"},
		{"-n", "200", "-c", "8", "-d", "1048576"},
	} {
		base := []string{"-h", e.vip.String(), "-p", strconv.Itoa(rpRedisPort), "-q", "-t", "set,get"}
		out := e.RunProgram(t, 60*time.Second, e.client, "redis-benchmark", append(base, args...)...)
		// -q rewrites its progress line with \r; the final figures follow the last one.
		final := strings.ReplaceAll(out, "\r", "\n")
		rates := map[string]float64{}
		for _, m := range redisRate.FindAllStringSubmatch(final, -1) {
			rates[m[1]], _ = strconv.ParseFloat(m[2], 64)
		}
		if rates["SET"] <= 0 || rates["GET"] <= 0 || strings.Contains(strings.ToLower(final), "error") {
			t.Fatalf("redis-benchmark %v: rates %v, want SET and GET, no errors:\n%s", args, rates, out)
		}
		t.Logf("redis-benchmark %v: SET %.0f/s GET %.0f/s", args, rates["SET"], rates["GET"])
	}
}

// iperf3Result is the part of `iperf3 -J` the check reads.
type iperf3Result struct {
	Error string `json:"error"`
	End   struct {
		SumSent     struct{ Bytes int64 } `json:"sum_sent"`
		SumReceived struct{ Bytes int64 } `json:"sum_received"`
	} `json:"end"`
}

// checkIperf3 streams for 2 s each way. iperf3's receiver stops counting when the
// sender signals the end, so bytes still in the path's socket buffers are sent but not
// counted as received, with or without sockmesh (iperf3 on loopback in a bare namespace
// shows it too); the byte-exact check is the HTTP transfers'. Here nothing may be
// received that was not sent, and the shortfall must fit in what the path can hold.
func (e *rpEnv) checkIperf3(t *testing.T) {
	bound := e.inFlightBound(t)
	for _, reverse := range []bool{false, true} {
		args := []string{"-c", e.vip.String(), "-p", strconv.Itoa(rpIperfPort), "-t", "2", "-J", "--connect-timeout", "5000"}
		if reverse {
			args = append(args, "-R")
		}
		out := e.RunProgram(t, 20*time.Second, e.client, "iperf3", args...)
		var r iperf3Result
		var keys map[string]json.RawMessage
		if err := errors.Join(json.Unmarshal([]byte(out), &r), json.Unmarshal([]byte(out), &keys)); err != nil {
			t.Fatalf("iperf3 %v output: %v\n%s", args, err, out)
		}
		_, failed := keys["error"]
		sent, got := r.End.SumSent.Bytes, r.End.SumReceived.Bytes
		if failed || got == 0 || got > sent || sent-got > bound {
			t.Fatalf("iperf3 %v: error %s, sent %d bytes, received %d (at most %d may be in flight)", args, keys["error"], sent, got, bound)
		}
		t.Logf("iperf3 %v: sent %d bytes, received %d (%d in flight at the end)", args, sent, got, sent-got)
	}
}

// inFlightBound is the most payload the path can hold: a full receive and send buffer
// per TCP connection (one, or two and the relay's copy buffer through the relay).
func (e *rpEnv) inFlightBound(t *testing.T) int64 {
	t.Helper()
	perConn := rpSysctlMax(t, "net/ipv4/tcp_rmem") + rpSysctlMax(t, "net/ipv4/tcp_wmem")
	if e.l7 {
		return 2*perConn + 64<<10
	}
	return perConn
}

// rpSysctlMax is the last field of a "min default max" sysctl.
func rpSysctlMax(t *testing.T, name string) int64 {
	t.Helper()
	raw, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(raw))
	n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatalf("%s: %q", name, raw)
	}
	return n
}

// checkRelaySawEveryPort shows the L7 runs went through the node proxy, not straight
// to the backend: it got a connection for each port, with the ClusterIP as the
// original destination.
func (e *rpEnv) checkRelaySawEveryPort(t *testing.T) {
	t.Helper()
	seen := map[string]int{}
	for _, ev := range e.relay.Events(t) {
		seen[ev.OrigDst]++
	}
	for _, port := range []uint16{rpHTTPPort, rpRedisPort, rpIperfPort} {
		if seen[e.service(port).String()] == 0 {
			t.Errorf("the relay saw no connection for %s; it saw %v", e.service(port), seen)
		}
	}
}
