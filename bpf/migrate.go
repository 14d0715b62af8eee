package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// legacyBackendValue is a backend value as agents before the array layout stored it:
// today's value without its trailing slot count.
type legacyBackendValue [unsafe.Offsetof(BackendValue{}.Slots)]byte

// migrateBackends replaces a sm_backends pin of the old hash layout with the array this
// agent loads, holding the same entries and each one's slot count, so an upgrade keeps
// every programmed service. The new pin takes the old one's place by rename, at once;
// the old agent's programs keep reading their hash until Attach updates their links.
// Any other mismatch is left to checkPinned to report.
//
// Old agents never reused a backend id, so after churn their ids run past the array.
// Those are renumbered into free ids: each entry is first added to the old hash under
// its new id too, so the old programs resolve a slot either way, and only then are
// the slots that named the old id rewritten. An affinity entry that names an old id
// just misses, and the connect picks afresh.
func migrateBackends(dir string, spec *ebpf.MapSpec) error {
	path := filepath.Join(dir, spec.Name)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pinned map %s: %w", path, err)
	}
	defer old.Close()
	if old.Type() != ebpf.Hash || old.KeySize() != 4 || old.ValueSize() != uint32(len(legacyBackendValue{})) {
		return nil
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("migrate pinned map %s to an array: %s: %w", path, what, err)
	}
	entries, err := NewTable[uint32, legacyBackendValue](old).Dump()
	if err != nil {
		return fail("read", err)
	}
	var slots *ebpf.Map
	slotOf := map[SlotKey]uint32{}
	if slots, err = ebpf.LoadPinnedMap(filepath.Join(dir, socklbMapSmSlots), nil); err == nil {
		defer slots.Close()
		if slotOf, err = NewTable[SlotKey, uint32](slots).Dump(); err != nil {
			return fail("read slots", err)
		}
	}
	unpinned := spec.Copy()
	unpinned.Pinning = ebpf.PinNone
	array, err := ebpf.NewMap(unpinned)
	if err != nil {
		return fail("create", err)
	}
	defer array.Close()
	table := NewArrayTable[BackendValue](array)

	renumbered, err := renumber(entries, table.MaxEntries())
	if err != nil {
		return fail("renumber", err)
	}
	for from, to := range renumbered {
		if err := old.Put(to, entries[from]); err != nil {
			return fail(fmt.Sprintf("add backend %d under id %d", from, to), err)
		}
	}
	slotCount := map[uint32]uint32{}
	for k, id := range slotOf {
		if to, ok := renumbered[id]; ok {
			if err := slots.Put(k, to); err != nil {
				return fail(fmt.Sprintf("point slot %+v at id %d", k, to), err)
			}
			id = to
		}
		slotCount[id]++
	}

	keys, vals := make([]uint32, 0, len(entries)), make([]BackendValue, 0, len(entries))
	for id, e := range entries {
		if to, ok := renumbered[id]; ok {
			id = to
		}
		var v BackendValue
		*(*legacyBackendValue)(unsafe.Pointer(&v)) = e
		v.Slots = slotCount[id]
		keys, vals = append(keys, id), append(vals, v)
	}
	if _, err := table.Update(keys, vals); err != nil {
		return fail("fill", err)
	}
	next := path + "_migrating"
	// A start that died here left it (a bpffs name cannot hold a dot, hence the "_").
	if err := unix.Unlink(next); err != nil && !errors.Is(err, unix.ENOENT) {
		return fail("unlink "+next, err)
	}
	if err := array.Pin(next); err != nil {
		return fail("pin", err)
	}
	if err := os.Rename(next, path); err != nil {
		return errors.Join(fail("rename", err), array.Unpin())
	}
	return nil
}

// renumber gives every id outside 1..max a free id within it, lowest first, in the
// order of the ids it replaces.
func renumber[V any](entries map[uint32]V, max int) (map[uint32]uint32, error) {
	var outside []uint32
	for id := range entries {
		if id == 0 || int(id) > max {
			outside = append(outside, id)
		}
	}
	if len(entries) > max {
		return nil, fmt.Errorf("%d backends do not fit in --max-backends %d: start with a larger --max-backends, or run `sockmesh cleanup` first, which drops programmed services", len(entries), max)
	}
	slices.Sort(outside)
	out := make(map[uint32]uint32, len(outside))
	next := uint32(1)
	for _, id := range outside {
		for _, used := entries[next]; used; _, used = entries[next] {
			next++
		}
		out[id] = next
		next++
	}
	return out, nil
}
