package lbmap_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// fuzzInput hands out the fuzz bytes, then zeros.
type fuzzInput []byte

func (in *fuzzInput) next() byte {
	if len(*in) == 0 {
		return 0
	}
	b := (*in)[0]
	*in = (*in)[1:]
	return b
}

// snapshotFrom derives a small snapshot: up to 4 frontends with up to 4 backends each,
// with random weights, conditions and node.
func snapshotFrom(in *fuzzInput) *model.Snapshot {
	s := model.NewSnapshot()
	for i := 0; i < 4; i++ {
		b := in.next()
		if b&1 == 0 {
			continue
		}
		v := &model.Service{
			Name:     model.ServiceName{Namespace: "default", Name: fmt.Sprintf("s%d", i)},
			Frontend: model.Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)}), Port: 80, Protocol: model.TCP},
		}
		if b&2 != 0 {
			v.PortName = "http"
		}
		if b&4 != 0 {
			v.AffinityTimeout = 10 * time.Second
		}
		v.L7 = b&8 != 0
		for j := 0; j < 4; j++ {
			c := in.next()
			if c&1 == 0 {
				continue
			}
			be := model.Backend{Addr: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(j + 1)}), Port: 8080,
				Weight: 1 + uint16(c>>1)%3, Ready: c&8 == 0, Terminating: c&16 != 0}
			be.Serving = be.Ready || c&32 != 0
			if c&64 != 0 {
				be.NodeName = "n1"
			}
			v.Backends = append(v.Backends, be)
		}
		s.Services[v.Frontend] = v
	}
	return s
}

// serviceView is one programmed service as a connect() sees it.
type serviceView struct {
	value    bpf.SvcValue
	name     string
	slots    map[netip.AddrPort]int    // slots per backend
	backends map[netip.AddrPort]uint32 // backend ids
}

func viewOf(c lbmap.Shadow, fe model.Frontend) (serviceView, bool) {
	v, ok := c.Services[svcKeyOf(fe)]
	if !ok {
		return serviceView{}, false
	}
	view := serviceView{value: v, name: c.Names[v.Id].String(), slots: map[netip.AddrPort]int{}, backends: map[netip.AddrPort]uint32{}}
	for id, b := range c.Backends {
		if b.SvcId == v.Id {
			view.backends[netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port))] = id
		}
	}
	for k, bid := range c.Slots {
		if k.SvcId == v.Id {
			b := c.Backends[bid]
			view.slots[netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port))]++
		}
	}
	return view, true
}

