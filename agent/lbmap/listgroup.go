package lbmap

import (
	"slices"

	"github.com/sockmesh/sockmesh/bpf"
)

// serviceCounts is how many backend entries name each service id: in a slice indexed
// by id for the ids a writer hands out, in a map beyond.
type serviceCounts struct {
	dense  []int32
	sparse map[uint32]int32
}

// denseServiceIDs bounds the slice: 4 MB, touched only as far as the ids reach.
const denseServiceIDs = 1 << 20

func countByService(eachBackend func(func(uint32, *bpf.BackendValue))) serviceCounts {
	n := serviceCounts{dense: make([]int32, denseServiceIDs), sparse: map[uint32]int32{}}
	eachBackend(func(_ uint32, b *bpf.BackendValue) {
		if b.SvcId < denseServiceIDs {
			n.dense[b.SvcId]++
		} else {
			n.sparse[b.SvcId]++
		}
	})
	return n
}

func (n serviceCounts) of(id uint32) int32 {
	if id < denseServiceIDs {
		return n.dense[id]
	}
	return n.sparse[id]
}

// runShift sets the runs groupBackends works in: 128 services a run, some 60 KB of
// backends at 10 a service, which fits in a CPU's cache.
const runShift = 7

// grouped is the backends laid out by service: those of the service ranked r are
// all[start[r]:end[r]], in no particular order, once place has put them there (at
// once, when stage is nil). The backends are read more than once from memory a writer
// may change meanwhile, so a pass may find more or fewer than were counted: room is
// start[r+1]-start[r], what does not fit is left out, and end[r] says how far it was
// filled. Each backend shown is an entry as it was at some moment of the reading.
type grouped struct {
	all        []ListedBackend
	start, end []int32
	runs       int
	stage      []staged
	stageStart []int32 // run q's backends are stage[stageStart[q]:stageEnd[q]]
	stageEnd   []int32
}

type staged struct {
	rank int32
	id   uint32
	val  bpf.BackendValue
}

// groupBackends lays out the backends by service (ranked by rankOf, among n services);
// backends of no service are left out. It is a counting sort by rank. The backends
// come in id order: as the writer hands out ids, in rank order after a cold start,
// but churn makes it any order, and then putting each one straight in its place would
// be a write to anywhere in all, a cache miss nearly every time. So unless the ranks
// mostly come in order, one pass stages them by runs of ranks (each run's part of stage
// filled in order), and place then puts each run, whose part of all fits in a cache,
// in place.
func (c *listContent) groupBackends(rankOf idIndex, ids []uint32, counts serviceCounts) *grouped {
	n := len(ids)
	g := &grouped{start: make([]int32, n+1), runs: n>>runShift + 1}
	for r, id := range ids {
		g.start[r+1] = g.start[r]
		if first, _ := rankOf.get(id); first == r {
			g.start[r+1] += counts.of(id)
		}
	}
	g.all = make([]ListedBackend, g.start[n])
	// How ordered the ranks come, from a sample.
	prev, samples, descents := 0, 0, 0
	c.sampleBackends(16, func(_ uint32, b *bpf.BackendValue) {
		if r, ok := rankOf.get(b.SvcId); ok {
			samples++
			if r < prev {
				descents++
			}
			prev = r
		}
	})
	if descents <= samples/16 {
		// In order but for a few: straight into place, the writes mostly sequential.
		g.end = slices.Clone(g.start[:n])
		c.eachBackend(func(id uint32, b *bpf.BackendValue) {
			if r, ok := rankOf.get(b.SvcId); ok && g.end[r] < g.start[r+1] {
				g.all[g.end[r]] = listedBackend(id, b)
				g.end[r]++
			}
		})
		return g
	}
	g.stage = make([]staged, g.start[n])
	g.stageStart = make([]int32, g.runs+1)
	for q := range g.runs {
		g.stageStart[q] = g.start[q<<runShift]
	}
	g.stageStart[g.runs] = g.start[n]
	g.stageEnd = slices.Clone(g.stageStart[:g.runs])
	c.eachBackend(func(id uint32, b *bpf.BackendValue) {
		if r, ok := rankOf.get(b.SvcId); ok {
			if q := r >> runShift; g.stageEnd[q] < g.stageStart[q+1] {
				g.stage[g.stageEnd[q]] = staged{int32(r), id, *b}
				g.stageEnd[q]++
			}
		}
	})
	g.end = make([]int32, n)
	return g
}

func listedBackend(id uint32, b *bpf.BackendValue) ListedBackend {
	return ListedBackend{ID: id, Address: refOf(*b).addr, Slots: int(b.Slots)}
}

// place puts the backends of run q in place, if they were staged.
func (g *grouped) place(q int) {
	if g.stage == nil {
		return
	}
	from := q << runShift
	to := min(from+1<<runShift, len(g.start)-1)
	end := g.end[from:to] // this run's ranks alone: runs are placed side by side
	copy(end, g.start[from:to])
	for _, st := range g.stage[g.stageStart[q]:g.stageEnd[q]] {
		if r := int(st.rank); end[r-from] < g.start[r+1] {
			g.all[end[r-from]] = listedBackend(st.id, &st.val)
			end[r-from]++
		}
	}
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
