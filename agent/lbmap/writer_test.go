package lbmap_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

var (
	svcKeyOf   = lbmap.SvcKeyOf
	slotCounts = lbmap.SlotCounts
	newFakes   = lbmaptest.NewTables
)

type countingObserver struct {
	updates, deletes, errors int
	repairs                  map[string]int
}

func (o *countingObserver) MapOp(table, op string, n int, err error) {
	if op == "update" {
		o.updates += n
	} else {
		o.deletes += n
	}
	if err != nil {
		o.errors++
	}
}

func (o *countingObserver) MapRepairs(table string, n int) {
	if o.repairs == nil {
		o.repairs = map[string]int{}
	}
	o.repairs[table] += n
}

func svc(ns, name, vip string, port uint16, backends ...string) *model.Service {
	s := &model.Service{
		Name:     model.ServiceName{Namespace: ns, Name: name},
		Frontend: model.Frontend{Addr: netip.MustParseAddr(vip), Port: port, Protocol: model.TCP},
	}
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		s.Backends = append(s.Backends, model.Backend{Addr: ap.Addr(), Port: ap.Port(), Weight: 1, Ready: true, Serving: true})
	}
	return s
}

func snapOf(svcs ...*model.Service) *model.Snapshot {
	s := model.NewSnapshot()
	for _, v := range svcs {
		s.Services[v.Frontend] = v
	}
	return s
}

func mustWriter(t testing.TB, f *lbmaptest.Fakes) (*lbmap.Writer, *countingObserver) {
	t.Helper()
	obs := &countingObserver{}
	w, err := lbmap.NewWriter(f.Tables(), obs)
	if err != nil {
		t.Fatal(err)
	}
	return w, obs
}

func TestApplyProgramsAndIsIdempotent(t *testing.T) {
	f := newFakes(16, 64)
	w, _ := mustWriter(t, f)
	snap := snapOf(svc("default", "web", "10.96.0.10", 80, "10.0.1.1:8080", "10.0.1.2:8080"),
		svc("default", "dns", "fd00::a", 53, "[fd00:1::1]:53"))
	if _, err := w.Apply(snap); err != nil {
		t.Fatal(err)
	}
	if f.Services.Len() != 2 || f.Backends.Len() != 3 || f.Slots.Len() != 3 || f.Names.Len() != 2 {
		t.Fatalf("maps: %d services %d backends %d slots %d names", f.Services.Len(), f.Backends.Len(), f.Slots.Len(), f.Names.Len())
	}
	v := f.Services.Entries[svcKeyOf(snap.SortedServices()[0].Frontend)]
	if v.Count != 2 {
		t.Fatalf("web count = %d, want 2", v.Count)
	}
	before := f.Writes()
	if _, err := w.Apply(snap); err != nil {
		t.Fatal(err)
	}
	if f.Writes() != before {
		t.Fatalf("second Apply of the same snapshot wrote %d entries", f.Writes()-before)
	}
}

func TestRestartAdoptsMapsWithoutRewriting(t *testing.T) {
	f := newFakes(16, 64)
	w, _ := mustWriter(t, f)
	web := svc("default", "web", "10.96.0.10", 80, "10.0.1.1:8080", "10.0.1.2:8080")
	web.AffinityTimeout = 3 * time.Hour
	snap := snapOf(web, svc("default", "api", "10.96.0.11", 443, "10.0.1.3:8443"))
	if _, err := w.Apply(snap); err != nil {
		t.Fatal(err)
	}
	// A new writer (a restarted agent) over the same maps.
	w2, obs := mustWriter(t, f)
	if _, err := w2.Apply(snap); err != nil {
		t.Fatal(err)
	}
	if obs.updates != 0 || obs.deletes != 0 {
		t.Fatalf("restart with an unchanged model: %d updates, %d deletes; want none", obs.updates, obs.deletes)
	}
	// One change while down: only that service's entries move.
	snap2 := snapOf(web, svc("default", "api", "10.96.0.11", 443, "10.0.1.3:8443", "10.0.1.4:8443"))
	w3, obs3 := mustWriter(t, f)
	if _, err := w3.Apply(snap2); err != nil {
		t.Fatal(err)
	}
	// new backend + new slot + service count
	if obs3.updates != 3 || obs3.deletes != 0 {
		t.Fatalf("one added backend: %d updates %d deletes, want 3 and 0", obs3.updates, obs3.deletes)
	}
}

