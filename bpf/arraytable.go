package bpf

import (
	"bytes"
	"fmt"
	"os"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ArrayTable is typed access to an array map of entries by id in which the zero value
// is an empty element (sm_backends). Index 0 is never used, so ids run from 1 to
// MaxEntries(). It reads through a read-only mmap where the map allows it: one copy of
// the memory instead of a syscall per element.
type ArrayTable[V comparable] struct {
	m      *ebpf.Map
	writes *Table[uint32, V]
}

// NewArrayTable wraps an array map whose value type is V.
func NewArrayTable[V comparable](m *ebpf.Map) *ArrayTable[V] {
	return &ArrayTable[V]{m: m, writes: NewTable[uint32, V](m)}
}

// WithoutBatch returns the table writing one entry per syscall (see Table.WithoutBatch).
func (t *ArrayTable[V]) WithoutBatch() *ArrayTable[V] {
	return &ArrayTable[V]{m: t.m, writes: t.writes.WithoutBatch()}
}

// Name is the map's name in the kernel.
func (t *ArrayTable[V]) Name() string { return t.writes.Name() }

// MaxEntries is the highest id the array holds, which is also how many entries fit.
func (t *ArrayTable[V]) MaxEntries() int { return int(t.m.MaxEntries()) - 1 }

// Dump reads every element that is not empty.
func (t *ArrayTable[V]) Dump() (map[uint32]V, error) {
	out := map[uint32]V{}
	err := ReadArray(t.m, func(id uint32, v *V) { out[id] = *v })
	return out, err
}

// Update writes entries; an id outside 1..MaxEntries() fails with E2BIG, as a full
// hash map does.
func (t *ArrayTable[V]) Update(keys []uint32, vals []V) (int, error) {
	for i, k := range keys {
		if k == 0 || int(k) > t.MaxEntries() {
			n, err := t.writes.Update(keys[:i], vals[:i])
			if err != nil {
				return n, err
			}
			return i, fmt.Errorf("id %d outside 1..%d: %w", k, t.MaxEntries(), unix.E2BIG)
		}
	}
	return t.writes.Update(keys, vals)
}

// Delete empties the elements: an array element cannot be removed, only zeroed.
func (t *ArrayTable[V]) Delete(keys []uint32) (int, error) {
	return t.writes.Update(keys, make([]V, len(keys)))
}

// ArrayView is an array map's memory, mapped read-only: what the kernel holds, as it
// changes. An element a writer changes meanwhile may be read half-written, as any
// reader of that memory would; callers show what they read, they never write it back.
type ArrayView[V comparable] struct {
	mem    []byte
	stride int
	n      int
}

// ViewArray maps an array map created BPF_F_MMAPABLE whose value type is V. Close
// unmaps it.
func ViewArray[V comparable](m *ebpf.Map) (*ArrayView[V], error) {
	if m.Type() != ebpf.Array || m.Flags()&unix.BPF_F_MMAPABLE == 0 {
		return nil, fmt.Errorf("map %s is not an mmapable array", m)
	}
	size := int(unsafe.Sizeof(*new(V)))
	if int(m.ValueSize()) != size {
		return nil, fmt.Errorf("map %s holds %d-byte values, want %d", m, m.ValueSize(), size)
	}
	v := &ArrayView[V]{stride: (size + 7) &^ 7, n: int(m.MaxEntries())}
	page := os.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (v.n*v.stride+page-1)&^(page-1), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap map %s: %w", m, err)
	}
	v.mem = mem
	return v, nil
}

// Each calls each for every element that is not all zeros, in id order; each must
// not keep v. A block of empty elements is skipped by one memory compare: an array
// sized for the largest cluster is mostly empty in any other.
func (a *ArrayView[V]) Each(each func(id uint32, v *V)) {
	const perBlock = 64
	zeros := make([]byte, perBlock*a.stride)
	for first := 0; first < a.n; first += perBlock {
		end := min(a.n, first+perBlock)
		if block := a.mem[first*a.stride : end*a.stride]; bytes.Equal(block, zeros[:len(block)]) {
			continue
		}
		for i := first; i < end; i++ {
			if !a.empty(i) {
				each(uint32(i), (*V)(unsafe.Pointer(&a.mem[i*a.stride])))
			}
		}
	}
}

// At is the element at id, in the map's memory (see ArrayView); nil past the array.
func (a *ArrayView[V]) At(id uint32) *V {
	if int64(id) >= int64(a.n) {
		return nil
	}
	return (*V)(unsafe.Pointer(&a.mem[int(id)*a.stride]))
}

// empty says whether element i is all zeros, its padding too (the kernel keeps that
// zero): a word at a time, where comparing to V's zero value is a call per element.
func (a *ArrayView[V]) empty(i int) bool {
	var or uint64
	for w := i * a.stride; w < (i+1)*a.stride; w += 8 {
		or |= *(*uint64)(unsafe.Pointer(&a.mem[w]))
	}
	return or == 0
}

// Close unmaps the memory.
func (a *ArrayView[V]) Close() error { return unix.Munmap(a.mem) }

// ReadArray calls each for every element of an mmapable array map that is not all
// zeros, in id order (see ArrayView); each must not keep v.
func ReadArray[V comparable](m *ebpf.Map, each func(id uint32, v *V)) error {
	view, err := ViewArray[V](m)
	if err != nil {
		return err
	}
	view.Each(each)
	return view.Close()
}
