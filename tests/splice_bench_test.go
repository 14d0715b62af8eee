package tests

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Services of the splice benchmark, all with their one endpoint in backend-1 on this
// node. The L7 ones go app → relay (Envoy's role) → backend, the others app → backend.
var (
	sbEchoVIP      = netip.MustParseAddrPort("10.96.0.30:9000") // L7, bench-echo
	sbEchoPlainVIP = netip.MustParseAddrPort("10.96.0.31:9000") // bench-echo, one hop
	sbIperfVIP     = netip.MustParseAddrPort("10.96.0.32:5201") // iperf3 -s
	sbRedisVIP     = netip.MustParseAddrPort("10.96.0.33:6379") // redis-server
	sbNginxVIP     = netip.MustParseAddrPort("10.96.0.34:80")   // L7, nginx
)

type sbService struct {
	name   string
	vip    netip.AddrPort
	target int
	l7     bool
}

var sbServices = []sbService{
	{"echo", sbEchoVIP, harness.BenchEchoPort, true},
	{"echo-plain", sbEchoPlainVIP, harness.BenchEchoPort, false},
	{"iperf", sbIperfVIP, harness.BenchIperfPort, false},
	{"redis", sbRedisVIP, harness.BenchRedisPort, false},
	{"nginx", sbNginxVIP, harness.BenchNginxPort, true},
}