func TestRemovalAndKEP1669Fallback(t *testing.T) {
	f := newFakes(16, 64)
	w, _ := mustWriter(t, f)
	web := svc("default", "web", "10.96.0.10", 80, "10.0.1.1:8080", "10.0.1.2:8080")
	if _, err := w.Apply(snapOf(web)); err != nil {
		t.Fatal(err)
	}
	// Both endpoints terminate but keep serving: they stay selected.
	for i := range web.Backends {
		web.Backends[i].Ready = false
		web.Backends[i].Terminating = true
	}
	if _, err := w.Apply(snapOf(web)); err != nil {
		t.Fatal(err)
	}
	if c := f.Services.Entries[svcKeyOf(web.Frontend)].Count; c != 2 {
		t.Fatalf("serving+terminating fallback: count %d, want 2", c)
	}
	// No longer serving: the service stays, with no backend (connects are refused).
	for i := range web.Backends {
		web.Backends[i].Serving = false
	}
	if _, err := w.Apply(snapOf(web)); err != nil {
		t.Fatal(err)
	}
	if c := f.Services.Entries[svcKeyOf(web.Frontend)].Count; c != 0 || f.Backends.Len() != 0 || f.Slots.Len() != 0 {
		t.Fatalf("no usable backend: count %d, %d backends, %d slots", c, f.Backends.Len(), f.Slots.Len())
	}
	if _, err := w.Apply(snapOf()); err != nil {
		t.Fatal(err)
	}
	if f.Services.Len()+f.Names.Len() != 0 {
		t.Fatalf("deleted service left %d services, %d names", f.Services.Len(), f.Names.Len())
	}
}

func TestFullMapRejectsNewServiceAndKeepsProgrammed(t *testing.T) {
	f := newFakes(2, 64)
	w, _ := mustWriter(t, f)
	a := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80")
	b := svc("default", "b", "10.96.0.2", 80, "10.0.1.2:80")
	if _, err := w.Apply(snapOf(a, b)); err != nil {
		t.Fatal(err)
	}
	// "aa" sorts before "b" but must not evict it.
	c := svc("default", "aa", "10.96.0.0", 80, "10.0.1.3:80")
	res, err := w.Apply(snapOf(c, a, b))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || res.Errors[0].Reason != "map_full" || res.Errors[0].Name != "aa" ||
		!strings.Contains(res.Errors[0].Message, "--max-services") {
		t.Fatalf("errors = %+v", res.Errors)
	}
	if _, ok := f.Services.Entries[svcKeyOf(b.Frontend)]; !ok {
		t.Fatal("programmed service b was evicted by a new one")
	}
	if _, ok := f.Services.Entries[svcKeyOf(c.Frontend)]; ok {
		t.Fatal("service aa programmed into a full map")
	}
}

func TestBackendOverflowKeepsLastProgrammedState(t *testing.T) {
	f := newFakes(4, 3)
	w, _ := mustWriter(t, f)
	a := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80", "10.0.1.2:80")
	if _, err := w.Apply(snapOf(a)); err != nil {
		t.Fatal(err)
	}
	grown := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80")
	res, err := w.Apply(snapOf(grown))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || !strings.Contains(res.Errors[0].Message, "keeping the last programmed") {
		t.Fatalf("errors = %+v", res.Errors)
	}
	if c := f.Services.Entries[svcKeyOf(a.Frontend)].Count; c != 2 || f.Backends.Len() != 2 {
		t.Fatalf("after rejected growth: count %d, %d backends; want the old 2", c, f.Backends.Len())
	}
}

