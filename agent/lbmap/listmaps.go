package lbmap

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// ListMaps is List over the kernel maps (loaded, or opened from pins): OpenListing's
// services, all built.
func ListMaps(m *bpf.Maps) ([]ListedService, error) {
	l, err := OpenListing(m)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return l.Services(), nil
}

// OpenListing reads the kernel maps for a listing. It reads the backend array in place,
// through its memory (held until Close), and the services and names with batch
// lookups, a few syscalls per map instead of two per entry (iterating where the kernel
// lacks batch operations), side by side: copying hash entries out is the kernel's work,
// most of the time here.
func OpenListing(m *bpf.Maps) (*Listing, error) {
	if m.SmBackends.Type() == ebpf.Hash {
		return nil, fmt.Errorf("map %s has the layout of an older agent (a hash map): start this version's agent once, which moves it into the array, or use that agent's own lb list", mapName(m.SmBackends))
	}
	backends, err := bpf.ViewArray[bpf.BackendValue](m.SmBackends)
	if err != nil {
		return nil, fmt.Errorf("read map %s: %w", mapName(m.SmBackends), err)
	}
	c := &listContent{backendAt: backends.At}
	// Side by side: the backends are scanned while the services are read, then the
	// services sorted and the backends grouped while the names are read.
	scanned := make(chan backendScan, 1)
	go func() { scanned <- scanBackends(backends.Each, roomFor(m.SmBackends)) }()
	var a *arranged
	var errs [2]error
	var wg sync.WaitGroup
	wg.Go(func() {
		c.svcKeys, c.svcVals, errs[0] = readAll[bpf.SvcKey, bpf.SvcValue](m.SmServices)
		scan := <-scanned
		if errs[0] == nil {
			a = c.arrange(scan)
		}
	})
	wg.Go(func() {
		n := roomFor(m.SmSvcNames)
		c.nameIDs, c.names = make([]uint32, 0, n), make([]string, 0, n)
		var r nameReader
		errs[1] = readMap(m.SmSvcNames, func(ids []uint32, names []bpf.SvcName) {
			c.nameIDs = append(c.nameIDs, ids...)
			c.names = r.appendNames(c.names, names)
		})
	})
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		backends.Close()
		return nil, err
	}
	l := c.listing(a)
	l.close = backends.Close
	return l, nil
}

// nameReader turns batches of names into strings that share one allocation a batch,
// each name its part; its scratch is reused from batch to batch.
type nameReader struct {
	text []byte
	ends []int
}

func (r *nameReader) appendNames(to []string, names []bpf.SvcName) []string {
	r.text, r.ends = r.text[:0], r.ends[:0]
	for i := range names {
		r.text = names[i].AppendTo(r.text)
		r.ends = append(r.ends, len(r.text))
	}
	all, at := string(r.text), 0
	for _, end := range r.ends {
		to = append(to, all[at:end])
		at = end
	}
	return to
}

// roomFor is the capacity for every entry a map can hold: memory the kernel never
// fills is never touched, and slices that never grow are never copied.
func roomFor(m *ebpf.Map) int { return min(int(m.MaxEntries()), 1<<20) }

// readAll reads every entry of a hash map into two slices.
func readAll[K comparable, V comparable](m *ebpf.Map) ([]K, []V, error) {
	n := roomFor(m)
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
