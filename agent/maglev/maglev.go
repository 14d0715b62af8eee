// Package maglev owns the Maglev lookup tables of the NodePort datapath (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016). A table is
// built from what every node knows alike, the backends' addresses and a seed shared by
// the cluster, never from node-local ids, so every node builds the same table and a flow
// hashed to an entry reaches the same backend whichever node it enters. Removing one of
// N backends moves about 1/N of the entries, those it held and few others.
package maglev

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
)

// Sizes are the table sizes the agent accepts: primes (the permutations need a prime),
// each about twice the one before, as Cilium offers them. A table should have at least
// a hundred entries a backend for the shares to be close to the weights.
var Sizes = []uint32{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071}

// DefaultSize is the size of a table unless configured otherwise.
const DefaultSize = 16381

// Backend is one backend of a table.
type Backend struct {
	// Key names the backend alike on every node: its address and port, as
	// netip.AddrPort's String gives them.
	Key string
	// Weight is its share of the entries against the others' (a weight of 0 takes none).
	Weight uint32
}

// ValidSize says why m cannot be a table size, or nil.
func ValidSize(m uint32) error {
	if slices.Contains(Sizes, m) {
		return nil
	}
	s := make([]string, len(Sizes))
	for i, p := range Sizes {
		s[i] = fmt.Sprint(p)
	}
	return fmt.Errorf("maglev table size %d: want one of the primes %s", m, strings.Join(s, ", "))
}

// Table returns the m entries of the lookup table, each the index in backends of the
// backend it picks. The table depends on the backends' keys, weights and the seed, not
// on their order in the slice. It fails for a size not in Sizes, a key given twice, or
// no backend with a weight.
func Table(backends []Backend, m uint32, seed uint64) ([]int32, error) {
	if err := ValidSize(m); err != nil {
		return nil, err
	}
	// Turns go in key order, the same on every node whatever order the caller has.
	order := make([]int, 0, len(backends))
	var heaviest uint32
	for i, b := range backends {
		if b.Weight > 0 {
			order = append(order, i)
			heaviest = max(heaviest, b.Weight)
		}
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("maglev table of %d backends: none has a weight", len(backends))
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(backends[a].Key, backends[b].Key) })
	for k := 1; k < len(order); k++ {
		if backends[order[k]].Key == backends[order[k-1]].Key {
			return nil, fmt.Errorf("maglev table: backend %s given twice", backends[order[k]].Key)
		}
	}

	// Each backend's permutation of the entries is offset, offset+skip, offset+2·skip, ...
	// (mod m); skip in 1..m-1 and m prime make it visit every entry.
	type turn struct {
		at, skip uint64 // its next preferred entry, and the step to the one after
		credit   uint64 // weight saved up: a whole heaviest-weight's worth takes an entry
	}
	turns := make([]turn, len(order))
	for k, i := range order {
		offset, skip := hashes(backends[i].Key, seed)
		turns[k] = turn{at: offset % uint64(m), skip: skip%uint64(m-1) + 1}
	}
	table := make([]int32, m)
	for e := range table {
		table[e] = -1
	}
	next := func(at, skip uint64) uint64 { // (at + skip) mod m, both below m
		if at += skip; at >= uint64(m) {
			at -= uint64(m)
		}
		return at
	}
	// Round after round each backend earns its weight and, for every heaviest
	// weight earned, takes its next preferred entry still free: shares follow the
	// weights, and the heaviest backends take one entry a round.
	for filled := uint32(0); filled < m; {
		for k := range turns {
			t := &turns[k]
			for t.credit += uint64(backends[order[k]].Weight); t.credit >= uint64(heaviest) && filled < m; t.credit -= uint64(heaviest) {
				for table[t.at] >= 0 {
					t.at = next(t.at, t.skip)
				}
				table[t.at] = int32(order[k])
				t.at = next(t.at, t.skip)
				filled++
			}
		}
	}
	return table, nil
}

// hashes are the two independent hashes of a backend's key that set its permutation.
func hashes(key string, seed uint64) (offset, skip uint64) {
	h := fnv.New128a()
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	h.Write(s[:])
	h.Write([]byte(key))
	sum := h.Sum(nil)
	return mix(binary.LittleEndian.Uint64(sum[:8])), mix(binary.LittleEndian.Uint64(sum[8:]))
}

// mix is splitmix64's finalizer: FNV's low bits change little between similar keys
// (addresses that differ in one digit), and the entries are taken mod m.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
