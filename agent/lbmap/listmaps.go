package lbmap

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// ListMaps is List over the kernel maps (loaded, or opened from pins). It reads the
// backend array in place, through its memory, and the services and names with batch
// lookups, a few syscalls per map instead of two per entry (iterating where the kernel
// lacks batch operations), side by side: copying hash entries out is the kernel's work,
// most of the time here.
func ListMaps(m *bpf.Maps) ([]ListedService, error) {
	if m.SmBackends.Type() == ebpf.Hash {
		return nil, fmt.Errorf("map %s has the layout of an older agent (a hash map): start this version's agent once, which moves it into the array, or use that agent's own lb list", mapName(m.SmBackends))
	}
	backends, err := bpf.ViewArray[bpf.BackendValue](m.SmBackends)
	if err != nil {
		return nil, fmt.Errorf("read map %s: %w", mapName(m.SmBackends), err)
	}
	defer backends.Close()
	c := listContent{eachBackend: backends.Each, sampleBackends: backends.EachEvery}
	// Side by side: the backends are counted while the services are read, then the
	// services sorted and the backends laid out while the names are read.
	counted := make(chan serviceCounts, 1)
	go func() { counted <- countByService(backends.Each) }()
	var a *arranged
	var errs [2]error
	var wg sync.WaitGroup
	wg.Go(func() {
		c.svcKeys, c.svcVals, errs[0] = readAll[bpf.SvcKey, bpf.SvcValue](m.SmServices)
		counts := <-counted
		if errs[0] == nil {
			a = c.arrange(counts)
		}
	})
	wg.Go(func() {
		errs[1] = readMap(m.SmSvcNames, func(ids []uint32, names []bpf.SvcName) {
			c.nameIDs = append(c.nameIDs, ids...)
			for _, n := range names {
				c.names = append(c.names, n.String())
			}
		})
	})
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return c.build(a), nil
}

// readAll reads every entry of a hash map into two slices.
func readAll[K comparable, V comparable](m *ebpf.Map) ([]K, []V, error) {
	// Room for a full map: memory the kernel never fills is never touched.
	n := min(int(m.MaxEntries()), 1<<20)
	keys, vals := make([]K, 0, n), make([]V, 0, n)
	err := readMap(m, func(k []K, v []V) {
		keys = append(keys, k...)
		vals = append(vals, v...)
	})
	return keys, vals, err
}

// readMap hands every entry of a hash map to each, a batch at a time; each may not keep
// the slices it is given. Where the kernel lacks batch lookups, it iterates the map.
func readMap[K comparable, V comparable](m *ebpf.Map, each func([]K, []V)) error {
	err := readBatches(m, each)
	if errors.Is(err, ebpf.ErrNotSupported) {
		var all map[K]V
		if all, err = bpf.NewTable[K, V](m).Dump(); err == nil {
			keys, vals := make([]K, 0, len(all)), make([]V, 0, len(all))
			for k, v := range all {
				keys = append(keys, k)
				vals = append(vals, v)
			}
			each(keys, vals)
		}
	}
	if err != nil {
		return fmt.Errorf("read map %s: %w", mapName(m), err)
	}
	return nil
}

// listBatch is how many entries one batch lookup asks for (a variable for tests).
var listBatch = 4096

// readBatches reads the map in batches.
func readBatches[K comparable, V comparable](m *ebpf.Map, each func([]K, []V)) error {
	n := listBatch
	keys, vals := make([]K, n), make([]V, n)
	var cursor ebpf.MapBatchCursor
	for {
		got, err := m.BatchLookup(&cursor, keys, vals, nil)
		if errors.Is(err, unix.ENOSPC) && n < int(m.MaxEntries()) {
			// One hash bucket holds more entries than a batch: nothing was read and
			// the cursor stays on that bucket. Ask again with room for more.
			n *= 4
			keys, vals = make([]K, n), make([]V, n)
			continue
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		if got < 0 || got > n {
			return fmt.Errorf("batch lookup returned %d entries for %d", got, n)
		}
		each(keys[:got], vals[:got])
		if err != nil { // ErrKeyNotExist: that was the last batch
			return nil
		}
		if got == 0 {
			return errors.New("batch lookup made no progress")
		}
	}
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return m.String()
}
