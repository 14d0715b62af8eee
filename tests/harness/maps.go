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
	svcs, err := lbmap.List(lbmap.BPFTables(maps))
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
