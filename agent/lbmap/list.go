package lbmap

import (
	"cmp"
	"encoding/binary"
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
	l, err := NewListing(t)
	if err != nil {
		return nil, err
	}
	return l.Services(), nil
}

// NewListing is the Listing of List; OpenListing reads kernel maps faster.
func NewListing(t Tables) (*Listing, error) {
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
	c := &listContent{backendAt: func(id uint32) *bpf.BackendValue {
		if v, ok := backends[id]; ok {
			return &v
		}
		return nil
	}}
	for k, v := range svcs {
		c.svcKeys = append(c.svcKeys, k)
		c.svcVals = append(c.svcVals, v)
	}
	// In id order, as the kernel's array gives them.
	ids := slices.Sorted(maps.Keys(backends))
	scan := scanBackends(func(each func(uint32, *bpf.BackendValue)) {
		for _, id := range ids {
			v := backends[id]
			each(id, &v)
		}
	}, len(ids))
	for id, n := range names {
		c.nameIDs = append(c.nameIDs, id)
		c.names = append(c.names, n.String())
	}
	return c.listing(c.arrange(scan)), nil
}

// listContent is what a listing reads from the maps, each key once and in no particular
// order: entries as key and value slices of the same length. A backend's value holds
// its slot count, so the slots themselves are not read.
type listContent struct {
	svcKeys []bpf.SvcKey
	svcVals []bpf.SvcValue
	// backendAt is the entry of one id as it is now (it may change after), nil for none.
	backendAt func(id uint32) *bpf.BackendValue
	nameIDs   []uint32
	names     []string
}

// Listing is the services read from the maps, sorted by frontend and joined with their
// names and backends, before any backend is copied out. Services builds them all; a
// caller that only writes them out fills one range at a time (Headers, ListBuilder)
// and never holds every backend at once: at 30k services of 10 backends that is some
// 15 MB of fresh memory, whose page faults cost more than the copying. Close it when
// done: it may hold a view of a kernel map.
type Listing struct {
	c       *listContent
	rankOf  idIndex // the first rank of each service id
	g       *grouped
	headers []ListedService
	close   func() error
}

// Close releases what the listing reads the backends from.
func (l *Listing) Close() error {
	if l.close == nil {
		return nil
	}
	return l.close()
}

// Headers is the services in order with their Backends unset: the listing's own slice,
// for a ListBuilder to fill a range of.
func (l *Listing) Headers() []ListedService { return l.headers }

// Services is every service, its backends filled: a copy of Headers, filled side by
// side.
func (l *Listing) Services() []ListedService {
	out := slices.Clone(l.headers) // never nil: listing makes headers
	// A builder per run: each keeps the backends of the one range it fills.
	eachRun(len(out), func(from, to int) { l.NewBuilder().Fill(out, from, to) })
	return out
}

// ListBuilder copies out the backends of a range of services; one per goroutine.
type ListBuilder struct {
	l        *Listing
	backends []ListedBackend
}

// NewBuilder returns a builder with no backends yet.
func (l *Listing) NewBuilder() *ListBuilder { return &ListBuilder{l: l} }

// noBackends is the Backends of a service without any: empty, not nil, as JSON shows it.
var noBackends = []ListedBackend{}

// Fill sets the Backends of svcs[from:to] (svcs being Headers or a copy of it), sorted
// by address, and returns that range. The backends stay valid until the builder's
// next Fill. Each is its entry as it is read now: one that has since been emptied or
// moved to another service is left out.
func (b *ListBuilder) Fill(svcs []ListedService, from, to int) []ListedService {
	l, g := b.l, b.l.g
	need := 0
	for r := from; r < to; r++ {
		f, _ := l.rankOf.get(svcs[r].ID)
		need += int(g.end[f] - g.start[f])
	}
	if b.backends = b.backends[:0]; cap(b.backends) < need {
		b.backends = make([]ListedBackend, 0, need+need/4) // room for the ranges after
	}
	for r := from; r < to; r++ {
		s := &svcs[r]
		// Services that share an id (only another writer makes them) share its
		// backends, grouped under the first of them.
		f, _ := l.rankOf.get(s.ID)
		at := len(b.backends)
		for _, id := range g.ids[g.start[f]:g.end[f]] {
			if v := l.c.backendAt(id); v != nil && v.Family != 0 && v.SvcId == s.ID {
				b.backends = append(b.backends, listedBackend(id, v))
			}
		}
		if at == len(b.backends) {
			s.Backends = noBackends
			continue
		}
		bs := b.backends[at:len(b.backends):len(b.backends)]
		slices.SortFunc(bs, compareListedBackends)
		s.Backends = bs
	}
	return svcs[from:to]
}

