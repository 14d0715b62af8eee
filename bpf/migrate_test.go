package bpf_test

import (
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// An agent of this version started on pins of the old hash layout moves every backend
// into the array, with each one's slot count, and the array takes the pin's place.
// Ids beyond the array (old agents never reused one) move to the lowest free ids,
// their slots with them, and the old hash resolves both ids while old programs run.
func TestLoadMigratesTheHashBackendPin(t *testing.T) {
	dir := pinDir(t)
	lim := bpf.Limits{MaxServices: 64, MaxBackends: 64}
	dp, err := bpf.Load(dir, lim)
	if err != nil {
		t.Fatal(err)
	}
	addr, fam := bpf.AddrFrom(netip.MustParseAddr("10.0.0.7"))
	want := map[uint32]bpf.BackendValue{
		5:  {Addr: addr, Port: bpf.PortToNet(8080), Proto: 6, Family: fam, SvcId: 1, Slots: 2},
		9:  {Addr: addr, Port: bpf.PortToNet(8081), Proto: 6, Family: fam, SvcId: 1, Slots: 1},
		64: {Addr: addr, Port: bpf.PortToNet(53), Proto: 17, Family: fam, SvcId: 2, Slots: 0},
	}
	for slot, id := range map[uint32]uint32{1: 5, 2: 5, 3: 9, 4: 700, 5: 70, 6: 700} {
		if err := dp.Maps().SmSlots.Put(bpf.SlotKey{SvcId: 1, Slot: slot}, id); err != nil {
			t.Fatal(err)
		}
	}
	dp.Close()
	beyond := map[uint32]bpf.BackendValue{
		70:  {Addr: addr, Port: bpf.PortToNet(8082), Proto: 6, Family: fam, SvcId: 1},
		700: {Addr: addr, Port: bpf.PortToNet(8083), Proto: 6, Family: fam, SvcId: 1},
	}
	legacy := maps.Clone(want)
	maps.Copy(legacy, beyond)
	oldHash := harness.PinLegacyBackends(t, dir, legacy)
	// 70 and 700 take ids 1 and 2, in that order, their slot counts from the slots.
	beyond[70], beyond[700] = withSlots(beyond[70], 1), withSlots(beyond[700], 2)
	want[1], want[2] = beyond[70], beyond[700]

	dp, err = bpf.Load(dir, lim)
	if err != nil {
		t.Fatal(err)
	}
	got, err := bpf.NewArrayTable[bpf.BackendValue](dp.Maps().SmBackends).Dump()
	dp.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("migrated %d backends, want %d: %+v", len(got), len(want), got)
	}
	for id, v := range want {
		if got[id] != v {
			t.Errorf("backend %d: migrated %+v, want %+v", id, got[id], v)
		}
	}
	for from, to := range map[uint32]uint32{70: 1, 700: 2} {
		var a, b harness.LegacyBackendValue
		if oldHash.Lookup(from, &a) != nil || oldHash.Lookup(to, &b) != nil || a != b {
			t.Errorf("the old programs' hash does not resolve backend %d under both %d and %d", from, from, to)
		}
	}
	slots, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sm_slots"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	for slot, id := range map[uint32]uint32{1: 5, 2: 5, 3: 9, 4: 2, 5: 1, 6: 2} {
		var got uint32
		if err := slots.Lookup(bpf.SlotKey{SvcId: 1, Slot: slot}, &got); err != nil || got != id {
			t.Errorf("slot %d names backend %d (%v), want %d", slot, got, err, id)
		}
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sm_backends"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if pinned.Type() != ebpf.Array {
		t.Fatalf("the sm_backends pin is a %s after the migration, want the array", pinned.Type())
	}
	if _, err := os.Stat(filepath.Join(dir, "sm_backends_migrating")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the migration left its temporary pin (%v)", err)
	}
}

func withSlots(v bpf.BackendValue, n uint32) bpf.BackendValue { v.Slots = n; return v }

// A hash pin holding more backends than the array can fails the start with what to
// do, and the pin stays as it was.
func TestLoadRefusesAMigrationThatDoesNotFit(t *testing.T) {
	dir := pinDir(t)
	lim := bpf.Limits{MaxServices: 64, MaxBackends: 64}
	dp, err := bpf.Load(dir, lim)
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	addr, fam := bpf.AddrFrom(netip.MustParseAddr("10.0.0.7"))
	tooMany := map[uint32]bpf.BackendValue{}
	for id := uint32(1); id <= 65; id++ {
		tooMany[id*3] = bpf.BackendValue{Addr: addr, Port: uint16(id), Proto: 6, Family: fam, SvcId: 1}
	}
	harness.PinLegacyBackends(t, dir, tooMany)
	_, err = bpf.Load(dir, lim)
	if err == nil || !strings.Contains(err.Error(), "65 backends do not fit in --max-backends 64") || !strings.Contains(err.Error(), "sockmesh cleanup") {
		t.Fatalf("start over a hash pin of 65 backends with --max-backends 64: %v", err)
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sm_backends"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	var v harness.LegacyBackendValue
	if pinned.Type() != ebpf.Hash || pinned.Lookup(uint32(65*3), &v) != nil {
		t.Fatalf("the refused migration changed the pin: a %s", pinned.Type())
	}
}
