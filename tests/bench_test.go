package tests

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Benchmarks report ratios against a baseline measured in the same run: `make bench`
// runs them and writes the report. Each request is connect + one request/response +
// close from a client namespace to a backend namespace.

// benchRequests is how many requests each benchmark sends per target.
var benchRequests = flag.Int("sockmesh.requests", 3000, "requests per target in each socket-LB benchmark")

func benchEnv(b *testing.B) (*harness.Env, netip.AddrPort) {
	env := harness.NewEnv(b, "backend-1")
	env.StartBackends(b, "backend-1")
	// One backend, so the ClusterIP and the direct path end at the same server.
	return env, netip.AddrPortFrom(env.Host("backend-1").IPv4, netlab.BackendTCPPort)
}

func pct(a, base time.Duration) float64 { return 100 * (float64(a) - float64(base)) / float64(base) }

func BenchmarkSocketLBConnectVsDirect(b *testing.B) {
	env, direct := benchEnv(b)
	path := env.WriteFile(b, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1")))
	env.StartAgent(b, path)
	n := *benchRequests
	r := env.Bench(b, env.Host("client"), []netip.AddrPort{direct, tcpTo(vip4)}, n, 20)
	b.ReportMetric(float64(r[0].Mean.Nanoseconds()), "direct-mean-ns")
	b.ReportMetric(float64(r[1].Mean.Nanoseconds()), "clusterip-mean-ns")
	b.ReportMetric(float64(r[0].P50.Nanoseconds()), "direct-p50-ns")
	b.ReportMetric(float64(r[1].P50.Nanoseconds()), "clusterip-p50-ns")
	b.ReportMetric(pct(r[1].Mean, r[0].Mean), "overhead-mean-%")
	b.ReportMetric(pct(r[1].P50, r[0].P50), "overhead-p50-%")
}

func BenchmarkSocketLBServiceScale(b *testing.B) {
	env, direct := benchEnv(b)
	web := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1"))
	path := env.WriteFile(b, "svc.yaml", web)
	a := env.StartAgent(b, path)
	n := *benchRequests
	var base float64
	for _, scale := range []int{1, 1000, 10000, 30000} {
		// The web service has 4 frontends; the fillers make up the rest of the scale.
		env.WriteFile(b, "svc.yaml", web+fillerYAML(scale-1, 2))
		a.WaitMetric(b, "sockmesh_services", nil, float64(4+scale-1), 2*time.Minute)
		a.WaitIdle(b, 300*time.Millisecond, 30*time.Second)
		r := env.Bench(b, env.Host("client"), []netip.AddrPort{direct, tcpTo(vip4)}, n, 20)
		// Normalise by the direct path measured alongside, to cancel machine drift.
		ratio := float64(r[1].Mean) / float64(r[0].Mean)
		if scale == 1 {
			base = ratio
		}
		b.ReportMetric(float64(r[1].Mean.Nanoseconds()), fmt.Sprintf("svc%d-clusterip-mean-ns", scale))
		b.ReportMetric(100*(ratio/base-1), fmt.Sprintf("svc%d-vs-svc1-%%", scale))
	}
}

type nopObserver struct{}

func (nopObserver) MapOp(string, string, int, error) {}
func (nopObserver) MapRepairs(string, int)           {}

func BenchmarkProgram10kServicesColdStart(b *testing.B) {
	harness.RequirePrivileged(b)
	snap := fillerSnapshot(10000, 10)
	measure := func(batch bool) time.Duration {
		dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("smtbench%d", os.Getpid()))
		dp, err := bpf.Load(dir, bpf.DefaultLimits)
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			dp.Close()
			if err := bpf.Cleanup(dir); err != nil {
				b.Error(err)
			}
		}()
		t := lbmap.BPFTables(dp.Maps(), nil)
		if !batch {
			m := dp.Maps()
			t = lbmap.Tables{
				Services: bpf.NewTable[bpf.SvcKey, bpf.SvcValue](m.SmServices).WithoutBatch(),
				Slots:    bpf.NewTable[bpf.SlotKey, uint32](m.SmSlots).WithoutBatch(),
				Backends: bpf.NewArrayTable[bpf.BackendValue](m.SmBackends).WithoutBatch(),
				Names:    bpf.NewTable[uint32, bpf.SvcName](m.SmSvcNames).WithoutBatch(),
				Local:    bpf.NewTable[bpf.LbAddr, uint8](m.SmLocal).WithoutBatch(),
			}
		}
		w, err := lbmap.NewWriter(t, nopObserver{})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		res, err := w.Apply(snap)
		took := time.Since(start)
		if err != nil || res.Services != 10000 || res.Backends != 100000 {
			b.Fatalf("programmed %d services, %d backends: %v", res.Services, res.Backends, err)
		}
		return took
	}
	const runs = 3
	var batched, single time.Duration
	for i := 0; i < runs; i++ {
		batched += measure(true)
		single += measure(false)
	}
	b.ReportMetric(float64((batched / runs).Milliseconds()), "batched-ms")
	b.ReportMetric(float64((single / runs).Milliseconds()), "per-entry-ms")
	b.ReportMetric(float64(single)/float64(batched), "batch-speedup-x")
}

