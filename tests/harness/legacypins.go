package harness

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf"
)

// LegacyBackendValue is a backend value as agents before the array layout stored it:
// today's value without its trailing slot count.
type LegacyBackendValue [unsafe.Offsetof(bpf.BackendValue{}.Slots)]byte

// LegacyOf is v in the old layout.
func LegacyOf(v bpf.BackendValue) LegacyBackendValue {
	return *(*LegacyBackendValue)(unsafe.Pointer(&v))
}

// PinLegacyBackends replaces dir's sm_backends pin with a hash map of the old layout
// holding entries, as an agent of the old version leaves it, and returns that map (as
// the old programs would hold it); it is closed when the test ends.
func PinLegacyBackends(t testing.TB, dir string, entries map[uint32]bpf.BackendValue) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sm_backends", Type: ebpf.Hash, KeySize: 4,
		ValueSize: uint32(len(LegacyBackendValue{})), MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for id, v := range entries {
		if err := m.Put(id, LegacyOf(v)); err != nil {
			t.Fatal(err)
		}
	}
	pin := filepath.Join(dir, "sm_backends")
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(pin); err != nil {
		t.Fatal(err)
	}
	return m
}
