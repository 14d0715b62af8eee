package harness

import (
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
)

// PinnedServices reads the services programmed in the env's pinned maps.
func (e *Env) PinnedServices(t testing.TB) []lbmap.ListedService {
	t.Helper()
	maps, err := bpf.OpenPinned(e.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	svcs, err := lbmap.ListMaps(maps)
	if err != nil {
		t.Fatal(err)
	}
	return svcs
}

// WaitPinned polls the pinned maps until cond holds and returns how long that took.
// The deadline is generous on purpose: the test asserts the outcome, the latency is
// measured by the benchmarks.
func (e *Env) WaitPinned(t testing.TB, what string, cond func([]lbmap.ListedService) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		if cond(e.PinnedServices(t)) {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("maps never showed %s: %+v", what, e.PinnedServices(t))
	return 0
}

// Frontend finds one programmed frontend by its String form, e.g. "10.96.0.10:80/TCP".
func Frontend(svcs []lbmap.ListedService, fe string) (lbmap.ListedService, bool) {
	for _, s := range svcs {
		if s.Frontend == fe {
			return s, true
		}
	}
	return lbmap.ListedService{}, false
}

// Counters reads the datapath's counters from the env's pins, by name.
func (e *Env) Counters(t testing.TB) map[string]uint64 {
	t.Helper()
	maps, err := bpf.OpenPinned(e.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	all, err := maps.Counters()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for i, name := range bpf.CounterNames {
		if name != "" {
			out[name] = all[i]
		}
	}
	return out
}

// DatapathConfig reads the runtime config the agent programmed (sm_config).
func (e *Env) DatapathConfig(t testing.TB) bpf.Config {
	t.Helper()
	maps, err := bpf.OpenPinned(e.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	var c bpf.Config
	if err := maps.SmConfig.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// SetDatapathConfig writes sm_config, as root can behind the agent's back: how tests
// force a setting the agent would not choose.
func (e *Env) SetDatapathConfig(t testing.TB, c bpf.Config) {
	t.Helper()
	maps, err := bpf.OpenPinned(e.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if err := maps.SmConfig.Put(uint32(0), c); err != nil {
		t.Fatal(err)
	}
}
