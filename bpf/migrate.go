package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	entries, err := NewTable[uint32, legacyBackendValue](old).Dump()
	if err != nil {
		return fmt.Errorf("migrate pinned map %s: read: %w", path, err)
	}
	slotCount := map[uint32]uint32{}
	if slots, err := ebpf.LoadPinnedMap(filepath.Join(dir, socklbMapSmSlots), nil); err == nil {
		ids, err := NewTable[SlotKey, uint32](slots).Dump()
		slots.Close()
		if err != nil {
			return fmt.Errorf("migrate pinned map %s: read slots: %w", path, err)
		}
		for _, id := range ids {
			slotCount[id]++
		}
	}
	unpinned := spec.Copy()
	unpinned.Pinning = ebpf.PinNone
	array, err := ebpf.NewMap(unpinned)
	if err != nil {
		return fmt.Errorf("migrate pinned map %s: %w", path, err)
	}
	defer array.Close()
	table := NewArrayTable[BackendValue](array)
	keys, vals := make([]uint32, 0, len(entries)), make([]BackendValue, 0, len(entries))
	for id, e := range entries {
		if id == 0 || int(id) > table.MaxEntries() {
			return fmt.Errorf("migrate pinned map %s: it holds backend id %d, beyond --max-backends %d: start with a larger --max-backends, or run `sockmesh cleanup` first, which drops programmed services", path, id, table.MaxEntries())
		}
		var v BackendValue
		*(*legacyBackendValue)(unsafe.Pointer(&v)) = e
		v.Slots = slotCount[id]
		keys, vals = append(keys, id), append(vals, v)
	}
	if _, err := table.Update(keys, vals); err != nil {
		return fmt.Errorf("migrate pinned map %s: %w", path, err)
	}
	next := path + "_migrating"
	// A start that died here left it (a bpffs name cannot hold a dot, hence the "_").
	if err := unix.Unlink(next); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("migrate pinned map %s: unlink: %w", path, err)
	}
	if err := array.Pin(next); err != nil {
		return fmt.Errorf("migrate pinned map %s: pin: %w", path, err)
	}
	if err := os.Rename(next, path); err != nil {
		return errors.Join(fmt.Errorf("migrate pinned map %s: rename: %w", path, err), array.Unpin())
	}
	return nil
}
