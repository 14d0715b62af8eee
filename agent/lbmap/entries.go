package lbmap

import (
	"net/netip"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// maxSlotsPerService bounds how far weights expand one service's slot list.
const maxSlotsPerService = 4096

// backendRef names a backend entry: entries are per (service, address), so one exists
// exactly while that backend is selected for that service. Its id stays with it; only
// when the backend is dropped may the id pass, in place, to one the service adds.
type backendRef struct {
	svcID uint32
	addr  netip.AddrPort
	proto model.Protocol
}

// serviceEntries are the map entries of one service id. Entries an Apply wants always
// have a key and a name; a restore may also put back entries written ahead of a service
// that a failed Apply never published, which have neither.
type serviceEntries struct {
	id       uint32
	hasKey   bool
	key      bpf.SvcKey
	value    bpf.SvcValue
	hasName  bool
	name     bpf.SvcName
	slots    []slotEntry
	backends []backendEntry
}

type slotEntry struct {
	key     bpf.SlotKey
	backend uint32
}

type backendEntry struct {
	id    uint32
	value bpf.BackendValue
}

// held lists what the shadow holds for one service id.
type held struct {
	keys     []bpf.SvcKey // services whose value has this id: one, unless someone else wrote the map
	slots    []bpf.SlotKey
	backends []uint32
}

// heldIndex groups the shadow by service id (a backend by the id in its value).
type heldIndex map[uint32]*held

// heldFor is index for the given ids alone, read through the tables' id index.
func (w *Writer) heldFor(ids map[uint32]bool) heldIndex {
	idx := make(heldIndex, len(ids))
	for id := range ids {
		h := &held{}
		for k := range w.services.byID[id] {
			h.keys = append(h.keys, k)
		}
		for k := range w.slots.byID[id] {
			h.slots = append(h.slots, k)
		}
		for k := range w.backends.byID[id] {
			h.backends = append(h.backends, k)
		}
		idx[id] = h
	}
	return idx
}

func (w *Writer) index() heldIndex {
	idx := make(heldIndex, len(w.services.cur))
	get := func(id uint32) *held {
		h := idx[id]
		if h == nil {
			h = &held{}
			idx[id] = h
		}
		return h
	}
	for k, v := range w.services.cur {
		h := get(v.Id)
		h.keys = append(h.keys, k)
	}
	for k := range w.slots.cur {
		h := get(k.SvcId)
		h.slots = append(h.slots, k)
	}
	for id, b := range w.backends.cur {
		h := get(b.SvcId)
		h.backends = append(h.backends, id)
	}
	for id := range w.names.cur {
		get(id)
	}
	return idx
}

// changeFor lays out svc under service id id, over what h holds for it. A backend
// still selected keeps the id it holds; a new one takes, in place, the id of a backend
// the service drops (the value is overwritten whole, so a racing connect sees the old
// or the new backend, and the slots pointing at that id stay valid); only the rest get
// fresh ids, asked of fresh. It returns the fresh ids it used: fewer than it asked for
// when the pool ran out, and then the change needs more room than there is.
func (w *Writer) changeFor(svc *model.Service, id uint32, h *held, fresh func(n int) []uint32) (*change, []uint32) {
	e := &serviceEntries{id: id, hasKey: true, key: svcKeyOf(svc.Frontend), hasName: true,
		name: bpf.NameFrom(svc.Name.String() + portSuffix(svc.PortName))}
	c := &change{id: id, want: e}
	if h == nil {
		h = &held{}
	}
	selected := svc.Selected()
	refs := make([]backendRef, len(selected))
	for i, b := range selected {
		refs[i] = backendRef{svcID: id, addr: b.AddrPort(), proto: svc.Frontend.Protocol}
	}

	// Match what the service holds to what it selects; the held ids no selected
	// backend keeps are reused, lowest first so the same input reuses the same ids.
	type assignment struct {
		id                uint32
		selected, emitted bool
		slots             uint32 // how many slots pick it, over every listing
	}
	byRef := make(map[backendRef]assignment, max(len(h.backends), len(refs)))
	var reusable []uint32
	for _, bid := range h.backends {
		ref := refOf(w.backends.cur[bid])
		if old, dup := byRef[ref]; dup { // two ids for one backend: only another writer does that
			reusable = append(reusable, max(old.id, bid))
			bid = min(old.id, bid)
		}
		byRef[ref] = assignment{id: bid}
	}
	if len(byRef) > 0 {
		for _, ref := range refs {
			if a, ok := byRef[ref]; ok {
				a.selected = true
				byRef[ref] = a
			}
		}
		for _, a := range byRef {
			if !a.selected {
				reusable = append(reusable, a.id)
			}
		}
		slices.Sort(reusable)
	}
	var missing []backendRef
	for _, ref := range refs {
		if _, ok := byRef[ref]; ok {
			continue
		}
		a := assignment{selected: true}
		if len(reusable) > 0 {
			a.id, reusable = reusable[0], reusable[1:]
		} else {
			missing = append(missing, ref)
		}
		byRef[ref] = a
	}
	c.staleBackends = reusable
	freshIDs := fresh(len(missing))
	for i, ref := range missing {
		a := byRef[ref]
		if i < len(freshIDs) {
			a.id = freshIDs[i]
		} // else id 0, which no entry may hold: price counts the change as needing more room than there is
		byRef[ref] = a
	}

	ids := make([]uint32, len(selected))
	weights := make([]int, len(selected))
	for i, b := range selected {
		ids[i], weights[i] = byRef[refs[i]].id, int(max(b.Weight, 1))
	}
	slot := uint32(1)
	table := w.maglevTable(svc, selected, weights)
	if table != nil {
		// Slot n is entry n-1 of the flow-hash table, the same on every node.
		for _, i := range table {
			e.slots = append(e.slots, slotEntry{bpf.SlotKey{SvcId: id, Slot: slot}, ids[i]})
			slot++
			a := byRef[refs[i]]
			a.slots++
			byRef[refs[i]] = a
		}
	} else {
		for i, n := range slotCounts(weights, maxSlotsPerService) {
			for j := 0; j < n; j++ {
				e.slots = append(e.slots, slotEntry{bpf.SlotKey{SvcId: id, Slot: slot}, ids[i]})
				slot++
			}
			a := byRef[refs[i]]
			a.slots += uint32(n)
			byRef[refs[i]] = a
		}
	}
	e.backends = make([]backendEntry, 0, len(selected))
	for i, b := range selected {
		a := byRef[refs[i]]
		if a.emitted {
			continue // the same backend listed twice: one entry, and slots for each listing
		}
		a.emitted = true
		byRef[refs[i]] = a
		addr, fam := bpf.AddrFrom(b.Addr)
		e.backends = append(e.backends, backendEntry{a.id, bpf.BackendValue{Addr: addr, Port: bpf.PortToNet(b.Port),
			Proto: uint8(svc.Frontend.Protocol), Family: fam, SvcId: id, Slots: a.slots}})
	}
	e.value = bpf.SvcValue{Id: id, Count: slot - 1, AffinityTimeout: uint32(svc.AffinityTimeout.Seconds())}
	if svc.L7 {
		e.value.Flags |= bpf.SvcFlagL7
	}
	if svc.FromOutside() {
		e.value.Flags |= bpf.SvcFlagExternal
		if table != nil {
			e.value.Flags |= bpf.SvcFlagMaglev
		}
		if svc.Kind == model.LoadBalancerFrontend {
			e.value.Flags |= bpf.SvcFlagLoadBalancer
		}
		if len(svc.External.SourceRanges) > 0 {
			e.value.Flags |= bpf.SvcFlagSourceRanges // closed until syncRanges writes them
		}
	}
	for _, k := range h.slots {
		if k.Slot < 1 || k.Slot > e.value.Count {
			c.staleSlots = append(c.staleSlots, k)
		}
	}
	return c, freshIDs
}

// slotCounts gives each backend a number of slots proportional to its weight, reduced by
// the weights' gcd (equal weights: one slot each) and scaled down to at most limit slots,
// never below one.
func slotCounts(weights []int, limit int) []int {
	g := 0
	total := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	out := make([]int, len(weights))
	for i, w := range weights {
		out[i] = w / max(g, 1)
		total += out[i]
	}
	if total > limit {
		for i := range out {
			out[i] = max(1, out[i]*limit/total)
		}
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func portSuffix(name string) string {
	if name == "" {
		return ""
	}
	return ":" + name
}

func svcKeyOf(f model.Frontend) bpf.SvcKey {
	addr, fam := bpf.AddrFrom(f.Addr)
	return bpf.SvcKey{Vip: addr, Port: bpf.PortToNet(f.Port), Proto: uint8(f.Protocol), Family: fam}
}

func frontendOf(k bpf.SvcKey) model.Frontend {
	return model.Frontend{Addr: k.Vip.ToAddr(k.Family), Port: bpf.PortFromNet(k.Port), Protocol: model.Protocol(k.Proto)}
}

func refOf(b bpf.BackendValue) backendRef {
	return backendRef{svcID: b.SvcId, addr: addrPortOf(&b), proto: model.Protocol(b.Proto)}
}

// addrPortOf is the backend's socket address.
func addrPortOf(b *bpf.BackendValue) netip.AddrPort {
	return netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port))
}
