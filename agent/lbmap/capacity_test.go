package lbmap_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// backendIDs maps each backend address of service fe to its id in the fake.
func backendIDs(f *lbmaptest.Fakes, fe model.Frontend) map[netip.AddrPort]uint32 {
	v, ok := f.Services.Entries[svcKeyOf(fe)]
	if !ok {
		return nil
	}
	out := map[netip.AddrPort]uint32{}
	for id, b := range f.Backends.Entries {
		if b.SvcId == v.Id {
			out[netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port))] = id
		}
	}
	return out
}

// completeWriter is a writer over f whose every map call is checked to leave only
// complete services, as a connect() racing with the writer needs.
func completeWriter(t *testing.T, f *lbmaptest.Fakes) *lbmap.Writer {
	t.Helper()
	w, err := lbmap.NewWriter(checkedTables(f, func() {
		if err := checkComplete(contentOf(f)); err != nil {
			t.Errorf("between two map calls: %v", err)
		}
	}), &countingObserver{})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// Defect: with the maps exactly full, swapping one endpoint needed room for both
// backend sets and failed on every retry.
func TestEndpointSwapInFullMapsReusesTheFreedID(t *testing.T) {
	f := newFakes(4, 2)
	w := completeWriter(t, f)
	web := svc("default", "web", "10.96.0.10", 80, "10.0.1.11:80", "10.0.1.12:80")
	if _, err := w.Apply(snapOf(web)); err != nil {
		t.Fatal(err)
	}
	before := backendIDs(f, web.Frontend)

	swapped := svc("default", "web", "10.96.0.10", 80, "10.0.1.11:80", "10.0.1.13:80")
	res, err := w.Apply(snapOf(swapped))
	if err != nil || len(res.Errors) != 0 {
		t.Fatalf("swap in full maps: err %v, errors %+v", err, res.Errors)
	}
	after := backendIDs(f, web.Frontend)
	if len(after) != 2 || after[ap("10.0.1.11:80")] != before[ap("10.0.1.11:80")] {
		t.Fatalf("kept backend changed id: before %v, after %v", before, after)
	}
	if after[ap("10.0.1.13:80")] != before[ap("10.0.1.12:80")] {
		t.Fatalf("new backend did not take the dropped one's id in place: before %v, after %v", before, after)
	}
	if f.Refused() != 0 {
		t.Fatalf("the fake refused %d writes", f.Refused())
	}
}

// Defect: one stuck update stopped Apply, so a deleted service freed nothing and a new
// one was never programmed.
func TestFullMapsDeleteFirstAndProgramWhatFits(t *testing.T) {
	f := newFakes(4, 3)
	w := completeWriter(t, f)
	web := svc("default", "web", "10.96.0.10", 80, "10.0.1.11:80", "10.0.1.12:80")
	api := svc("default", "api", "10.96.0.20", 80, "10.0.2.1:80")
	if _, err := w.Apply(snapOf(web, api)); err != nil {
		t.Fatal(err)
	}
	// One endpoint swapped, api deleted, db new: db fits only in the room api frees.
	web2 := svc("default", "web", "10.96.0.10", 80, "10.0.1.11:80", "10.0.1.13:80")
	db := svc("default", "db", "10.96.0.30", 5432, "10.0.3.1:5432")
	res, err := w.Apply(snapOf(web2, db))
	if err != nil || len(res.Errors) != 0 {
		t.Fatalf("err %v, errors %+v", err, res.Errors)
	}
	if _, ok := f.Services.Entries[svcKeyOf(api.Frontend)]; ok {
		t.Fatal("deleted service api still programmed")
	}
	if got := backendIDs(f, db.Frontend); len(got) != 1 {
		t.Fatalf("db backends %v, want 1", got)
	}
	if got := backendIDs(f, web2.Frontend); len(got) != 2 || got[ap("10.0.1.13:80")] == 0 {
		t.Fatalf("web backends %v", got)
	}
	if err := checkNoLeftovers(contentOf(f)); err != nil {
		t.Fatal(err)
	}
	if f.Refused() != 0 {
		t.Fatalf("the fake refused %d writes", f.Refused())
	}
}

// Defect: a refused growth used to block every other change of the same Apply.
func TestRefusedGrowthDoesNotBlockDeletionsUpdatesOrWhatFits(t *testing.T) {
	f := newFakes(8, 4)
	w := completeWriter(t, f)
	a := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80", "10.0.1.2:80")
	b := svc("default", "b", "10.96.0.2", 80, "10.0.2.1:80")
	c := svc("default", "c", "10.96.0.3", 80, "10.0.3.1:80")
	if _, err := w.Apply(snapOf(a, b, c)); err != nil {
		t.Fatal(err)
	}
	aGrown := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80")
	bMoved := svc("default", "b", "10.96.0.2", 80, "10.0.2.2:80")
	d := svc("default", "d", "10.96.0.4", 80, "10.0.4.1:80")
	res, err := w.Apply(snapOf(aGrown, bMoved, d))
	if err != nil {
		t.Fatalf("capacity must not fail Apply: %v", err)
	}
	if len(res.Errors) != 1 || res.Errors[0].Name != "a" || res.Errors[0].Reason != "map_full" ||
		!strings.Contains(res.Errors[0].Message, "keeping the last programmed") ||
		!strings.Contains(res.Errors[0].Message, "--max-backends") {
		t.Fatalf("errors = %+v", res.Errors)
	}
	if got := backendIDs(f, a.Frontend); len(got) != 2 || f.Services.Entries[svcKeyOf(a.Frontend)].Count != 2 {
		t.Fatalf("refused a: backends %v, want its last programmed 2", got)
	}
	if got := backendIDs(f, b.Frontend); len(got) != 1 || got[ap("10.0.2.2:80")] == 0 {
		t.Fatalf("b not updated: %v", got)
	}
	if _, ok := f.Services.Entries[svcKeyOf(c.Frontend)]; ok {
		t.Fatal("c not deleted")
	}
	if got := backendIDs(f, d.Frontend); len(got) != 1 {
		t.Fatalf("d not programmed in the room c freed: %v", got)
	}
	if f.Refused() != 0 {
		t.Fatalf("the fake refused %d writes", f.Refused())
	}
	// Nothing changed: nothing written, the same refusal.
	writes, deletes := f.Writes(), f.Deletes()
	res, err = w.Apply(snapOf(aGrown, bMoved, d))
	if err != nil || len(res.Errors) != 1 || f.Writes() != writes || f.Deletes() != deletes {
		t.Fatalf("repeat: err %v, errors %+v, %d writes %d deletes", err, res.Errors, f.Writes()-writes, f.Deletes()-deletes)
	}
}

// Slots grow before the count rises and shrink after it falls; backends go after the
// slots that used them: checked after every map call by completeWriter.
func TestGrowAndShrinkKeepServicesComplete(t *testing.T) {
	f := newFakes(4, 16)
	w := completeWriter(t, f)
	steps := [][]string{
		{"10.0.1.1:80"},
		{"10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"},
		{"10.0.1.3:80"},
		{"10.0.1.4:80", "10.0.1.5:80"},
		{},
		{"10.0.1.6:80", "10.0.1.7:80"},
	}
	for i, bs := range steps {
		s := svc("default", "web", "10.96.0.10", 80, bs...)
		if i == 3 {
			s.Backends[0].Weight = 5
		}
		if _, err := w.Apply(snapOf(s)); err != nil {
			t.Fatal(err)
		}
		if err := checkNoLeftovers(contentOf(f)); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
}

// A failed write leaves the writer knowing exactly what the maps hold; the retry
// continues under the same ids and leaves nothing behind.
func TestWriteFailureKeepsShadowExactAndRetryReusesWrittenEntries(t *testing.T) {
	f := newFakes(16, 64)
	w := completeWriter(t, f)
	a := svc("default", "a", "10.96.0.1", 80, "10.0.1.1:80", "10.0.1.2:80")
	b := svc("default", "b", "10.96.0.2", 80, "10.0.2.1:80", "10.0.2.2:80", "10.0.2.3:80")
	if _, err := w.Apply(snapOf(a)); err != nil {
		t.Fatal(err)
	}
	f.Slots.FailUpdateAfter(1)
	if _, err := w.Apply(snapOf(b)); err == nil {
		t.Fatal("want the injected failure")
	}
	if err := sameContent(contentOf(f), lbmap.ShadowOf(w)); err != nil {
		t.Fatalf("after a failed write, shadow and maps: %v", err)
	}
	if _, ok := f.Services.Entries[svcKeyOf(a.Frontend)]; ok {
		t.Fatal("a not deleted before b was added")
	}
	writes := f.Writes()
	if _, err := w.Apply(snapOf(b)); err != nil {
		t.Fatal(err)
	}
	// 2 slots, 1 name and the service are left to write; the 3 backends are there.
	if n := f.Writes() - writes; n != 4 {
		t.Fatalf("retry wrote %d entries, want 4", n)
	}
	if err := checkNoLeftovers(contentOf(f)); err != nil {
		t.Fatal(err)
	}

	// A failed delete too.
	f.Backends.FailDeleteAfter(1)
	if _, err := w.Apply(snapOf(a)); err == nil {
		t.Fatal("want the injected failure")
	}
	if err := sameContent(contentOf(f), lbmap.ShadowOf(w)); err != nil {
		t.Fatalf("after a failed delete, shadow and maps: %v", err)
	}
	if _, err := w.Apply(snapOf(a)); err != nil {
		t.Fatal(err)
	}
	if err := checkNoLeftovers(contentOf(f)); err != nil {
		t.Fatal(err)
	}
}

// What a failed pass wrote ahead of a new service goes when the service is dropped.
func TestLeftoversOfAnUnpublishedServiceAreRemoved(t *testing.T) {
	f := newFakes(16, 64)
	w := completeWriter(t, f)
	b := svc("default", "b", "10.96.0.2", 80, "10.0.2.1:80", "10.0.2.2:80")
	f.Services.FailUpdateAfter(0)
	if _, err := w.Apply(snapOf(b)); err == nil {
		t.Fatal("want the injected failure")
	}
	if f.Backends.Len() == 0 {
		t.Fatal("test wants backends written ahead of the service")
	}
	if _, err := w.Apply(snapOf()); err != nil {
		t.Fatal(err)
	}
	if n := f.Slots.Len() + f.Backends.Len() + f.Names.Len(); n != 0 {
		t.Fatalf("%d entries left behind", n)
	}
}

func TestLocalAddressesBeyondTheMapAreReported(t *testing.T) {
	f := newFakes(4, 16)
	f.Local.Max = 2
	w, _ := mustWriter(t, f)
	w.SetNode("n1", []netip.Addr{netip.MustParseAddr("10.200.0.1")})
	s := svc("default", "web", "10.96.0.10", 80, "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80")
	for i := range s.Backends {
		s.Backends[i].NodeName = "n1"
	}
	res, err := w.Apply(snapOf(s))
	if err != nil {
		t.Fatal(err)
	}
	if f.Local.Len() != 2 || f.Refused() != 0 || len(res.Errors) != 1 || res.Errors[0].Kind != "Node" {
		t.Fatalf("local %v, refused %d, errors %+v", f.Local.Entries, f.Refused(), res.Errors)
	}
}
