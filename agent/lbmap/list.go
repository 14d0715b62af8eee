package lbmap

import (
	"cmp"
	"maps"
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
	// In id order, as the kernel's array gives them.
	ids := slices.Sorted(maps.Keys(backends))
	c.eachBackend = func(each func(uint32, *bpf.BackendValue)) {
		for _, id := range ids {
			v := backends[id]
			each(id, &v)
		}
	}
	c.sampleBackends = func(step int, each func(uint32, *bpf.BackendValue)) {
		for i := 0; i < len(ids); i += step {
			v := backends[ids[i]]
			each(ids[i], &v)
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
	// sampleBackends is eachBackend for about one entry in step, in the same order.
	sampleBackends func(step int, each func(id uint32, v *bpf.BackendValue))
	nameIDs        []uint32
	names          []string
}

// services joins the entries: each result is built once, in its final place.
func (c *listContent) services() []ListedService {
	return c.build(c.arrange(countByService(c.eachBackend)))
}

// arranged is the services in their order and their backends staged by it: all the
// join needs but the names.
type arranged struct {
	fes    []model.Frontend
	order  []int32 // the position in the content of the service ranked r
	rankOf idIndex // the first rank of each service id
	g      *grouped
}

// arrange sorts the services by frontend (by id for two keys of one frontend, which
// only another writer can make) and lays out the backends by service, counted by
// countByService.
func (c *listContent) arrange(counts serviceCounts) *arranged {
	fes := make([]model.Frontend, len(c.svcKeys))
	keys := make([]frontendOrder, len(c.svcKeys))
	for i, k := range c.svcKeys {
		fes[i] = frontendOf(k)
		keys[i] = frontendOrderOf(fes[i], c.svcVals[i].Id, i)
	}
	sortFrontends(keys)
	order := make([]int32, len(keys))
	ids := make([]uint32, len(order))
	for i, k := range keys {
		order[i] = k.at
		ids[i] = c.svcVals[k.at].Id
	}
	// A service's backends are those whose value names its id. Services that share an
	// id (only another writer can make them) share the backends.
	rankOf := newIDIndex(ids)
	return &arranged{fes: fes, order: order, rankOf: rankOf, g: c.groupBackends(rankOf, ids, counts)}
}

// build makes the services, run by run (see groupBackends), the runs side by side.
func (c *listContent) build(a *arranged) []ListedService {
	fes, order, rankOf, g := a.fes, a.order, a.rankOf, a.g
	nameAt := newIDIndex(c.nameIDs)
	out := make([]ListedService, len(order))
	build := func(q int) {
		g.place(q)
		for i := q << runShift; i < min((q+1)<<runShift, len(order)); i++ {
			p := order[i]
			v := c.svcVals[p]
			var bs []ListedBackend
			if first, _ := rankOf.get(v.Id); first == i {
				bs = g.all[g.start[i]:g.end[i]:g.end[i]]
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
