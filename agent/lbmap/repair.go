package lbmap

import (
	"cmp"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// state is the content of every table.
type state struct {
	services map[bpf.SvcKey]bpf.SvcValue
	slots    map[bpf.SlotKey]uint32
	backends map[uint32]bpf.BackendValue
	names    map[uint32]bpf.SvcName
	local    map[bpf.LbAddr]uint8
}

// Repair undoes changes made to the maps behind the writer's back (a second agent, an
// operator with bpftool): it reads every table again, takes that as what the kernel
// holds, and puts back what the last Apply left there, in the same capacity-safe phases
// Apply uses. It returns how many entries it wrote or deleted: 0, with nothing written,
// when nothing drifted. Before the first Apply there is nothing to put back, so it only
// re-reads the maps.
func (w *Writer) Repair() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()

	want := w.unrestored
	if want == nil && w.applied {
		// The shadow is what the last Apply left; reading the maps replaces (not
		// overwrites) its maps, so this keeps it.
		want = &state{w.services.cur, w.slots.cur, w.backends.cur, w.names.cur, w.local.cur}
	}
	w.unrestored = want // kept until a pass puts it all back
	for _, reload := range []func() error{w.services.reload, w.slots.reload, w.backends.reload, w.names.reload, w.local.reload} {
		if err := reload(); err != nil {
			return 0, err
		}
	}
	w.adoptIDs()
	if want == nil {
		return 0, nil
	}

	type counter struct {
		name   string
		before int
		now    *int
	}
	counters := []counter{
		{w.services.name, w.services.changed, &w.services.changed},
		{w.slots.name, w.slots.changed, &w.slots.changed},
		{w.backends.name, w.backends.changed, &w.backends.changed},
		{w.names.name, w.names.changed, &w.names.changed},
		{w.local.name, w.local.changed, &w.local.changed},
	}
	complete, err := w.restore(want)
	if !complete || err != nil {
		w.exact = false // the next Apply reads everything
	}
	if complete && err == nil {
		w.unrestored = nil
	}
	total := 0
	for _, c := range counters {
		if n := *c.now - c.before; n > 0 {
			w.obs.MapRepairs(c.name, n)
			total += n
		}
	}
	return total, err
}

// restore brings the maps back to want; complete is false when some service did not
// fit back (another writer filled the maps meanwhile).
func (w *Writer) restore(want *state) (complete bool, err error) {
	idx := w.index()
	groups := groupsOf(want)
	ids := make(map[uint32]bool, len(groups))
	for id := range groups {
		ids[id] = true
	}
	keep := func(k bpf.SvcKey) bool { _, ok := want.services[k]; return ok }
	considered := make([]bpf.SvcKey, 0, len(w.services.cur))
	for k := range w.services.cur {
		considered = append(considered, k)
	}
	if err := w.removeUnwanted(idx, considered, keep, ids); err != nil {
		return false, err
	}
	if err := w.local.prune(want.local); err != nil {
		return false, err
	}
	if err := w.local.upsert(want.local); err != nil {
		return false, err
	}

	// Services first, in frontend order, then entries written ahead of a service that a
	// failed Apply never published: the order decides only if the room ran out.
	order := make([]*serviceEntries, 0, len(groups))
	for _, e := range groups {
		order = append(order, e)
	}
	slices.SortFunc(order, func(a, b *serviceEntries) int {
		if a.hasKey != b.hasKey {
			if a.hasKey {
				return -1
			}
			return 1
		}
		if a.hasKey {
			if c := model.CompareFrontends(frontendOf(a.key), frontendOf(b.key)); c != 0 {
				return c
			}
		}
		return cmp.Compare(a.id, b.id)
	})
	var inPlace []*change
	var cands []*candidate
	for _, e := range order {
		c := restoreChange(e, idx[e.id])
		if w.price(c).none() {
			if c.changes() {
				inPlace = append(inPlace, c)
			}
			continue
		}
		cands = append(cands, &candidate{id: e.id, held: idx[e.id],
			layout: func(uint32, func(int) []uint32) (*change, []uint32) { return c, nil }})
	}
	if _, err := w.execute(inPlace); err != nil {
		return false, err
	}
	refused, err := w.admitWhileRoom(cands)
	return err == nil && len(refused) == 0, err
}

// restoreChange moves id from what h holds to e.
func restoreChange(e *serviceEntries, h *held) *change {
	c := &change{id: e.id, want: e, staleName: !e.hasName}
	if h == nil {
		return c
	}
	slots := make(map[bpf.SlotKey]bool, len(e.slots))
	for _, s := range e.slots {
		slots[s.key] = true
	}
	for _, k := range h.slots {
		if !slots[k] {
			c.staleSlots = append(c.staleSlots, k)
		}
	}
	backends := make(map[uint32]bool, len(e.backends))
	for _, b := range e.backends {
		backends[b.id] = true
	}
	for _, id := range h.backends {
		if !backends[id] {
			c.staleBackends = append(c.staleBackends, id)
		}
	}
	return c
}

// groupsOf splits a state by service id.
func groupsOf(st *state) map[uint32]*serviceEntries {
	groups := map[uint32]*serviceEntries{}
	get := func(id uint32) *serviceEntries {
		e := groups[id]
		if e == nil {
			e = &serviceEntries{id: id}
			groups[id] = e
		}
		return e
	}
	for k, v := range st.services {
		e := get(v.Id)
		e.hasKey, e.key, e.value = true, k, v
	}
	for id, n := range st.names {
		e := get(id)
		e.hasName, e.name = true, n
	}
	for k, bid := range st.slots {
		e := get(k.SvcId)
		e.slots = append(e.slots, slotEntry{k, bid})
	}
	for id, b := range st.backends {
		e := get(b.SvcId)
		e.backends = append(e.backends, backendEntry{id, b})
	}
	return groups
}