func sbYAML(backend netip.Addr) string {
	var docs []string
	for _, s := range sbServices {
		ann := ""
		if s.l7 {
			ann = `, annotations: {sockmesh.io/l7: "true"}`
		}
		docs = append(docs, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: bench%[2]s}
spec:
  clusterIP: %[3]s
  ports: [{name: p, port: %[4]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s, namespace: bench, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: p, port: %[5]d}]
endpoints: [{addresses: ["%[6]s"], nodeName: node-1}]
`, s.name, ann, s.vip.Addr(), s.vip.Port(), s.target, backend))
	}
	return strings.Join(docs, "---\n")
}

// sbMode is one datapath configuration measured: the config the agent programmed for
// a --splice value, read back from the pinned sm_config map, or a variant of one.
type sbMode struct {
	name string     // in metric names
	flag string     // the --splice value the agent was started with; "" for forced
	cfg  bpf.Config // written into sm_config before each of this mode's samples
}

// sbRun measures modes in alternating rounds and keeps what each mode spliced.
type sbRun struct {
	b      *testing.B
	maps   *bpf.Maps // the agent's pinned maps
	modes  []sbMode
	next   int               // rotates the order of the modes batch by batch
	pairs  map[string]uint64 // splice_pairs counted while the mode was set
	bytes  map[string]uint64 // splice_bytes likewise
	failed map[string]bool   // "figure/mode" that failed once: not sampled again
}

// rounds samples every mode once per round, n rounds.
func (r *sbRun) rounds(figure string, n int, sample func(m sbMode) error) {
	for i := 0; i < n; i++ {
		r.batch(figure, sample)
	}
}

// batch samples every mode once, back to back, the order rotated every batch so that
// no mode always runs first or always right after the same one. The mode's config is
// written into sm_config before its sample, as the agent writes it at start (a restart
// per sample would put seconds between the samples being compared, and this machine's
// latency drifts over seconds); it applies to the connections the sample opens. A
// failing sample fails the benchmark, except for forced: splicing forced on where the
// kernel check found it unsafe may well break real programs, which is reported, not
// fatal.
func (r *sbRun) batch(figure string, sample func(m sbMode) error) {
	r.next++
	for j := range r.modes {
		m := r.modes[(r.next+j)%len(r.modes)]
		if r.failed[figure+"/"+m.name] {
			continue
		}
		if err := r.maps.SmConfig.Put(uint32(0), m.cfg); err != nil {
			r.b.Fatal(err)
		}
		p0, b0 := r.counters()
		err := sample(m)
		p1, b1 := r.counters()
		r.pairs[m.name] += p1 - p0
		r.bytes[m.name] += b1 - b0
		if err == nil {
			continue
		}
		r.failed[figure+"/"+m.name] = true
		if m.flag == "" {
			r.b.Logf("%s with splicing forced on FAILED (the unsafe kernel behaviour the agent's check guards against), not measured: %v", figure, err)
			continue
		}
		r.b.Errorf("%s, mode %s: %v", figure, m.name, err)
	}
}

// ok says whether mode m has a figure.
func (r *sbRun) ok(figure, m string) bool { return !r.failed[figure+"/"+m] }

func (r *sbRun) counters() (pairs, bytes uint64) {
	counts, err := r.maps.Counters()
	if err != nil {
		r.b.Fatal(err)
	}
	for i, n := range bpf.CounterNames {
		switch n {
		case "splice_pairs":
			pairs = counts[i]
		case "splice_bytes":
			bytes = counts[i]
		}
	}
	return pairs, bytes
}

// sbConfig reads the config the agent programmed.
func sbConfig(b *testing.B, env *harness.Env) bpf.Config {
	maps, err := bpf.OpenPinned(env.BPFFS)
	if err != nil {
		b.Fatal(err)
	}
	defer maps.Close()
	var c bpf.Config
	if err := maps.SmConfig.Lookup(uint32(0), &c); err != nil {
		b.Fatal(err)
	}
	return c
}

func sbSpliceName(v uint32) string {
	switch v {
	case bpf.SpliceOff:
		return "off"
	case bpf.SpliceOn:
		return "on"
	case bpf.SpliceAuto:
		return "auto"
	}
	return fmt.Sprintf("unknown(%d)", v)
}

// BenchmarkSpliceModes measures what each --splice mode actually does, against off, in
// the same run. The agent is started once per mode (off, on, then auto, which keeps
// running; the pins and every server stay up across the restarts) and the config it
// programmed into sm_config is read back: on a kernel whose spliced sockets do not
// behave like TCP it programs splicing off whatever the flag says. The modes are then
// measured in alternating rounds by writing each one's recorded config into the pinned
// map. Also measured:
//   - off-vs-off: off's config again, under its own label, in the same rounds. The
//     noise every auto figure is judged against is the largest difference between two
//     measurements of off in the run (off against off-vs-off, and each of them split
//     into even and odd rounds), per path and quantile for latency, and across the
//     real programs for throughput;
//   - forced: on's recorded config with splicing set on directly. It is what splicing
//     would give if the kernel made spliced sockets safe; on this kernel it is unsafe,
//     and no product mode: informational only.
//
// Figures, each as a ratio or percentage of off: request/response p50 and p99 at 64 B,
// 1 KiB, 4 KiB and 64 KiB, app → relay → backend and one hop app → backend; iperf3
// upload and download through a ClusterIP; redis-benchmark SET and GET through a
// ClusterIP; nginx requests/s under wrk through the relay (an L7 service).
func BenchmarkSpliceModes(b *testing.B) {
	env := harness.NewEnv(b, "node", "backend-1")
	node, backend, client := env.Host("node"), env.Host("backend-1"), env.Host("client")
	env.StartProc(b, harness.ClientRequest{Op: "bench-echo", NetNS: backend.NetNS})
	env.StartIperf3(b, backend, netip.AddrPortFrom(backend.IPv4, harness.BenchIperfPort))
	env.StartRedis(b, backend, netip.AddrPortFrom(backend.IPv4, harness.BenchRedisPort))
	nginx := netip.AddrPortFrom(backend.IPv4, harness.BenchNginxPort)
	env.StartNginx(b, backend, nginx, fmt.Sprintf(`server {
	listen %s;
	keepalive_requests 1000000;
	location / { default_type text/plain; return 200 "hello from nginx\n"; }
}`, nginx))
	listen := netip.AddrPortFrom(node.IPv4, relayPort)
	env.StartRelay(b, node, []netip.AddrPort{listen}, agent.DefaultEnvoyMark)
	svcFile := env.WriteFile(b, "svc.yaml", sbYAML(backend.IPv4))

	effective := map[string]bpf.Config{}
	var running *harness.Agent
	for _, flag := range []string{"off", "on", "auto"} {
		if running != nil {
			running.Stop(b)
		}
		running = env.StartAgent(b, svcFile, "--splice", flag, "--node-name", "node-1", "--envoy-redirect", listen.String())
		effective[flag] = sbConfig(b, env)
		why := ""
		for _, l := range strings.Split(running.Log(), "\n") {
			if strings.Contains(l, "splicing is off") {
				why = ": " + l
			}
		}
		b.Logf("--splice %s: the agent programmed splice=%s%s", flag, sbSpliceName(effective[flag].Splice), why)
	}
	if effective["off"].Splice != bpf.SpliceOff {
		b.Fatalf("--splice off programmed splice=%s", sbSpliceName(effective["off"].Splice))
	}
	forced := effective["on"]
	forced.Splice = bpf.SpliceOn
	maps, err := bpf.OpenPinned(env.BPFFS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { maps.Close() })
	r := &sbRun{b: b, maps: maps, pairs: map[string]uint64{}, bytes: map[string]uint64{}, failed: map[string]bool{},
		modes: []sbMode{
			{"off", "off", effective["off"]},
			{"off-vs-off", "off", effective["off"]},
			{"auto", "auto", effective["auto"]},
			{"on", "on", effective["on"]},
			{"forced", "", forced},
		}}
	against := []string{"off-vs-off", "auto", "on", "forced"}

	// 1. Request/response latency, from one long-lived client (no process start between
	// samples): a batch is one path and size, a fresh connection per mode; p50 and p99
	// are over all of a mode's round trips. Many short connections rather than a few
	// long ones: through the relay, a connection's latency depends on where the
	// scheduler happens to place its three processes' threads (per-connection p50s of
	// one mode range from 20 to 150 µs here), so a handful of connections per mode would
	// compare placements, not modes.
	type path struct {
		prefix string
		to     netip.AddrPort
	}
	paths := []path{{"", sbEchoVIP}, {"hop-", sbEchoPlainVIP}}
	sizes := []int{64, 1024, 4096, 65536}
	count := map[int]int{64: 60, 1024: 60, 4096: 60, 65536: 20}
	rr := env.StartRRClient(b, client)
	lat := map[string][]time.Duration{} // by mode|prefix|size, and by mode|prefix|size|round parity
	key := func(m, prefix string, size int) string { return fmt.Sprintf("%s|%s|%d", m, prefix, size) }
	for i := 0; i < 60; i++ {
		for _, p := range paths {
			for _, size := range sizes {
				r.batch("rr", func(m sbMode) error {
					res, err := rr.Measure(p.to, size, count[size])
					if err != nil {
						rr = env.StartRRClient(b, client) // the child exits on an error
						return err
					}
					k := key(m.name, p.prefix, size)
					lat[k] = append(lat[k], res.Lat...)
					kh := fmt.Sprintf("%s|%d", k, i%2)
					lat[kh] = append(lat[kh], res.Lat...)
					return nil
				})
			}
		}
	}
	// The noise against which auto is judged: the largest difference, in this run,
	// between two measurements of the very same off config, per path and quantile: off
	// against off-vs-off, and each of them split into its even and odd rounds.
	noise := map[string]float64{}
	for _, p := range paths {
		for _, size := range sizes {
			for _, q := range []struct {
				name string
				at   float64
			}{{"p50", 0.50}, {"p99", 0.99}} {
				fig := fmt.Sprintf("%srr%d-%s", p.prefix, size, q.name)
				class := p.prefix + "rr-" + q.name
				off := sbQuantile(lat[key("off", p.prefix, size)], q.at)
				for _, m := range []string{"off", "off-vs-off"} {
					even := sbQuantile(lat[key(m, p.prefix, size)+"|0"], q.at)
					odd := sbQuantile(lat[key(m, p.prefix, size)+"|1"], q.at)
					noise[class] = max(noise[class], math.Abs(100*(1-float64(odd)/float64(even))))
				}
				b.ReportMetric(float64(off.Microseconds()), "off-"+fig+"-us")
				for _, m := range against {
					if !r.ok("rr", m) {
						continue
					}
					d := sbQuantile(lat[key(m, p.prefix, size)], q.at)
					cut := 100 * (1 - float64(d)/float64(off))
					b.ReportMetric(cut, m+"-"+fig+"-cut-%")
					if m == "forced" {
						b.ReportMetric(float64(d.Microseconds()), m+"-"+fig+"-us")
					}
					if m == "off-vs-off" {
						noise[class] = max(noise[class], math.Abs(cut))
					}
				}
			}
		}
	}
	for _, p := range paths {
		for _, q := range []string{"p50", "p99"} {
			b.ReportMetric(noise[p.prefix+"rr-"+q], "noise-"+p.prefix+"rr-"+q+"-%")
		}
	}

	// 2-4. Real programs: sums over the rounds, ratio to off. Noise as above: off
	// against off-vs-off, and each one's second round against its first.
	thr := map[string]map[string][]float64{} // figure → mode → one value per round
	add := func(fig, m string, v float64) {
		if thr[fig] == nil {
			thr[fig] = map[string][]float64{}
		}
		thr[fig][m] = append(thr[fig][m], v)
	}
	sum := func(v []float64) (s float64) {
		for _, x := range v {
			s += x
		}
		return s
	}
	for _, dir := range []string{"up", "down"} {
		fig := "iperf-" + dir
		r.rounds(fig, 2, func(m sbMode) error {
			bps, err := env.BenchIperf3(b, client, sbIperfVIP, 3, dir == "down")
			add(fig, m.name, bps)
			return err
		})
	}
	r.rounds("redis", 2, func(m sbMode) error {
		rps, err := env.BenchRedis(b, client, sbRedisVIP, 50000, 20, "set,get")
		add("redis-set", m.name, rps["set"])
		add("redis-get", m.name, rps["get"])
		return err
	})
	r.rounds("nginx", 2, func(m sbMode) error {
		rps, err := env.BenchWrk(b, client, fmt.Sprintf("http://%s/", sbNginxVIP), 2, 16, 3*time.Second)
		add("nginx-rps", m.name, rps)
		return err
	})
	figures := []struct{ name, round, unit string }{
		{"iperf-up", "iperf-up", "Gbit/s"}, {"iperf-down", "iperf-down", "Gbit/s"},
		{"redis-set", "redis", "rps"}, {"redis-get", "redis", "rps"}, {"nginx-rps", "nginx", "rps"},
	}
	for _, f := range figures {
		off := sum(thr[f.name]["off"])
		if !r.ok(f.round, "off") || off == 0 {
			continue
		}
		mean := off / float64(len(thr[f.name]["off"]))
		if f.unit == "Gbit/s" {
			b.ReportMetric(mean/1e9, "off-"+f.name+"-Gbit/s")
		} else {
			b.ReportMetric(mean, "off-"+f.name)
		}
		for _, m := range []string{"off", "off-vs-off"} {
			if v := thr[f.name][m]; r.ok(f.round, m) && len(v) >= 2 && v[0] > 0 {
				noise["throughput"] = max(noise["throughput"], 100*math.Abs(v[1]/v[0]-1))
			}
		}
		for _, m := range against {
			if !r.ok(f.round, m) {
				continue
			}
			x := sum(thr[f.name][m]) / off
			b.ReportMetric(x, m+"-"+f.name+"/off-x")
			if m == "off-vs-off" {
				noise["throughput"] = max(noise["throughput"], 100*math.Abs(x-1))
			}
		}
	}
	b.ReportMetric(noise["throughput"], "noise-throughput-%")

	// What each mode is and did: the splice setting programmed, and what the datapath
	// spliced while the mode was set.
	for _, m := range r.modes {
		b.ReportMetric(float64(m.cfg.Splice), m.name+"-splice-effective")
		b.ReportMetric(float64(r.pairs[m.name]), m.name+"-spliced-pairs")
		b.ReportMetric(float64(r.bytes[m.name])/(1<<20), m.name+"-spliced-MiB")
		b.Logf("%-10s --splice %-4s programmed splice=%-4s spliced %d pairs, %d MiB", m.name, m.flag,
			sbSpliceName(m.cfg.Splice), r.pairs[m.name], r.bytes[m.name]>>20)
		if m.cfg.Splice == bpf.SpliceOff && r.pairs[m.name] != 0 {
			b.Errorf("mode %s has splicing off in sm_config but %d pairs were spliced while it was set", m.name, r.pairs[m.name])
		}
	}
	if r.pairs["forced"] == 0 {
		b.Logf("WARNING: forced spliced nothing: its figures compare TCP with TCP")
	}
}

// sbQuantile is the q-quantile of samples (sorted here).
func sbQuantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(int(float64(len(s))*q), len(s)-1)]
}
