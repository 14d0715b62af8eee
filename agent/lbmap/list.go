package lbmap

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// ListedBackend is one backend of a ListedService.
type ListedBackend struct {
	ID      uint32         `json:"id"`
	Address netip.AddrPort `json:"address"`
	Slots   int            `json:"slots"` // its weight: how many of the service's slots pick it
}

// ListedService is one frontend as the maps hold it.
type ListedService struct {
	ID              uint32          `json:"id"`
	Name            string          `json:"name"`
	Frontend        string          `json:"frontend"`
	AffinitySeconds uint32          `json:"affinitySeconds,omitempty"`
	Slots           uint32          `json:"slots"`
	Backends        []ListedBackend `json:"backends"`
}

// List reads the programmed services from the maps themselves (not from an agent), so it
// shows what the datapath does even while the agent is down. Services come sorted by
// frontend, each one's backends by address. On kernel maps, call ListMaps: the same
// result, read in batches.
func List(t Tables) ([]ListedService, error) {
	svcs, err := t.Services.Dump()
	if err != nil {
		return nil, err
	}
	backends, err := t.Backends.Dump()
	if err != nil {
		return nil, err
	}
	names, err := t.Names.Dump()
	if err != nil {
		return nil, err
	}
	var c listContent
	for k, v := range svcs {
		c.svcKeys = append(c.svcKeys, k)
		c.svcVals = append(c.svcVals, v)
	}
	c.eachBackend = func(each func(uint32, *bpf.BackendValue)) {
		for id, v := range backends {
			each(id, &v)
		}
	}
	for id, n := range names {
		c.nameIDs = append(c.nameIDs, id)
		c.names = append(c.names, n.String())
	}
	return c.services(), nil
}

// listContent is what List reads from the maps, each key once and in no particular
// order: entries as key and value slices of the same length. A backend's value holds
// its slot count, so the slots themselves are not read.
type listContent struct {
	svcKeys []bpf.SvcKey
	svcVals []bpf.SvcValue
	// eachBackend calls each for every backend entry (each must not keep the value); it
	// is called more than once, and may give another order each time.
	eachBackend func(each func(id uint32, v *bpf.BackendValue))
	nameIDs     []uint32
	names       []string
}

// services joins the entries: each result is built once, in its final place.
func (c *listContent) services() []ListedService {
	// Sort the services first, by frontend (by id for two keys of one frontend, which
	// only another writer can make).
	fes := make([]model.Frontend, len(c.svcKeys))
	keys := make([]frontendOrder, len(c.svcKeys))
	for i, k := range c.svcKeys {
		fes[i] = frontendOf(k)
		keys[i] = frontendOrderOf(fes[i], c.svcVals[i].Id, i)
	}
	slices.SortFunc(keys, compareFrontendOrder)
	order := make([]int32, len(keys))
	ids := make([]uint32, len(order))
	for i, k := range keys {
		order[i] = k.at
		ids[i] = c.svcVals[k.at].Id
	}
	// A service's backends are those whose value names its id. Services that share an
	// id (only another writer can make them) share the backends.
	rankOf := newIDIndex(ids)
	g := c.groupBackends(rankOf, len(ids))

	// Build the services run by run (see groupBackends), the runs side by side.
	nameAt := newIDIndex(c.nameIDs)
	out := make([]ListedService, len(order))
	build := func(q int) {
		g.place(q)
		for i := q << runShift; i < min((q+1)<<runShift, len(order)); i++ {
			p := order[i]
			v := c.svcVals[p]
			var bs []ListedBackend
			if first, _ := rankOf.get(v.Id); first == i {
				bs = g.all[g.start[i]:g.start[i+1]:g.start[i+1]]
				slices.SortFunc(bs, func(a, b ListedBackend) int {
					return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.ID, b.ID))
				})
			}
			if len(bs) == 0 {
				bs = []ListedBackend{}
			}
			var name string
			if n, ok := nameAt.get(v.Id); ok {
				name = c.names[n]
			}
			out[i] = ListedService{ID: v.Id, Name: name, Frontend: fes[p].String(),
				AffinitySeconds: v.AffinityTimeout, Slots: v.Count, Backends: bs}
		}
	}
	var wg sync.WaitGroup
	var nextRun atomic.Int64
	for range min(runtime.GOMAXPROCS(0), g.runs) {
		wg.Go(func() {
			for q := int(nextRun.Add(1) - 1); q < g.runs; q = int(nextRun.Add(1) - 1) {
				build(q)
			}
		})
	}
	wg.Wait()
	if rankOf.repeats {
		for i := range out {
			if first, _ := rankOf.get(out[i].ID); first != i {
				out[i].Backends = out[first].Backends
			}
		}
	}
	return out
}

