package lbmap_test

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

func programmedFakes(t *testing.T, maxSvc, maxBackends int) (*lbmaptest.Fakes, *lbmap.Writer, *countingObserver) {
	t.Helper()
	f := newFakes(maxSvc, maxBackends)
	w, obs := mustWriter(t, f)
	w.SetNode("n1", []netip.Addr{netip.MustParseAddr("10.200.0.1")})
	web := svc("default", "web", "10.96.0.10", 80, "10.0.1.1:8080", "10.0.1.2:8080")
	web.PortName = "http"
	api := svc("default", "api", "10.96.0.11", 443, "10.0.1.3:8443")
	if _, err := w.Apply(snapOf(web, api)); err != nil {
		t.Fatal(err)
	}
	return f, w, obs
}

func mustRepair(t *testing.T, w *lbmap.Writer) int {
	t.Helper()
	n, err := w.Repair()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRepairWithoutDriftWritesNothing(t *testing.T) {
	f, w, obs := programmedFakes(t, 16, 64)
	writes, deletes := f.Writes(), f.Deletes()
	if n := mustRepair(t, w); n != 0 || f.Writes() != writes || f.Deletes() != deletes || len(obs.repairs) != 0 {
		t.Fatalf("no drift: Repair returned %d, wrote %d, deleted %d, reported %v", n, f.Writes()-writes, f.Deletes()-deletes, obs.repairs)
	}
}

// Defect: a writer trusted its shadow, so maps emptied by someone else stayed empty.
func TestRepairRefillsClearedMaps(t *testing.T) {
	f, w, obs := programmedFakes(t, 16, 64)
	want := contentOf(f)
	f.Clear()
	n := mustRepair(t, w)
	if err := sameContent(contentOf(f), want); err != nil {
		t.Fatal(err)
	}
	total := len(want.Services) + len(want.Slots) + len(want.Backends) + len(want.Names) + len(want.Local)
	if n != total {
		t.Fatalf("Repair returned %d, want %d", n, total)
	}
	wantRepairs := map[string]int{"sm_services": 2, "sm_slots": 3, "sm_backends": 3, "sm_svc_names": 2, "sm_local": 1}
	for table, k := range wantRepairs {
		if obs.repairs[table] != k {
			t.Fatalf("MapRepairs %v, want %v", obs.repairs, wantRepairs)
		}
	}
	if n := mustRepair(t, w); n != 0 {
		t.Fatalf("second Repair returned %d", n)
	}
}

func TestRepairUndoesEditsAndRemovesForeignEntries(t *testing.T) {
	f, w, _ := programmedFakes(t, 16, 64)
	want := contentOf(f)
	// An edited slot, a deleted backend, a foreign service with its slot and backend.
	for k := range f.Slots.Entries {
		f.Slots.Entries[k] = 9999
		break
	}
	for id := range f.Backends.Entries {
		delete(f.Backends.Entries, id)
		break
	}
	foreign := svc("other", "x", "10.96.9.9", 80)
	f.Services.Entries[svcKeyOf(foreign.Frontend)] = bpf.SvcValue{Id: 777, Count: 1}
	f.Slots.Entries[bpf.SlotKey{SvcId: 777, Slot: 1}] = 7777
	f.Backends.Entries[7777] = bpf.BackendValue{SvcId: 777}
	if n := mustRepair(t, w); n != 5 {
		t.Fatalf("Repair returned %d, want 5 (2 put back, 3 removed)", n)
	}
	if err := sameContent(contentOf(f), want); err != nil {
		t.Fatal(err)
	}
}

// Someone else filled the maps: Repair deletes what is not ours before it puts ours back.
func TestRepairInFullMapsFreesFirst(t *testing.T) {
	f, w, _ := programmedFakes(t, 2, 3)
	want := contentOf(f)
	for k, v := range f.Slots.Entries {
		if v == 1 {
			delete(f.Slots.Entries, k)
		}
	}
	delete(f.Backends.Entries, 1)
	for i := uint32(0); f.Slots.Len() < f.Slots.Max; i++ {
		f.Slots.Entries[bpf.SlotKey{SvcId: 500 + i, Slot: 1}] = 5000 + i
		f.Backends.Entries[5000+i] = bpf.BackendValue{SvcId: 500 + i}
	}
	if _, err := w.Repair(); err != nil {
		t.Fatal(err)
	}
	if err := sameContent(contentOf(f), want); err != nil {
		t.Fatal(err)
	}
	if f.Refused() != 0 {
		t.Fatalf("the fake refused %d writes", f.Refused())
	}
}

func TestRepairBeforeApplyOnlyRereads(t *testing.T) {
	f := newFakes(16, 64)
	w, obs := mustWriter(t, f)
	// Another agent programs a service after this writer started.
	other, _ := mustWriter(t, f)
	api := svc("default", "api", "10.96.0.11", 443, "10.0.1.3:8443")
	if _, err := other.Apply(snapOf(api)); err != nil {
		t.Fatal(err)
	}
	writes := f.Writes()
	if n := mustRepair(t, w); n != 0 || f.Writes() != writes || len(obs.repairs) != 0 {
		t.Fatalf("Repair before Apply returned %d, wrote %d", n, f.Writes()-writes)
	}
	if got := w.Programmed(); got[api.Frontend] != (model.ServiceName{Namespace: "default", Name: "api"}) {
		t.Fatalf("Programmed after Repair = %v", got)
	}
	// The next Apply sees it and changes nothing.
	if _, err := w.Apply(snapOf(api)); err != nil || f.Writes() != writes {
		t.Fatalf("Apply after reread: %v, %d writes", err, f.Writes()-writes)
	}
}

func TestRepairAndApplyConcurrently(t *testing.T) {
	f := newFakes(16, 64)
	w, _ := mustWriter(t, f)
	snaps := []*model.Snapshot{
		snapOf(svc("default", "web", "10.96.0.10", 80, "10.0.1.1:80", "10.0.1.2:80")),
		snapOf(svc("default", "web", "10.96.0.10", 80, "10.0.1.3:80"), svc("default", "api", "10.96.0.11", 80, "10.0.1.4:80")),
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			if _, err := w.Apply(snaps[i%2]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			if n, err := w.Repair(); err != nil || n != 0 {
				t.Errorf("Repair with no drift: %d, %v", n, err)
				return
			}
			_ = w.Programmed()
		}
	}()
	wg.Wait()
	if err := sameContent(contentOf(f), lbmap.ShadowOf(w)); err != nil {
		t.Fatal(err)
	}
}

func TestProgrammedNamesTheHolder(t *testing.T) {
	f, w, _ := programmedFakes(t, 16, 64)
	want := map[model.Frontend]model.ServiceName{
		{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP}:  {Namespace: "default", Name: "web"},
		{Addr: netip.MustParseAddr("10.96.0.11"), Port: 443, Protocol: model.TCP}: {Namespace: "default", Name: "api"},
	}
	check := func(w *lbmap.Writer) {
		t.Helper()
		got := w.Programmed()
		if len(got) != len(want) {
			t.Fatalf("Programmed = %v, want %v", got, want)
		}
		for fe, name := range want {
			if got[fe] != name {
				t.Fatalf("Programmed = %v, want %v", got, want)
			}
		}
	}
	check(w)
	// A restarted agent reads them from the maps.
	w2, _ := mustWriter(t, f)
	check(w2)
}

// A Repair that fails keeps what it was putting back: the next one finishes the job.
func TestFailedRepairIsRetried(t *testing.T) {
	f, w, _ := programmedFakes(t, 16, 64)
	want := contentOf(f)
	f.Clear()
	f.Slots.FailUpdateAfter(1)
	if _, err := w.Repair(); err == nil {
		t.Fatal("want the injected failure")
	}
	if err := sameContent(contentOf(f), lbmap.ShadowOf(w)); err != nil {
		t.Fatalf("after a failed Repair, maps and shadow: %v", err)
	}
	mustRepair(t, w)
	if err := sameContent(contentOf(f), want); err != nil {
		t.Fatal(err)
	}
}
