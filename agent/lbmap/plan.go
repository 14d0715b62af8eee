package lbmap

import (
	"fmt"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// A pass moves the maps to a target in phases, each planned to fit the maps' capacity
// including its make-before-break transient, so no write is ever refused for room:
//
//	(a) services that are gone are deleted whole (key first, then slots, names,
//	    backends), with anything else no wanted service holds: this frees room first;
//	(b) services whose update needs no new key (in place, or shrinking) are updated, and
//	    what they no longer use is deleted;
//	(c) the rest (growing and new services) are admitted in order while they fit in the
//	    room left; their leftovers are deleted after them, and the ones that did not fit
//	    get another round while a round frees room.
//
// Within a phase all changes go out together, a few batches per table.

// need counts entries per table: the new keys a change needs, or the room the maps have.
type need struct{ services, names, slots, backends int }

func (n need) none() bool { return n == need{} }

func (n need) fits(room need) bool {
	return n.services <= room.services && n.names <= room.names && n.slots <= room.slots && n.backends <= room.backends
}

func (n need) minus(m need) need {
	return need{n.services - m.services, n.names - m.names, n.slots - m.slots, n.backends - m.backends}
}

// room is what the maps can take now. A backend also needs a free id: the pool has
// fewer than the table has room only after a pass failed with ids taken.
func (w *Writer) room() need {
	return need{w.services.room(), w.names.room(), w.slots.room(), min(w.backends.room(), w.backendIDs.left())}
}

// full says which map lacks the room n needs, for the error a refused service gets.
func (w *Writer) full(n, room need) string {
	switch {
	case n.services > room.services:
		return fmt.Sprintf("%s holds at most %d services (--max-services)", w.services.name, w.services.max)
	case n.names > room.names:
		return fmt.Sprintf("%s holds at most %d names (--max-services)", w.names.name, w.names.max)
	case n.slots > room.slots:
		return fmt.Sprintf("%s holds at most %d slots (--max-backends)", w.slots.name, w.slots.max)
	default:
		return fmt.Sprintf("%s holds at most %d backends (--max-backends)", w.backends.name, w.backends.max)
	}
}

// change moves one service id from what the maps hold to want (nil: nothing): the
// entries of want the maps lack or hold otherwise are written, then the stale ones it
// lists are deleted.
type change struct {
	id            uint32
	want          *serviceEntries
	staleSlots    []bpf.SlotKey
	staleBackends []uint32
	staleName     bool

	// Found by price: what execute writes.
	slots                   []slotEntry
	backends                []backendEntry
	writeName, writeService bool
}

// deleteAll is the change that removes everything h holds for id.
func deleteAll(id uint32, h *held) *change {
	c := &change{id: id, staleName: true}
	if h != nil {
		c.staleSlots, c.staleBackends = h.slots, h.backends
	}
	return c
}

// price finds the entries c has to write and returns how many of them are new keys.
func (w *Writer) price(c *change) need {
	var n need
	c.slots, c.backends, c.writeName, c.writeService = c.slots[:0], c.backends[:0], false, false
	e := c.want
	if e == nil {
		return n
	}
	if e.hasKey {
		old, ok := w.services.cur[e.key]
		c.writeService = !ok || old != e.value
		if !ok {
			n.services++
		}
	}
	if e.hasName {
		old, ok := w.names.cur[e.id]
		c.writeName = !ok || old != e.name
		if !ok {
			n.names++
		}
	}
	for _, s := range e.slots {
		if old, ok := w.slots.cur[s.key]; !ok || old != s.backend {
			c.slots = append(c.slots, s)
			if !ok {
				n.slots++
			}
		}
	}
	for _, b := range e.backends {
		if old, ok := w.backends.cur[b.id]; !ok || old != b.value {
			c.backends = append(c.backends, b)
			if !ok {
				n.backends++
			}
		}
	}
	return n
}

// changes reports whether c writes or deletes anything, once priced.
func (c *change) changes() bool {
	return len(c.slots)+len(c.backends)+len(c.staleSlots)+len(c.staleBackends) > 0 || c.writeName || c.writeService || c.staleName
}

// removeUnwanted is phase (a): it deletes the considered services keep refuses, then
// the slots, names and backends of every id of idx not in ids.
func (w *Writer) removeUnwanted(idx heldIndex, considered []bpf.SvcKey, keep func(bpf.SvcKey) bool, ids map[uint32]bool) error {
	var svcKeys []bpf.SvcKey
	for _, k := range considered {
		if !keep(k) {
			svcKeys = append(svcKeys, k)
		}
	}
	// Unpublish first: from here no connect() reads the rest.
	if err := w.services.remove(svcKeys); err != nil {
		return err
	}
	var gone []*change
	for id, h := range idx {
		if !ids[id] {
			gone = append(gone, deleteAll(id, h))
		}
	}
	_, err := w.execute(gone)
	return err
}

// execute applies priced changes together: new backends, slots, names and services in
// that order (so a connect() finds every slot of a service it reads, and every backend
// of a slot), then the stale slots, names and backends. It returns how many entries it
// deleted.
func (w *Writer) execute(changes []*change) (int, error) {
	var (
		backendIDs  []uint32
		backendVals []bpf.BackendValue
		slotKeys    []bpf.SlotKey
		slotVals    []uint32
		nameIDs     []uint32
		nameVals    []bpf.SvcName
		svcKeys     []bpf.SvcKey
		svcVals     []bpf.SvcValue
	)
	for _, c := range changes {
		for _, b := range c.backends {
			backendIDs, backendVals = append(backendIDs, b.id), append(backendVals, b.value)
		}
		for _, s := range c.slots {
			slotKeys, slotVals = append(slotKeys, s.key), append(slotVals, s.backend)
		}
		if c.writeName {
			nameIDs, nameVals = append(nameIDs, c.want.id), append(nameVals, c.want.name)
		}
		if c.writeService {
			svcKeys, svcVals = append(svcKeys, c.want.key), append(svcVals, c.want.value)
		}
	}
	if err := w.backends.write(backendIDs, backendVals); err != nil {
		return 0, err
	}
	if err := w.slots.write(slotKeys, slotVals); err != nil {
		return 0, err
	}
	if err := w.names.write(nameIDs, nameVals); err != nil {
		return 0, err
	}
	if err := w.services.write(svcKeys, svcVals); err != nil {
		return 0, err
	}

	var staleSlots []bpf.SlotKey
	var staleBackends, staleNames []uint32
	for _, c := range changes {
		for _, k := range c.staleSlots {
			if _, ok := w.slots.cur[k]; ok {
				staleSlots = append(staleSlots, k)
			}
		}
		for _, id := range c.staleBackends {
			if _, ok := w.backends.cur[id]; ok {
				staleBackends = append(staleBackends, id)
			}
		}
		if _, ok := w.names.cur[c.id]; ok && c.staleName {
			staleNames = append(staleNames, c.id)
		}
	}
	if err := w.slots.remove(staleSlots); err != nil {
		return 0, err
	}
	if err := w.names.remove(staleNames); err != nil {
		return 0, err
	}
	if err := w.backends.remove(staleBackends); err != nil {
		return 0, err
	}
	return len(staleSlots) + len(staleBackends) + len(staleNames), nil
}

// candidate is a change that needs room (phase c).
type candidate struct {
	svc   *model.Service // nil in a restore
	id    uint32
	newID bool // takes a fresh service id when admitted
	held  *held
	// layout returns the change to id's entries, with fresh backend ids asked of
	// fresh, and the fresh ids it used.
	layout func(id uint32, fresh func(n int) []uint32) (*change, []uint32)
	// admitted learns the id a candidate was admitted under.
	admitted func(id uint32)
}

// refusal is a candidate that did not fit, and why.
type refusal struct {
	c      *candidate
	reason string
}

// admitWhileRoom is phase (c): candidates are admitted in order while they fit in the
// room left, then applied together; while a round frees room, the refused ones get
// another round. Ids are taken only on admission, so refusals use none up.
func (w *Writer) admitWhileRoom(cands []*candidate) ([]refusal, error) {
	for {
		room := w.room()
		var admitted []*change
		var refused []refusal
		for _, c := range cands {
			id := c.id
			if c.newID {
				id = w.nextSvcID
			}
			ch, freshIDs := c.layout(id, w.backendIDs.peek)
			n := w.price(ch)
			if !n.fits(room) {
				refused = append(refused, refusal{c, w.full(n, room)})
				continue
			}
			room = room.minus(n)
			if c.newID {
				c.id, c.newID = id, false
				w.nextSvcID++
			}
			w.backendIDs.take(freshIDs)
			if c.admitted != nil {
				c.admitted(id)
			}
			admitted = append(admitted, ch)
		}
		freed, err := w.execute(admitted)
		if err != nil {
			return nil, err
		}
		if len(refused) == 0 || freed == 0 {
			return refused, nil
		}
		cands = cands[:0]
		for _, r := range refused {
			cands = append(cands, r.c)
		}
	}
}