func (v serviceView) equal(o serviceView) bool {
	return v.value == o.value && v.name == o.name && mapsEqual(v.slots, o.slots) && mapsEqual(v.backends, o.backends)
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// matches says how a programmed service differs from what the snapshot asks.
func matches(v serviceView, svc *model.Service) error {
	sel := svc.Selected()
	weights := make([]int, len(sel))
	for i, b := range sel {
		weights[i] = int(max(b.Weight, 1))
	}
	want := map[netip.AddrPort]int{}
	total := 0
	for i, n := range slotCounts(weights, lbmap.MaxSlotsPerService) {
		want[sel[i].AddrPort()] += n
		total += n
	}
	flags := uint32(0)
	if svc.L7 {
		flags = bpf.SvcFlagL7
	}
	name := svc.Name.String()
	if svc.PortName != "" {
		name += ":" + svc.PortName
	}
	switch {
	case v.value.Count != uint32(total) || v.value.Flags != flags || v.value.AffinityTimeout != uint32(svc.AffinityTimeout.Seconds()):
		return fmt.Errorf("value %+v, want count %d flags %d", v.value, total, flags)
	case v.name != name:
		return fmt.Errorf("name %q, want %q", v.name, name)
	case !mapsEqual(v.slots, want) || len(v.backends) != len(want):
		return fmt.Errorf("slots per backend %v, want %v (backends %v)", v.slots, want, v.backends)
	}
	return nil
}

// desiredSize counts the entries the whole snapshot needs per table.
func desiredSize(snap *model.Snapshot) (services, slots, backends int) {
	for _, svc := range snap.Services {
		sel := svc.Selected()
		weights := make([]int, len(sel))
		for i, b := range sel {
			weights[i] = int(max(b.Weight, 1))
		}
		services++
		backends += len(sel)
		for _, n := range slotCounts(weights, lbmap.MaxSlotsPerService) {
			slots += n
		}
	}
	return
}

// drift edits the fakes as another process might and returns how many entries it
// changed: Repair has to undo exactly that many.
func drift(in *fuzzInput, f *lbmaptest.Fakes) int {
	table := int(in.next() % 5)
	pick := int(in.next())
	switch in.next() % 4 {
	case 0: // flush one table
		return clearTable(f, table)
	case 1: // delete one entry
		return deleteNth(f, table, pick)
	case 2: // point a slot elsewhere
		keys := sortedKeys(f.Slots.Entries)
		if len(keys) == 0 {
			return 0
		}
		f.Slots.Entries[keys[pick%len(keys)]] = 4242
		return 1
	default: // another writer's service
		if f.Services.Len() >= f.Services.Max || f.Slots.Len() >= f.Slots.Max || f.Backends.Len() >= f.Backends.Max {
			return 0
		}
		fe := model.Frontend{Addr: netip.MustParseAddr("10.96.9.9"), Port: 80, Protocol: model.TCP}
		f.Services.Entries[svcKeyOf(fe)] = bpf.SvcValue{Id: 900, Count: 1}
		f.Slots.Entries[bpf.SlotKey{SvcId: 900, Slot: 1}] = 9000
		f.Backends.Entries[9000] = bpf.BackendValue{SvcId: 900}
		return 3
	}
}

func clearTable(f *lbmaptest.Fakes, table int) int {
	var n int
	switch table {
	case 0:
		n = f.Services.Len()
		f.Services.Clear()
	case 1:
		n = f.Slots.Len()
		f.Slots.Clear()
	case 2:
		n = f.Backends.Len()
		f.Backends.Clear()
	case 3:
		n = f.Names.Len()
		f.Names.Clear()
	default:
		n = f.Local.Len()
		f.Local.Clear()
	}
	return n
}

func deleteNth(f *lbmaptest.Fakes, table, pick int) int {
	del := func(n int, remove func(int)) int {
		if n == 0 {
			return 0
		}
		remove(pick % n)
		return 1
	}
	switch table {
	case 0:
		keys := sortedKeys(f.Services.Entries)
		return del(len(keys), func(i int) { delete(f.Services.Entries, keys[i]) })
	case 1:
		keys := sortedKeys(f.Slots.Entries)
		return del(len(keys), func(i int) { delete(f.Slots.Entries, keys[i]) })
	case 2:
		keys := sortedKeys(f.Backends.Entries)
		return del(len(keys), func(i int) { delete(f.Backends.Entries, keys[i]) })
	case 3:
		keys := sortedKeys(f.Names.Entries)
		return del(len(keys), func(i int) { delete(f.Names.Entries, keys[i]) })
	default:
		keys := sortedKeys(f.Local.Entries)
		return del(len(keys), func(i int) { delete(f.Local.Entries, keys[i]) })
	}
}

// sortedKeys orders keys by their printed form: the fuzz input alone decides what
// drift picks.
func sortedKeys[K comparable, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	return keys
}

// FuzzWriterWithinCapacity applies a sequence of small snapshots to small maps, with
// drift repaired and restarts in between, and checks that the plan always fits.
func FuzzWriterWithinCapacity(f *testing.F) {
	f.Add([]byte{1, 1, 0xff, 0xff, 0, 0, 1, 0xff, 0, 0, 0})
	f.Add([]byte{0, 1, 1, 1, 3, 0, 0, 0, 1, 0, 1, 3, 0, 0})
	f.Add([]byte{3, 3, 0, 0xf, 3, 5, 7, 9, 0xf, 3, 5, 7, 9, 0, 0xf, 1, 0, 0, 0, 1, 1, 0, 0, 0, 4, 2, 3, 1})
	f.Add([]byte{2, 5, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 4, 0, 0, 0, 0, 1, 0x41, 0x49, 0x11, 0x21, 5, 0, 1, 1, 1, 1})
	f.Add([]byte{1, 7, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 4, 1, 3, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := fuzzInput(data)
		maxSvc, maxBackends := 1+int(in.next()%4), 1+int(in.next()%8)
		fk := lbmaptest.NewTables(maxSvc, maxBackends)
		inDrift := false
		tables := checkedTables(fk, func() {
			if inDrift {
				return
			}
			if err := checkComplete(contentOf(fk)); err != nil {
				t.Fatalf("between two map calls: %v", err)
			}
		})
		newWriter := func() *lbmap.Writer {
			w, err := lbmap.NewWriter(tables, &countingObserver{})
			if err != nil {
				t.Fatal(err)
			}
			w.SetNode("n1", []netip.Addr{netip.MustParseAddr("10.200.0.1")})
			return w
		}
		w := newWriter()
		var last *model.Snapshot
		for step := 0; step < 16 && len(in) > 0; step++ {
			switch op := in.next(); op % 8 {
			case 6: // drift, then Repair
				before := contentOf(fk)
				inDrift = true
				changed := drift(&in, fk)
				n, err := w.Repair()
				inDrift = false
				if err != nil {
					t.Fatal(err)
				}
				if last == nil {
					continue // nothing to put back yet
				}
				if err := sameContent(contentOf(fk), before); err != nil {
					t.Fatalf("step %d: after Repair: %v", step, err)
				}
				if n != changed {
					t.Fatalf("step %d: Repair returned %d, drift changed %d", step, n, changed)
				}
				if n, err := w.Repair(); err != nil || n != 0 {
					t.Fatalf("step %d: second Repair: %d, %v", step, n, err)
				}
			case 7: // restart over the same maps
				w = newWriter()
				if last != nil {
					writes, deletes := fk.Writes(), fk.Deletes()
					if _, err := w.Apply(last); err != nil || fk.Writes() != writes || fk.Deletes() != deletes {
						t.Fatalf("step %d: restart with the same snapshot: %v, %d writes %d deletes", step, err, fk.Writes()-writes, fk.Deletes()-deletes)
					}
				}
			default:
				snap := snapshotFrom(&in)
				applyAndCheck(t, step, w, fk, snap)
				last = snap
			}
			if fk.Refused() != 0 {
				t.Fatalf("step %d: the maps refused %d writes", step, fk.Refused())
			}
		}
	})
}

func applyAndCheck(t *testing.T, step int, w *lbmap.Writer, fk *lbmaptest.Fakes, snap *model.Snapshot) {
	before := contentOf(fk)
	res, err := w.Apply(snap)
	if err != nil {
		t.Fatalf("step %d: Apply: %v", step, err)
	}
	after := contentOf(fk)
	if err := sameContent(after, lbmap.ShadowOf(w)); err != nil {
		t.Fatalf("step %d: maps and shadow: %v", step, err)
	}
	if err := checkComplete(after); err != nil {
		t.Fatalf("step %d: %v", step, err)
	}
	if err := checkNoLeftovers(after); err != nil {
		t.Fatalf("step %d: %v", step, err)
	}
	refused := map[string]bool{}
	for _, e := range res.Errors {
		if e.Kind == "Service" {
			if e.Reason != "map_full" {
				t.Fatalf("step %d: unexpected error %+v", step, e)
			}
			refused[e.Name] = true
		}
	}
	for fe, svc := range snap.Services {
		old, was := viewOf(before, fe)
		now, is := viewOf(after, fe)
		switch {
		case was && !is:
			t.Fatalf("step %d: %s evicted", step, fe)
		case !is && !refused[svc.Name.Name]:
			t.Fatalf("step %d: %s neither programmed nor refused", step, fe)
		case is && refused[svc.Name.Name]:
			if !was || !now.equal(old) {
				t.Fatalf("step %d: refused %s changed: %+v -> %+v", step, fe, old, now)
			}
		case is:
			if err := matches(now, svc); err != nil {
				t.Fatalf("step %d: %s: %v", step, fe, err)
			}
		}
		if was && is {
			if old.value.Id != now.value.Id {
				t.Fatalf("step %d: %s changed id %d -> %d", step, fe, old.value.Id, now.value.Id)
			}
			for addr, id := range old.backends {
				if nid, ok := now.backends[addr]; ok && nid != id {
					t.Fatalf("step %d: %s backend %s changed id %d -> %d", step, fe, addr, id, nid)
				}
			}
		}
	}
	for k := range after.Services {
		if _, ok := snap.Services[frontendOfKey(k)]; !ok {
			t.Fatalf("step %d: %v programmed but not in the snapshot", step, k)
		}
	}
	// When the old and the new content fit side by side, nothing may be refused.
	svcs, slots, backends := desiredSize(snap)
	if len(before.Services)+svcs <= fk.Services.Max && len(before.Names)+svcs <= fk.Names.Max &&
		len(before.Slots)+slots <= fk.Slots.Max && len(before.Backends)+backends <= fk.Backends.Max && len(refused) > 0 {
		t.Fatalf("step %d: room for old and new, yet refused %v", step, res.Errors)
	}
	// The same snapshot again: nothing to write, the same refusals.
	writes, deletes := fk.Writes(), fk.Deletes()
	res2, err := w.Apply(snap)
	if err != nil || fk.Writes() != writes || fk.Deletes() != deletes || len(res2.Errors) != len(res.Errors) {
		t.Fatalf("step %d: same snapshot again: %v, %d writes, %d deletes, errors %v then %v", step, err, fk.Writes()-writes, fk.Deletes()-deletes, res.Errors, res2.Errors)
	}
}

func frontendOfKey(k bpf.SvcKey) model.Frontend {
	return model.Frontend{Addr: k.Vip.ToAddr(k.Family), Port: bpf.PortFromNet(k.Port), Protocol: model.Protocol(k.Proto)}
}

// FuzzWriterRecoversFromWriteFailures fails one map call of an Apply now and then: the
// writer must still know exactly what the maps hold, leave only complete services, and
// the retry must reach the snapshot with every invariant of FuzzWriterWithinCapacity.
func FuzzWriterRecoversFromWriteFailures(f *testing.F) {
	f.Add([]byte{3, 7, 0x13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{2, 5, 0x21, 1, 1, 1, 0, 0, 0x32, 0, 0, 0, 0, 1, 0x41, 0x49, 0x11, 0x21, 0x04, 0, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := fuzzInput(data)
		fk := lbmaptest.NewTables(1+int(in.next()%4), 1+int(in.next()%8))
		tables := checkedTables(fk, func() {
			if err := checkComplete(contentOf(fk)); err != nil {
				t.Fatalf("between two map calls: %v", err)
			}
		})
		w, err := lbmap.NewWriter(tables, &countingObserver{})
		if err != nil {
			t.Fatal(err)
		}
		for step := 0; step < 12 && len(in) > 0; step++ {
			op := in.next()
			after := int(op>>4) % 4
			switch op % 8 {
			case 0:
				fk.Services.FailUpdateAfter(after)
			case 1:
				fk.Slots.FailUpdateAfter(after)
			case 2:
				fk.Backends.FailUpdateAfter(after)
			case 3:
				fk.Names.FailUpdateAfter(after)
			case 4:
				fk.Slots.FailDeleteAfter(after)
			case 5:
				fk.Backends.FailDeleteAfter(after)
			}
			snap := snapshotFrom(&in)
			if _, err := w.Apply(snap); err != nil {
				if err := sameContent(contentOf(fk), lbmap.ShadowOf(w)); err != nil {
					t.Fatalf("step %d: after a failed write, maps and shadow: %v", step, err)
				}
			}
			// A failure that did not fire must not hit the retry.
			for _, disarm := range []func(int){fk.Services.FailUpdateAfter, fk.Slots.FailUpdateAfter,
				fk.Backends.FailUpdateAfter, fk.Names.FailUpdateAfter, fk.Slots.FailDeleteAfter, fk.Backends.FailDeleteAfter} {
				disarm(-1)
			}
			applyAndCheck(t, step, w, fk, snap)
			if fk.Refused() != 0 {
				t.Fatalf("step %d: the maps refused %d writes", step, fk.Refused())
			}
		}
	})
}
