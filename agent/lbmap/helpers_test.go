package lbmap_test

import (
	"fmt"
	"maps"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/bpf"
)

// contentOf copies what the fake tables hold, in the shape of a writer's shadow.
func contentOf(f *lbmaptest.Fakes) lbmap.Shadow {
	return lbmap.Shadow{
		Services: maps.Clone(f.Services.Entries),
		Slots:    maps.Clone(f.Slots.Entries),
		Backends: maps.Clone(f.Backends.Entries),
		Names:    maps.Clone(f.Names.Entries),
		Local:    maps.Clone(f.Local.Entries),
	}
}

// sameContent says how a and b differ, table by table.
func sameContent(a, b lbmap.Shadow) error {
	switch {
	case !maps.Equal(a.Services, b.Services):
		return fmt.Errorf("services differ: %v vs %v", a.Services, b.Services)
	case !maps.Equal(a.Slots, b.Slots):
		return fmt.Errorf("slots differ: %v vs %v", a.Slots, b.Slots)
	case !maps.Equal(a.Backends, b.Backends):
		return fmt.Errorf("backends differ: %v vs %v", a.Backends, b.Backends)
	case !maps.Equal(a.Names, b.Names):
		return fmt.Errorf("names differ: %v vs %v", a.Names, b.Names)
	case !maps.Equal(a.Local, b.Local):
		return fmt.Errorf("local differ: %v vs %v", a.Local, b.Local)
	}
	return nil
}

// checkComplete fails when a connect() could find a service but not finish: a slot in
// 1..Count missing, or a slot's backend missing or belonging to another service.
func checkComplete(s lbmap.Shadow) error {
	for k, v := range s.Services {
		for i := uint32(1); i <= v.Count; i++ {
			bid, ok := s.Slots[slotKey(v.Id, i)]
			if !ok {
				return fmt.Errorf("service %v (id %d, count %d): slot %d missing", k, v.Id, v.Count, i)
			}
			b, ok := s.Backends[bid]
			if !ok {
				return fmt.Errorf("service %v (id %d): slot %d points at missing backend %d", k, v.Id, i, bid)
			}
			if b.SvcId != v.Id {
				return fmt.Errorf("service %v (id %d): slot %d points at backend %d of service %d", k, v.Id, i, bid, b.SvcId)
			}
		}
	}
	return nil
}

// checkNoLeftovers fails on entries no programmed service uses.
func checkNoLeftovers(s lbmap.Shadow) error {
	count := map[uint32]uint32{}
	for _, v := range s.Services {
		if _, dup := count[v.Id]; dup {
			return fmt.Errorf("two services with id %d", v.Id)
		}
		count[v.Id] = v.Count
	}
	used := map[uint32]bool{}
	for k, bid := range s.Slots {
		if c, ok := count[k.SvcId]; !ok || k.Slot < 1 || k.Slot > c {
			return fmt.Errorf("slot %+v is not used by any service", k)
		}
		used[bid] = true
	}
	for id := range s.Backends {
		if !used[id] {
			return fmt.Errorf("backend %d is not used by any slot", id)
		}
	}
	for id := range s.Names {
		if _, ok := count[id]; !ok {
			return fmt.Errorf("name %d belongs to no service", id)
		}
	}
	return nil
}

// checkedTable runs after once each Update or Delete returned: a test sees every state
// a racing connect() could see between two batches.
type checkedTable[K comparable, V comparable] struct {
	lbmap.Table[K, V]
	after func()
}

func (c checkedTable[K, V]) Update(keys []K, vals []V) (int, error) {
	n, err := c.Table.Update(keys, vals)
	c.after()
	return n, err
}

func (c checkedTable[K, V]) Delete(keys []K) (int, error) {
	n, err := c.Table.Delete(keys)
	c.after()
	return n, err
}

// checkedTables are f's tables, with after run after each write call.
func checkedTables(f *lbmaptest.Fakes, after func()) lbmap.Tables {
	t := f.Tables()
	return lbmap.Tables{
		Services: checkedTable[bpf.SvcKey, bpf.SvcValue]{t.Services, after},
		Slots:    checkedTable[bpf.SlotKey, uint32]{t.Slots, after},
		Backends: checkedTable[uint32, bpf.BackendValue]{t.Backends, after},
		Names:    checkedTable[uint32, bpf.SvcName]{t.Names, after},
		Local:    checkedTable[bpf.LbAddr, uint8]{t.Local, after},
	}
}

func slotKey(svc, slot uint32) bpf.SlotKey { return bpf.SlotKey{SvcId: svc, Slot: slot} }