// compareListedBackends orders backends by address, then id. Between IPv4 addresses
// (most of them), it compares numbers: netip's Compare goes through BitLen and zones.
func compareListedBackends(a, b ListedBackend) int {
	if a.Address.Addr().Is4() && b.Address.Addr().Is4() {
		a4, b4 := a.Address.Addr().As4(), b.Address.Addr().As4()
		return cmp.Or(cmp.Compare(binary.BigEndian.Uint32(a4[:]), binary.BigEndian.Uint32(b4[:])),
			cmp.Compare(a.Address.Port(), b.Address.Port()), cmp.Compare(a.ID, b.ID))
	}
	return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.ID, b.ID))
}

// arranged is the services in their order and their backends grouped by it: all the
// listing needs but the names.
type arranged struct {
	fes    []model.Frontend
	order  []int32  // the position in the content of the service ranked r
	ids    []uint32 // the id of the service ranked r
	rankOf idIndex
	scan   backendScan
}

// arrange sorts the services by frontend (by id for two keys of one frontend, which
// only another writer can make).
func (c *listContent) arrange(scan backendScan) *arranged {
	fes := make([]model.Frontend, len(c.svcKeys))
	keys := make([]frontendOrder, len(c.svcKeys))
	eachRun(len(keys), func(from, to int) {
		for i := from; i < to; i++ {
			fes[i] = frontendOf(c.svcKeys[i])
			keys[i] = frontendOrderOf(fes[i], c.svcVals[i].Id, i)
		}
	})
	sortFrontends(keys)
	order := make([]int32, len(keys))
	ids := make([]uint32, len(order))
	for i, k := range keys {
		order[i] = k.at
		ids[i] = c.svcVals[k.at].Id
	}
	// A service's backends are those whose value names its id. Services that share an
	// id (only another writer can make them) share the backends.
	return &arranged{fes: fes, order: order, ids: ids, rankOf: newIDIndex(ids), scan: scan}
}

// listing groups the backends by service while it joins the arranged services with
// their names into the headers. It goes
// through the services in the order read, each header written to its rank: reads
// in rank order would be a cache miss a service in each of three arrays. The
// frontends of a run are one string, each header holding its part: one allocation a
// run instead of two a service.
func (c *listContent) listing(a *arranged) *Listing {
	grouped := make(chan *grouped, 1)
	go func() { grouped <- groupBackends(a.scan, a.rankOf, a.ids) }()
	nameAt := newIDIndex(c.nameIDs)
	rankAt := make([]int32, len(a.order))
	for r, p := range a.order {
		rankAt[p] = int32(r)
	}
	headers := make([]ListedService, len(a.order))
	eachRun(len(headers), func(from, to int) {
		text := make([]byte, 0, (to-from)*len("255.255.255.255:65535/TCP"))
		ends := make([]int, 0, to-from)
		for p := from; p < to; p++ {
			text = appendKind(a.fes[p].AppendTo(text), a.fes[p], c.svcVals[p].Flags)
			ends = append(ends, len(text))
		}
		fronts := string(text)
		for p, at := from, 0; p < to; p++ {
			v := c.svcVals[p]
			var name string
			if n, ok := nameAt.get(v.Id); ok {
				name = c.names[n]
			}
			end := ends[p-from]
			headers[rankAt[p]] = ListedService{ID: v.Id, Name: name, Frontend: fronts[at:end],
				AffinitySeconds: v.AffinityTimeout, Slots: v.Count}
			at = end
		}
	})
	return &Listing{c: c, rankOf: a.rankOf, g: <-grouped, headers: headers}
}

// eachRun calls do for the runs of 1<<runShift ranks among n, side by side on every
// CPU.
func eachRun(n int, do func(from, to int)) {
	runs := (n + 1<<runShift - 1) >> runShift
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(runtime.GOMAXPROCS(0), runs) {
		wg.Go(func() {
			for q := int(next.Add(1) - 1); q < runs; q = int(next.Add(1) - 1) {
				do(q<<runShift, min(n, (q+1)<<runShift))
			}
		})
	}
	wg.Wait()
}

// appendKind marks a frontend served from outside with its kind, as in
// "0.0.0.0:30080/TCP (NodePort)"; a cluster IP's stays bare.
func appendKind(b []byte, fe model.Frontend, flags uint32) []byte {
	switch {
	case flags&bpf.SvcFlagExternal == 0:
		return b
	case flags&bpf.SvcFlagLoadBalancer != 0:
		return append(b, " (LoadBalancer)"...)
	case fe.Addr.IsUnspecified():
		return append(b, " (NodePort)"...)
	}
	return append(b, " (ExternalIP)"...)
}