// frontendOrder is a frontend and service id as numbers that sort as
// model.CompareFrontends and then the id sort them: a comparison of a few integers,
// where netip's Compare makes 30k frontends take a third of a listing.
type frontendOrder struct {
	bits   int    // the address's BitLen: invalid, then IPv4, then IPv6
	hi, lo uint64 // the address, as As16 gives it
	tail   uint64 // port, protocol, id
	at     int32  // where the service is in the content
}

func frontendOrderOf(f model.Frontend, id uint32, at int) frontendOrder {
	a := f.Addr.As16()
	return frontendOrder{bits: f.Addr.BitLen(), hi: binary.BigEndian.Uint64(a[:8]), lo: binary.BigEndian.Uint64(a[8:]),
		tail: uint64(f.Port)<<48 | uint64(f.Protocol)<<32 | uint64(id), at: int32(at)}
}

func compareFrontendOrder(a, b frontendOrder) int {
	return cmp.Or(cmp.Compare(a.bits, b.bits), cmp.Compare(a.hi, b.hi), cmp.Compare(a.lo, b.lo), cmp.Compare(a.tail, b.tail))
}

// runShift sets the runs groupBackends works in: 128 services a run, some 60 KB of
// backends at 10 a service, which fits in a CPU's cache.
const runShift = 7

// grouped is the backends laid out by service: those of the service ranked r are
// all[start[r]:start[r+1]], in no particular order, once place has put them there.
type grouped struct {
	c          *listContent
	all        []ListedBackend
	start      []int32
	runs       int
	stage      []staged
	stageStart []int32 // run q's backends are stage[stageStart[q]:stageStart[q+1]]
}

type staged struct {
	rank int32
	id   uint32
	val  bpf.BackendValue
}

// groupBackends stages the backends for laying out by service (ranked by rankOf,
// among n services); backends of no service are left out. It is a counting sort by
// rank. The backends come in id order, which churn makes any order, and putting each one straight in its place
// would be a write to anywhere in all, a cache miss nearly every time. So one pass
// stages them by runs of ranks (each run's part of stage filled in order), and place
// then puts each run, whose part of all fits in a cache, in place.
func (c *listContent) groupBackends(rankOf idIndex, n int) *grouped {
	g := &grouped{c: c, start: make([]int32, n+1), runs: n>>runShift + 1}
	c.eachBackend(func(_ uint32, b *bpf.BackendValue) {
		if r, ok := rankOf.get(b.SvcId); ok {
			g.start[r+1]++
		}
	})
	for r := 1; r <= n; r++ {
		g.start[r] += g.start[r-1]
	}
	g.stage = make([]staged, g.start[n])
	g.stageStart = make([]int32, g.runs+1)
	for q := range g.runs {
		g.stageStart[q] = g.start[q<<runShift]
	}
	g.stageStart[g.runs] = g.start[n]
	next := slices.Clone(g.stageStart[:g.runs])
	c.eachBackend(func(id uint32, b *bpf.BackendValue) {
		if r, ok := rankOf.get(b.SvcId); ok {
			q := r >> runShift
			g.stage[next[q]] = staged{int32(r), id, *b}
			next[q]++
		}
	})
	g.all = make([]ListedBackend, g.start[n])
	return g
}

// place puts the backends of run q in place.
func (g *grouped) place(q int) {
	from := q << runShift
	to := min(from+1<<runShift, len(g.start)-1)
	next := slices.Clone(g.start[from:to])
	for _, st := range g.stage[g.stageStart[q]:g.stageStart[q+1]] {
		r := int(st.rank) - from
		g.all[next[r]] = ListedBackend{ID: st.id, Address: refOf(st.val).addr, Slots: int(st.val.Slots)}
		next[r]++
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
