package bpf

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Maps are the socket-LB object's maps, which include the ones every object shares
// (counters, config, local addresses), loaded by the agent or opened from pins by the
// CLI.
type Maps struct {
	SmServices, SmSlots, SmBackends, SmAffinity, SmRevnat, SmSvcNames *ebpf.Map
	SmCounters, SmConfig, SmOrigdstCk, SmLocal                        *ebpf.Map
}

// byName lists every map with its pin name.
func (m *Maps) byName() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{
		socklbMapSmServices: &m.SmServices, socklbMapSmSlots: &m.SmSlots,
		socklbMapSmBackends: &m.SmBackends, socklbMapSmAffinity: &m.SmAffinity,
		socklbMapSmRevnat: &m.SmRevnat, socklbMapSmSvcNames: &m.SmSvcNames,
		socklbMapSmCounters: &m.SmCounters, socklbMapSmConfig: &m.SmConfig,
		socklbMapSmOrigdstCk: &m.SmOrigdstCk, socklbMapSmLocal: &m.SmLocal,
	}
}

// OpenPinned opens the maps an agent pinned in dir, for readers such as `sockmesh lb
// list` that must work while the agent is down.
func OpenPinned(dir string) (*Maps, error) {
	var m Maps
	for name, dst := range m.byName() {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open pinned map %s (is the agent set up with --bpffs %s?): %w", name, dir, err)
		}
		*dst = mp
	}
	return &m, nil
}

// Close closes every open map handle.
func (m *Maps) Close() error {
	var errs []error
	for _, mp := range m.byName() {
		if *mp != nil {
			errs = append(errs, (*mp).Close())
			*mp = nil
		}
	}
	return errors.Join(errs...)
}

// Counters sums the per-CPU datapath counters.
func (m *Maps) Counters() ([NumCounters]uint64, error) {
	var out [NumCounters]uint64
	for i := range out {
		if CounterNames[i] == "" {
			continue
		}
		var perCPU []uint64
		if err := m.SmCounters.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read counter %s: %w", CounterNames[i], err)
		}
		for _, v := range perCPU {
			out[i] += v
		}
	}
	return out, nil
}

// Table is typed, batched access to one hash map.
type Table[K comparable, V comparable] struct {
	m         *ebpf.Map
	unbatched bool
}

// NewTable wraps a hash map whose key and value types are K and V.
func NewTable[K comparable, V comparable](m *ebpf.Map) *Table[K, V] { return &Table[K, V]{m: m} }

// WithoutBatch returns the table writing one entry per syscall: the baseline the
// benchmarks compare batching against.
func (t *Table[K, V]) WithoutBatch() *Table[K, V] { return &Table[K, V]{m: t.m, unbatched: true} }

// Name is the map's name in the kernel.
func (t *Table[K, V]) Name() string {
	info, err := t.m.Info()
	if err != nil {
		return "?"
	}
	return info.Name
}

// MaxEntries is the map's capacity.
func (t *Table[K, V]) MaxEntries() int { return int(t.m.MaxEntries()) }

// Dump reads every entry.
func (t *Table[K, V]) Dump() (map[K]V, error) {
	out := map[K]V{}
	var k K
	var v V
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// Update writes entries, in batches where the kernel supports it. It returns how many of
// the leading entries were written; on error, keys[n] is the one that failed.
func (t *Table[K, V]) Update(keys []K, vals []V) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n := 0
	if !t.unbatched {
		var err error
		n, err = t.m.BatchUpdate(keys, vals, nil)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) && n >= len(keys) {
			return n, err
		}
	}
	// Fall back entry by entry from where the batch stopped, to name the failing key.
	for i := n; i < len(keys); i++ {
		if err := t.m.Update(keys[i], vals[i], ebpf.UpdateAny); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

// Delete removes entries; a key that is already gone counts as deleted.
func (t *Table[K, V]) Delete(keys []K) (int, error) {
	for i, k := range keys {
		if err := t.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return i, err
		}
	}
	return len(keys), nil
}

// MapFill is how full one map is.
type MapFill struct {
	Name       string
	Entries    int
	MaxEntries int
}

// Fill counts the entries of the maps that hold programmed state. Counting walks keys
// only (the backend array, its memory), which is cheap next to a scrape interval even at
// 100k entries.
func (m *Maps) Fill() ([]MapFill, error) {
	var out []MapFill
	for _, mp := range []*ebpf.Map{m.SmServices, m.SmSlots, m.SmBackends, m.SmSvcNames, m.SmAffinity, m.SmRevnat} {
		info, err := mp.Info()
		if err != nil {
			return out, err
		}
		n, max := 0, int(mp.MaxEntries())
		if mp == m.SmBackends && mp.Type() == ebpf.Array { // a hash of an older agent is counted by keys
			max = NewArrayTable[BackendValue](mp).MaxEntries()
			err = ReadArray(mp, func(uint32, *BackendValue) { n++ })
		} else {
			n, err = countKeys(mp)
		}
		if err != nil {
			return out, fmt.Errorf("count %s: %w", info.Name, err)
		}
		out = append(out, MapFill{Name: info.Name, Entries: n, MaxEntries: max})
	}
	return out, nil
}

func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	n := 0
	var prev any // nil starts the walk
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		copy(key, next)
		prev = key
	}
}
