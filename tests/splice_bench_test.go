package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

var (
	echoVIP      = netip.MustParseAddrPort("10.96.0.30:9000") // L7: through the relay
	echoPlainVIP = netip.MustParseAddrPort("10.96.0.31:9000") // socket-LB straight to the backend
)

// echoYAML is an L7 service in front of the bench echo server on a local endpoint.
func echoYAML(backend netip.Addr) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo, namespace: bench, annotations: {sockmesh.io/l7: "true"}}
spec:
  clusterIP: %s
  ports: [{name: echo, port: %d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo, namespace: bench, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: echo, port: %d}]
endpoints: [{addresses: ["%s"], nodeName: node-1}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-plain, namespace: bench}
spec:
  clusterIP: %s
  ports: [{name: echo, port: %d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-plain, namespace: bench, labels: {kubernetes.io/service-name: echo-plain}}
addressType: IPv4
ports: [{name: echo, port: %d}]
endpoints: [{addresses: ["%s"], nodeName: node-1}]
`, echoVIP.Addr(), echoVIP.Port(), harness.BenchEchoPort, backend,
		echoPlainVIP.Addr(), echoPlainVIP.Port(), harness.BenchEchoPort, backend)
}

// setSplice flips the running datapath between splice modes by writing the pinned
// config map, exactly as the agent does at start: a restart per mode would put seconds
// between the samples being compared, and this machine's latency drifts over seconds.
// The mode applies to connections established afterwards.
func setSplice(b *testing.B, env *harness.Env, mode uint32) {
	maps, err := bpf.OpenPinned(env.BPFFS)
	if err != nil {
		b.Fatal(err)
	}
	defer maps.Close()
	var c bpf.Config
	if err := maps.SmConfig.Lookup(uint32(0), &c); err != nil {
		b.Fatal(err)
	}
	c.Splice = mode
	if err := maps.SmConfig.Put(uint32(0), c); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSpliceVsTCP: app → relay (Envoy's role) → backend, all on this node, with
// splicing on and off alternating every batch of the same run. Request/response p50
// per message size, and a bulk stream echoed back; also one hop (app → local backend),
// which shows the per-hop saving without the relay's own cost.
func BenchmarkSpliceVsTCP(b *testing.B) {
	env := harness.NewEnv(b, "node", "backend-1")
	node, backend, client := env.Host("node"), env.Host("backend-1"), env.Host("client")
	env.StartProc(b, harness.ClientRequest{Op: "bench-echo", NetNS: backend.NetNS})
	listen := netip.AddrPortFrom(node.IPv4, relayPort)
	env.StartRelay(b, node, []netip.AddrPort{listen}, agent.DefaultEnvoyMark)
	path := env.WriteFile(b, "svc.yaml", echoYAML(backend.IPv4))
	env.StartAgent(b, path, "--splice", "on", "--node-name", "node-1", "--envoy-redirect", listen.String())

	modes := map[string]uint32{"on": bpf.SpliceOn, "off": bpf.SpliceOff, "auto": bpf.SpliceAuto}
	rr := func(to netip.AddrPort, size, n int) time.Duration {
		out, err := env.RunOp(b, harness.ClientRequest{Op: "bench-rr", NetNS: client.NetNS, To: to, N: n, Args: []string{strconv.Itoa(size)}})
		if err != nil {
			b.Fatalf("bench-rr %s %d: %v", to, size, err)
		}
		var res harness.RRResult
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatal(err)
		}
		return res.P50
	}
	// measure alternates a splicing mode ("on" or "auto") with "off" batch by batch and
	// returns each one's median p50, the splicing one under "on".
	measure := func(to netip.AddrPort, size int, splicing ...string) map[string]time.Duration {
		const batches = 12
		n := 300
		if size >= 16384 {
			n = 100
		}
		on := "on"
		if len(splicing) > 0 {
			on = splicing[0]
		}
		got := map[string][]time.Duration{}
		for i := 0; i < batches; i++ {
			order := []string{on, "off"}
			if i%2 == 1 {
				order = []string{"off", on}
			}
			for _, mode := range order {
				setSplice(b, env, modes[mode])
				got[mode] = append(got[mode], rr(to, size, n))
			}
		}
		return map[string]time.Duration{"on": median(got[on]), "off": median(got["off"])}
	}
	report := func(prefix string, size int, m map[string]time.Duration) {
		b.ReportMetric(float64(m["on"].Microseconds()), fmt.Sprintf("%srr%d-on-p50-us", prefix, size))
		b.ReportMetric(float64(m["off"].Microseconds()), fmt.Sprintf("%srr%d-off-p50-us", prefix, size))
		b.ReportMetric(100*(1-float64(m["on"])/float64(m["off"])), fmt.Sprintf("%srr%d-latency-cut-%%", prefix, size))
	}
	before := counter(b, env, "splice_pairs")
	for _, size := range []int{64, 1024, 4096, 16384, 262144} {
		report("", size, measure(echoVIP, size))
	}
	for _, size := range []int{64, 1024, 4096} {
		report("hop-", size, measure(echoPlainVIP, size))
	}
	// The default mode, auto, on the relay path: it must never be slower than TCP.
	for _, size := range []int{64, 262144} {
		report("auto-", size, measure(echoVIP, size, "auto"))
	}
	if counter(b, env, "splice_pairs") == before {
		b.Fatal("nothing was spliced: the comparison would be TCP against TCP")
	}

	streamBytes := int64(*benchStreamMB) << 20
	elapsed := map[string]time.Duration{}
	for i := 0; i < 4; i++ {
		mode := []string{"on", "off"}[i%2]
		setSplice(b, env, modes[mode])
		out, err := env.RunOp(b, harness.ClientRequest{Op: "bench-stream", NetNS: client.NetNS, To: echoVIP,
			Args: []string{strconv.FormatInt(streamBytes/2, 10), strconv.Itoa(64 << 10)}})
		if err != nil {
			b.Fatalf("bench-stream: %v", err)
		}
		var res harness.StreamResult
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatal(err)
		}
		elapsed[mode] += res.Elapsed
	}
	gbps := func(d time.Duration) float64 { return float64(2*streamBytes) * 8 / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(elapsed["on"]), "stream-on-Gbit/s")
	b.ReportMetric(gbps(elapsed["off"]), "stream-off-Gbit/s")
	b.ReportMetric(float64(elapsed["off"])/float64(elapsed["on"]), "stream-on/off-x")
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}
