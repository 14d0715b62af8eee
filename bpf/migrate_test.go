package bpf_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf"
)

// legacyValue is a backend value as agents before the array layout stored it.
type legacyValue [unsafe.Offsetof(bpf.BackendValue{}.Slots)]byte

func legacyOf(v bpf.BackendValue) legacyValue { return *(*legacyValue)(unsafe.Pointer(&v)) }

// pinLegacyBackends replaces dir's sm_backends pin with a hash map of the old layout
// holding entries, as an agent of the old version leaves it.
func pinLegacyBackends(t *testing.T, dir string, entries map[uint32]bpf.BackendValue) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sm_backends", Type: ebpf.Hash, KeySize: 4,
		ValueSize: uint32(len(legacyValue{})), MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for id, v := range entries {
		if err := m.Put(id, legacyOf(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "sm_backends")); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(dir, "sm_backends")); err != nil {
		t.Fatal(err)
	}
}

// An agent of this version started on pins of the old hash layout moves every backend
// into the array, with each one's slot count, and the array takes the pin's place.
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
	for slot, id := range map[uint32]uint32{1: 5, 2: 5, 3: 9} {
		if err := dp.Maps().SmSlots.Put(bpf.SlotKey{SvcId: 1, Slot: slot}, id); err != nil {
			t.Fatal(err)
		}
	}
	dp.Close()
	pinLegacyBackends(t, dir, want)

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

// A hash pin holding an id the array cannot hold fails the start with what to do, and
// the pin stays as it was.
func TestLoadRefusesAMigrationThatDoesNotFit(t *testing.T) {
	dir := pinDir(t)
	lim := bpf.Limits{MaxServices: 64, MaxBackends: 64}
	dp, err := bpf.Load(dir, lim)
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	addr, fam := bpf.AddrFrom(netip.MustParseAddr("10.0.0.7"))
	pinLegacyBackends(t, dir, map[uint32]bpf.BackendValue{65: {Addr: addr, Port: 1, Proto: 6, Family: fam, SvcId: 1}})
	_, err = bpf.Load(dir, lim)
	if err == nil || !strings.Contains(err.Error(), "backend id 65") || !strings.Contains(err.Error(), "--max-backends") {
		t.Fatalf("start over a hash pin whose id 65 exceeds --max-backends 64: %v", err)
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sm_backends"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	var v legacyValue
	if pinned.Type() != ebpf.Hash || pinned.Lookup(uint32(65), &v) != nil {
		t.Fatalf("the refused migration changed the pin: a %s", pinned.Type())
	}
}
