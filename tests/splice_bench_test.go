package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent"
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

// BenchmarkSpliceVsTCP: app → relay (Envoy's role) → backend, all on this node, with
// splicing on and off in alternating rounds of the same run. Request/response p50 per
// message size, and a bulk stream echoed back; also one hop (app → local backend) for
// small messages, which shows the per-hop saving without the relay's own cost.
func BenchmarkSpliceVsTCP(b *testing.B) {
	env := harness.NewEnv(b, "node", "backend-1")
	node, backend, client := env.Host("node"), env.Host("backend-1"), env.Host("client")
	env.StartProc(b, harness.ClientRequest{Op: "bench-echo", NetNS: backend.NetNS})
	listen := netip.AddrPortFrom(node.IPv4, relayPort)
	env.StartRelay(b, node, []netip.AddrPort{listen}, agent.DefaultEnvoyMark)
	path := env.WriteFile(b, "svc.yaml", echoYAML(backend.IPv4))

	sizes := []int{64, 1024, 4096, 16384, 262144}
	rounds := 4
	streamBytes := int64(*benchStreamMB) << 20
	p50 := map[string]map[int][]time.Duration{"on": {}, "off": {}}
	hop := map[string]map[int][]time.Duration{"on": {}, "off": {}}
	rr := func(to netip.AddrPort, size int) time.Duration {
		n := 2000
		if size >= 16384 {
			n = 500
		}
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
	elapsed := map[string]time.Duration{}
	for r := 0; r < rounds; r++ {
		modes := []string{"on", "off"}
		if r%2 == 1 {
			modes = []string{"off", "on"}
		}
		for _, mode := range modes {
			// The agent, not the test, decides what is spliced: restart it per mode.
			a := env.StartAgent(b, path, "--splice", mode, "--node-name", "node-1", "--envoy-redirect", listen.String())
			pairsBefore := counter(b, env, "splice_pairs")
			for _, size := range sizes {
				p50[mode][size] = append(p50[mode][size], rr(echoVIP, size))
			}
			for _, size := range sizes[:3] {
				hop[mode][size] = append(hop[mode][size], rr(echoPlainVIP, size))
			}
			if r < 2 { // two bulk transfers per mode are enough to compare
				out, err := env.RunOp(b, harness.ClientRequest{Op: "bench-stream", NetNS: client.NetNS, To: echoVIP,
					Args: []string{strconv.FormatInt(streamBytes, 10), strconv.Itoa(64 << 10)}})
				if err != nil {
					b.Fatalf("bench-stream: %v", err)
				}
				var res harness.StreamResult
				if err := json.Unmarshal(out, &res); err != nil {
					b.Fatal(err)
				}
				elapsed[mode] += res.Elapsed
			}
			pairs := counter(b, env, "splice_pairs") - pairsBefore
			if (mode == "on") != (pairs > 0) {
				b.Fatalf("--splice %s paired %d connections", mode, pairs)
			}
			a.Stop(b)
		}
	}
	for _, size := range sizes {
		on, off := median(p50["on"][size]), median(p50["off"][size])
		b.ReportMetric(float64(on.Microseconds()), fmt.Sprintf("rr%d-on-p50-us", size))
		b.ReportMetric(float64(off.Microseconds()), fmt.Sprintf("rr%d-off-p50-us", size))
		b.ReportMetric(100*(1-float64(on)/float64(off)), fmt.Sprintf("rr%d-latency-cut-%%", size))
	}
	for _, size := range sizes[:3] {
		on, off := median(hop["on"][size]), median(hop["off"][size])
		b.ReportMetric(float64(on.Microseconds()), fmt.Sprintf("hop-rr%d-on-p50-us", size))
		b.ReportMetric(float64(off.Microseconds()), fmt.Sprintf("hop-rr%d-off-p50-us", size))
		b.ReportMetric(100*(1-float64(on)/float64(off)), fmt.Sprintf("hop-rr%d-latency-cut-%%", size))
	}
	gbps := func(d time.Duration) float64 { return float64(2*streamBytes) * 8 / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(elapsed["on"]), "stream-on-Gbit/s")
	b.ReportMetric(gbps(elapsed["off"]), "stream-off-Gbit/s")
	b.ReportMetric(float64(elapsed["off"])/float64(elapsed["on"]), "stream-on/off-x")
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
