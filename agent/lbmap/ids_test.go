package lbmap_test

import (
	"fmt"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
)

// The backend map is an array by id, so churn must reuse the ids of removed backends:
// fifty rounds that each replace every backend of two services, in maps with room for
// 24 backends, program every round in full, never with an id beyond 24, and slot
// counts in the values that match the slots.
func TestBackendIDsAreReusedUnderChurn(t *testing.T) {
	f := lbmaptest.NewTables(8, 24)
	w, err := lbmap.NewWriter(f.Tables(), &countingObserver{})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 50 {
		var a, b []string
		for i := range 8 {
			a = append(a, fmt.Sprintf("10.1.%d.%d:80", round, i))
			b = append(b, fmt.Sprintf("10.2.%d.%d:80", round, i))
		}
		snap := snapOf(svc("ns", "a", "10.96.0.1", 80, a...), svc("ns", "b", "10.96.0.2", 80, b...))
		res, err := w.Apply(snap)
		if err != nil || len(res.Errors) > 0 || res.Backends != 16 {
			t.Fatalf("round %d: %d backends programmed, errors %v, %v", round, res.Backends, res.Errors, err)
		}
		slots := map[uint32]uint32{}
		for _, id := range f.Slots.Entries {
			slots[id]++
		}
		for id, v := range f.Backends.Entries {
			if id < 1 || id > 24 {
				t.Fatalf("round %d: backend id %d outside the array's 1..24", round, id)
			}
			if v.Slots != slots[id] {
				t.Fatalf("round %d: backend %d says %d slots, %d pick it", round, id, v.Slots, slots[id])
			}
		}
	}
	if f.Backends.Refused != 0 {
		t.Fatalf("%d backend writes were refused", f.Backends.Refused)
	}
}

// Weighted backends carry their slot count; one listed twice counts each listing.
func TestBackendValuesCarryTheirSlotCount(t *testing.T) {
	f := lbmaptest.NewTables(8, 64)
	w, err := lbmap.NewWriter(f.Tables(), &countingObserver{})
	if err != nil {
		t.Fatal(err)
	}
	s := svc("ns", "a", "10.96.0.1", 80, "10.1.0.1:80", "10.1.0.2:80", "10.1.0.1:80")
	s.Backends[1].Weight = 3
	if _, err := w.Apply(snapOf(s)); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint32{}
	for _, v := range f.Backends.Entries {
		got[v.Addr.ToAddr(v.Family).String()] = v.Slots
	}
	if want := map[string]uint32{"10.1.0.1": 2, "10.1.0.2": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("slot counts %v, want %v", got, want)
	}
}