func rssMB(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func BenchmarkAgent10kServicesStartAndRSS(b *testing.B) {
	env, _ := benchEnv(b)
	web := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1"))
	small := env.StartAgent(b, env.WriteFile(b, "small.yaml", web))
	baseRSS := rssMB(b, small.PID())
	small.Stop(b)
	if err := bpf.Cleanup(env.BPFFS); err != nil {
		b.Fatal(err)
	}

	path := env.WriteFile(b, "big.yaml", web+fillerYAML(10000, 10))
	start := time.Now()
	big := env.StartAgent(b, path)
	big.WaitMetric(b, "sockmesh_backends", nil, 4+100000, 2*time.Minute)
	ready := time.Since(start)
	b.ReportMetric(ready.Seconds(), "start-to-programmed-s")
	b.ReportMetric(float64(ready.Microseconds())/1000, "start-to-programmed-ms")
	b.ReportMetric(big.Metric(b, "sockmesh_reconcile_duration_seconds", nil), "reconcile-s")
	b.ReportMetric(baseRSS, "rss-1svc-MB")
	b.ReportMetric(rssMB(b, big.PID()), "rss-10k-MB")
	// And once the start's garbage has had time to go back to the OS.
	time.Sleep(3 * time.Second)
	b.ReportMetric(rssMB(b, big.PID()), "rss-10k-settled-MB")
}

// slotCount reads the slot count of one frontend straight from the pinned service map.
func slotCount(b *testing.B, maps *bpf.Maps, fe netip.AddrPort, proto uint8) uint32 {
	addr, fam := bpf.AddrFrom(fe.Addr())
	var v bpf.SvcValue
	if err := maps.SmServices.Lookup(bpf.SvcKey{Vip: addr, Port: bpf.PortToNet(fe.Port()), Proto: proto, Family: fam}, &v); err != nil {
		b.Fatal(err)
	}
	return v.Count
}

// BenchmarkFileEditToProgrammed: from replacing the YAML file (adding one endpoint) to
// the new slot being visible in the kernel map, with 1 and with 10,000 other services
// in the file (the file source decodes the whole file on every change).
func BenchmarkFileEditToProgrammed(b *testing.B) {
	env, _ := benchEnv(b)
	for _, scale := range []int{1, 10000} {
		filler := fillerYAML(scale-1, 2)
		one := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1"))
		two := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "client"))
		a := env.StartAgent(b, env.WriteFile(b, "svc.yaml", one+filler))
		a.WaitMetric(b, "sockmesh_services", nil, float64(4+scale-1), 2*time.Minute)
		a.WaitIdle(b, 300*time.Millisecond, 30*time.Second)
		maps, err := bpf.OpenPinned(env.BPFFS)
		if err != nil {
			b.Fatal(err)
		}
		const edits = 5
		var total time.Duration
		for i := 0; i < edits; i++ {
			want, content := uint32(2), two
			if i%2 == 1 {
				want, content = 1, one
			}
			start := time.Now()
			env.WriteFile(b, "svc.yaml", content+filler)
			for slotCount(b, maps, tcpTo(vip4), 6) != want {
				if time.Since(start) > time.Minute {
					b.Fatal("edit never programmed")
				}
				time.Sleep(time.Millisecond)
			}
			total += time.Since(start)
			a.WaitIdle(b, 200*time.Millisecond, 30*time.Second)
		}
		maps.Close()
		b.ReportMetric(float64((total / edits).Milliseconds()), fmt.Sprintf("svc%d-edit-to-map-ms", scale))
		a.Stop(b)
		if err := bpf.Cleanup(env.BPFFS); err != nil {
			b.Fatal(err)
		}
	}
}