func TestWriteFailureLeavesConsistentMapsAndRetrySucceeds(t *testing.T) {
	f := newFakes(16, 64)
	w, obs := mustWriter(t, f)
	a := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80")
	if _, err := w.Apply(snapOf(a)); err != nil {
		t.Fatal(err)
	}
	b := svc("default", "b", "10.96.0.2", 80, "10.0.1.2:80", "10.0.1.3:80")
	f.Slots.FailUpdateAfter(1)
	if _, err := w.Apply(snapOf(a, b)); err == nil || !strings.Contains(err.Error(), "sm_slots") {
		t.Fatalf("want an error naming sm_slots, got %v", err)
	}
	if obs.errors != 1 {
		t.Fatalf("observer saw %d errors, want 1", obs.errors)
	}
	if _, ok := f.Services.Entries[svcKeyOf(b.Frontend)]; ok {
		t.Fatal("service b published before its slots were written")
	}
	if _, ok := f.Services.Entries[svcKeyOf(a.Frontend)]; !ok {
		t.Fatal("service a lost after an unrelated write failure")
	}
	if _, err := w.Apply(snapOf(a, b)); err != nil {
		t.Fatal(err)
	}
	if c := f.Services.Entries[svcKeyOf(b.Frontend)].Count; c != 2 {
		t.Fatalf("after retry b count %d, want 2", c)
	}
}

func TestWeightsExpandSlots(t *testing.T) {
	if got := slotCounts([]int{2, 4, 6}, 100); got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("gcd reduction: %v", got)
	}
	if got := slotCounts([]int{1000, 1}, 100); got[0] != 99 || got[1] != 1 {
		t.Fatalf("scaled: %v", got)
	}
	f := newFakes(4, 64)
	w, _ := mustWriter(t, f)
	a := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80", "10.0.1.2:80")
	a.Backends[0].Weight = 3
	if _, err := w.Apply(snapOf(a)); err != nil {
		t.Fatal(err)
	}
	perBackend := map[uint32]int{}
	for _, bid := range f.Slots.Entries {
		perBackend[bid]++
	}
	for bid, b := range f.Backends.Entries {
		want := 1
		if b.Addr.ToAddr(b.Family) == netip.MustParseAddr("10.0.1.1") {
			want = 3
		}
		if perBackend[bid] != want {
			t.Fatalf("backend %d has %d slots, want %d", bid, perBackend[bid], want)
		}
	}
}

func TestL7FlagAndLocalAddresses(t *testing.T) {
	f := newFakes(16, 64)
	w, _ := mustWriter(t, f)
	envoy := netip.MustParseAddr("10.200.0.1")
	w.SetNode("node-1", []netip.Addr{envoy})
	web := svc("default", "web", "10.96.0.10", 80, "10.0.1.1:8080", "10.0.1.2:8080")
	web.L7 = true
	web.Backends[0].NodeName = "node-1"
	web.Backends[1].NodeName = "node-2"
	if _, err := w.Apply(snapOf(web)); err != nil {
		t.Fatal(err)
	}
	if fl := f.Services.Entries[svcKeyOf(web.Frontend)].Flags; fl&bpf.SvcFlagL7 == 0 {
		t.Fatalf("L7 service flags %#x", fl)
	}
	want := map[netip.Addr]bool{envoy: true, netip.MustParseAddr("10.0.1.1"): true}
	if f.Local.Len() != len(want) {
		t.Fatalf("local addresses %v, want %v", f.Local.Entries, want)
	}
	for k := range f.Local.Entries {
		if !want[k.ToAddr(bpf.FamilyIPv4)] {
			t.Fatalf("unexpected local address %v", k.ToAddr(bpf.FamilyIPv4))
		}
	}
}
