// Package lbmaptest provides in-memory Tables for tests and fuzzing of the LB map
// writer: hash maps with the kernel's capacity rule, counters of what was written and
// deleted, injectable write failures, and direct access to the content so a test can
// play another process editing the maps.
package lbmaptest

import (
	"errors"
	"fmt"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
)

// ErrFull is what an insert into a full table fails with, like the kernel's E2BIG.
var ErrFull = errors.New("map full")

// ErrInjected is the failure FailUpdateAfter and FailDeleteAfter inject.
var ErrInjected = errors.New("injected failure")

// Table is an in-memory lbmap.Table. It is not safe for concurrent use; the writer
// serialises its calls.
type Table[K comparable, V comparable] struct {
	name string
	// Max is the capacity: an update of a new key fails once the table holds Max keys;
	// an update of a key it holds always succeeds, as in a kernel hash map.
	Max int
	// Entries is the content. A test may edit it to play another writer.
	Entries map[K]V

	// Writes and Deletes count the entries written and deleted through the Table
	// interface (a deleted key that was absent counts too, as the kernel table reports
	// it deleted); Refused counts updates refused for room.
	Writes, Deletes, Refused int

	failUpdate, failDelete int // the next call fails after this many entries; -1: never
	// inRange, when set, refuses keys outside an array's ids, as the kernel does.
	inRange func(K) bool
}

// NewTable returns an empty table named name that holds at most max keys.
func NewTable[K comparable, V comparable](name string, max int) *Table[K, V] {
	return &Table[K, V]{name: name, Max: max, Entries: map[K]V{}, failUpdate: -1, failDelete: -1}
}

// NewArray returns an empty table by id, as bpf.ArrayTable: ids 1..max, an update of
// any other id is refused as one beyond a full map.
func NewArray[V comparable](name string, max int) *Table[uint32, V] {
	t := NewTable[uint32, V](name, max)
	t.inRange = func(id uint32) bool { return id >= 1 && int(id) <= max }
	return t
}

// Name implements lbmap.Table.
func (t *Table[K, V]) Name() string { return t.name }

// MaxEntries implements lbmap.Table.
func (t *Table[K, V]) MaxEntries() int { return t.Max }

// Dump implements lbmap.Table.
func (t *Table[K, V]) Dump() (map[K]V, error) {
	out := make(map[K]V, len(t.Entries))
	for k, v := range t.Entries {
		out[k] = v
	}
	return out, nil
}

// Update implements lbmap.Table: it stops at the first entry it cannot write.
func (t *Table[K, V]) Update(keys []K, vals []V) (int, error) {
	for i := range keys {
		if t.failUpdate == 0 {
			t.failUpdate = -1
			return i, fmt.Errorf("%s: %w", t.name, ErrInjected)
		}
		if t.failUpdate > 0 {
			t.failUpdate--
		}
		if _, ok := t.Entries[keys[i]]; !ok && len(t.Entries) >= t.Max || t.inRange != nil && !t.inRange(keys[i]) {
			t.Refused++
			return i, fmt.Errorf("%s: %w", t.name, ErrFull)
		}
		t.Entries[keys[i]] = vals[i]
		t.Writes++
	}
	return len(keys), nil
}

// Delete implements lbmap.Table.
func (t *Table[K, V]) Delete(keys []K) (int, error) {
	for i, k := range keys {
		if t.failDelete == 0 {
			t.failDelete = -1
			return i, fmt.Errorf("%s: %w", t.name, ErrInjected)
		}
		if t.failDelete > 0 {
			t.failDelete--
		}
		delete(t.Entries, k)
		t.Deletes++
	}
	return len(keys), nil
}

// FailUpdateAfter makes the next Update fail after writing n entries.
func (t *Table[K, V]) FailUpdateAfter(n int) { t.failUpdate = n }

// FailDeleteAfter makes the next Delete fail after deleting n entries.
func (t *Table[K, V]) FailDeleteAfter(n int) { t.failDelete = n }

// Clear empties the table behind the writer's back.
func (t *Table[K, V]) Clear() { clear(t.Entries) }

// Len is how many entries the table holds.
func (t *Table[K, V]) Len() int { return len(t.Entries) }

// Fakes are the five tables the writer programs.
type Fakes struct {
	Services *Table[bpf.SvcKey, bpf.SvcValue]
	Slots    *Table[bpf.SlotKey, uint32]
	Backends *Table[uint32, bpf.BackendValue]
	Names    *Table[uint32, bpf.SvcName]
	Local    *Table[bpf.LbAddr, uint8]
}

// LocalMax is the capacity NewTables gives the local-address table.
const LocalMax = 1024

// NewTables returns empty tables sized like the agent's --max-services (services and
// names) and --max-backends (backends and slots).
func NewTables(maxServices, maxBackends int) *Fakes {
	return &Fakes{
		Services: NewTable[bpf.SvcKey, bpf.SvcValue]("sm_services", maxServices),
		Slots:    NewTable[bpf.SlotKey, uint32]("sm_slots", maxBackends),
		Backends: NewArray[bpf.BackendValue]("sm_backends", maxBackends),
		Names:    NewTable[uint32, bpf.SvcName]("sm_svc_names", maxServices),
		Local:    NewTable[bpf.LbAddr, uint8]("sm_local", LocalMax),
	}
}

// Tables returns the fakes as the writer takes them.
func (f *Fakes) Tables() lbmap.Tables {
	return lbmap.Tables{Services: f.Services, Slots: f.Slots, Backends: f.Backends, Names: f.Names, Local: f.Local}
}

// Writes is how many entries were written to all tables.
func (f *Fakes) Writes() int {
	return f.Services.Writes + f.Slots.Writes + f.Backends.Writes + f.Names.Writes + f.Local.Writes
}

// Deletes is how many entries were deleted from all tables.
func (f *Fakes) Deletes() int {
	return f.Services.Deletes + f.Slots.Deletes + f.Backends.Deletes + f.Names.Deletes + f.Local.Deletes
}

// Refused is how many updates all tables refused for room.
func (f *Fakes) Refused() int {
	return f.Services.Refused + f.Slots.Refused + f.Backends.Refused + f.Names.Refused + f.Local.Refused
}

// Clear empties every table behind the writer's back, as another process might.
func (f *Fakes) Clear() {
	f.Services.Clear()
	f.Slots.Clear()
	f.Backends.Clear()
	f.Names.Clear()
	f.Local.Clear()
}
