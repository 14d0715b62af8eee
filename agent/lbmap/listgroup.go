package lbmap

import (
	"slices"

	"github.com/sockmesh/sockmesh/bpf"
)

// backendScan is one pass over the backend entries: each one's id and service, in the
// order read, and how many name each service. The grouping works on this copy, 8 bytes
// an entry, never on the array again: a pass over the array's memory (32 bytes an
// entry, and mostly empty elements where it is sized for a larger cluster) costs
// several times more, and each pass could see other contents.
type backendScan struct {
	owned  []owned
	counts serviceCounts
}

// owned is a backend entry's id and the service its value names.
type owned struct{ id, svc uint32 }

// serviceCounts is how many backend entries name each service id: in a slice indexed
// by id for the ids a writer hands out, in a map beyond.
type serviceCounts struct {
	dense  []int32
	sparse map[uint32]int32
}

// denseServiceIDs bounds the slice: 4 MB, touched only as far as the ids reach.
const denseServiceIDs = 1 << 20

// scanBackends reads the entries eachBackend gives, room being how many there can be.
func scanBackends(eachBackend func(func(uint32, *bpf.BackendValue)), room int) backendScan {
	s := backendScan{owned: make([]owned, 0, room), counts: serviceCounts{dense: make([]int32, denseServiceIDs), sparse: map[uint32]int32{}}}
	eachBackend(func(id uint32, b *bpf.BackendValue) {
		s.owned = append(s.owned, owned{id, b.SvcId})
		if b.SvcId < denseServiceIDs {
			s.counts.dense[b.SvcId]++
		} else {
			s.counts.sparse[b.SvcId]++
		}
	})
	return s
}

func (n serviceCounts) of(id uint32) int32 {
	if id < denseServiceIDs {
		return n.dense[id]
	}
	return n.sparse[id]
}

// runShift sets the runs the listing works in: 128 services a run, some 60 KB of
// backends at 10 a service, which fits in a CPU's cache.
const runShift = 7

// grouped is the backends' ids laid out by service: those of the service ranked r are
// ids[start[r]:end[r]], in no particular order.
type grouped struct {
	ids        []uint32
	start, end []int32
}

// staged is a backend id on its way to its service's place.
type staged struct {
	rank int32
	id   uint32
}

// groupBackends lays out the scanned backends' ids by service (ranked by rankOf, among
// n services); backends of no service are left out. It is a counting sort by rank.
// The backends come in id order: as the writer hands out ids, in rank order after a
// cold start, but churn makes it any order, and then putting each one straight in its
// place would be a write to anywhere in ids, a cache miss nearly every time. So unless
// the ranks mostly come in order, one pass stages them by runs of ranks (each run's
// part of stage filled in order), and then each run, whose part of ids fits in a
// cache, is put in place, the runs side by side.
func groupBackends(scan backendScan, rankOf idIndex, ids []uint32) *grouped {
	n := len(ids)
	g := &grouped{start: make([]int32, n+1)}
	for r, id := range ids {
		g.start[r+1] = g.start[r]
		if first, _ := rankOf.get(id); first == r {
			g.start[r+1] += scan.counts.of(id)
		}
	}
	g.ids = make([]uint32, g.start[n])
	g.end = slices.Clone(g.start[:n])
	// How ordered the ranks come, from a sample.
	prev, samples, descents := 0, 0, 0
	for i := 0; i < len(scan.owned); i += 16 {
		if r, ok := rankOf.get(scan.owned[i].svc); ok {
			samples++
			if r < prev {
				descents++
			}
			prev = r
		}
	}
	if descents <= samples/16 {
		// In order but for a few: straight into place, the writes mostly sequential.
		for _, o := range scan.owned {
			if r, ok := rankOf.get(o.svc); ok {
				g.ids[g.end[r]] = o.id
				g.end[r]++
			}
		}
		return g
	}
	runs := (n + 1<<runShift - 1) >> runShift
	stage := make([]staged, g.start[n])
	stageStart := make([]int32, runs+1) // run q's backends are stage[stageStart[q]:stageEnd[q]]
	for q := range runs {
		stageStart[q] = g.start[q<<runShift]
	}
	stageStart[runs] = g.start[n]
	stageEnd := slices.Clone(stageStart[:runs])
	for _, o := range scan.owned {
		if r, ok := rankOf.get(o.svc); ok {
			q := r >> runShift
			stage[stageEnd[q]] = staged{int32(r), o.id}
			stageEnd[q]++
		}
	}
	eachRun(n, func(from, _ int) {
		q := from >> runShift
		for _, st := range stage[stageStart[q]:stageEnd[q]] {
			g.ids[g.end[st.rank]] = st.id
			g.end[st.rank]++
		}
	})
	return g
}

func listedBackend(id uint32, b *bpf.BackendValue) ListedBackend {
	return ListedBackend{ID: id, Address: addrPortOf(b), Slots: int(b.Slots)}
}

// idIndex finds the position of an id in a list of ids (the first, if it repeats): a
// slice indexed by id when the ids are dense enough, as the writer allocates them, else
// a map.
type idIndex struct {
	dense   []uint32 // position+1, 0 for none
	sparse  map[uint32]int
	repeats bool // some id is in the list more than once
}

func newIDIndex(ids []uint32) idIndex {
	var hi uint32
	for _, id := range ids {
		hi = max(hi, id)
	}
	var x idIndex
	if len(ids) > 0 && denseEnough(hi, len(ids)) {
		x.dense = make([]uint32, int(hi)+1)
		for i, id := range ids {
			if x.dense[id] == 0 {
				x.dense[id] = uint32(i) + 1
			} else {
				x.repeats = true
			}
		}
		return x
	}
	x.sparse = make(map[uint32]int, len(ids))
	for i, id := range ids {
		if _, ok := x.sparse[id]; !ok {
			x.sparse[id] = i
		} else {
			x.repeats = true
		}
	}
	return x
}

// denseEnough says whether a slice indexed by ids up to hi is small next to n entries.
func denseEnough(hi uint32, n int) bool { return uint64(hi) < 4*uint64(n)+4096 }

func (x idIndex) get(id uint32) (int, bool) {
	if x.sparse != nil {
		p, ok := x.sparse[id]
		return p, ok
	}
	if uint64(id) >= uint64(len(x.dense)) || x.dense[id] == 0 {
		return 0, false
	}
	return int(x.dense[id]) - 1, true
}
