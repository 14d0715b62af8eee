package lbmap_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sort"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// listReference is List as it was first written: maps, then sorts (slot counts as the
// backend values hold them, since they do). List must give the
// same, for maps whose frontends and per-service addresses have no ties (where the
// order of the two sorts was unspecified).
func listReference(t lbmap.Tables) ([]lbmap.ListedService, error) {
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
	bySvc := map[uint32][]lbmap.ListedBackend{}
	for id, b := range backends {
		addr := netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port))
		bySvc[b.SvcId] = append(bySvc[b.SvcId], lbmap.ListedBackend{ID: id, Address: addr, Slots: int(b.Slots)})
	}
	type row struct {
		fe  model.Frontend
		svc lbmap.ListedService
	}
	var rows []row
	for k, v := range svcs {
		bs := bySvc[v.Id]
		if bs == nil {
			bs = []lbmap.ListedBackend{}
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].Address.Compare(bs[j].Address) < 0 })
		fe := model.Frontend{Addr: k.Vip.ToAddr(k.Family), Port: bpf.PortFromNet(k.Port), Protocol: model.Protocol(k.Proto)}
		rows = append(rows, row{fe, lbmap.ListedService{ID: v.Id, Name: names[v.Id].String(), Frontend: fe.String(),
			AffinitySeconds: v.AffinityTimeout, Slots: v.Count, Backends: bs}})
	}
	sort.Slice(rows, func(i, j int) bool { return model.FrontendLess(rows[i].fe, rows[j].fe) })
	out := make([]lbmap.ListedService, len(rows))
	for i, r := range rows {
		out[i] = r.svc
	}
	return out, nil
}

// listShape says how randomListContent fills the tables.
type listShape struct {
	services, maxBackends int
	idBase                uint32 // ids start here: high ones make them sparse
	idStride              uint32
	drift                 bool // entries only another writer makes: shared ids, orphans, missing names
	// v4 gives every frontend an IPv4 address: the frontends then sort as the
	// services are made, and the backends' ids come in the services' order.
	v4 bool
}

// randomListContent fills f as a writer would (or, with drift, as several would),
// without ties in frontends or in one service's backend addresses.
func randomListContent(r *rand.Rand, f *lbmaptest.Fakes, s listShape) {
	id := func(i int) uint32 { return s.idBase + uint32(i)*s.idStride }
	nextBackend := 0
	for i := 0; i < s.services; i++ {
		svcID := id(i)
		if s.drift && i > 0 && r.IntN(10) == 0 {
			svcID = id(r.IntN(i)) // shares the id of an earlier service
		}
		var fe netip.Addr
		if !s.v4 && r.IntN(4) == 0 {
			fe = netip.AddrFrom16([16]byte{0xfd, 0, 14: byte(i >> 8), 15: byte(i)})
		} else {
			fe = netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		}
		vip, fam := bpf.AddrFrom(fe)
		proto := []uint8{6, 17, 132}[r.IntN(3)]
		key := bpf.SvcKey{Vip: vip, Port: bpf.PortToNet(uint16(1 + r.IntN(3))), Proto: proto, Family: fam}
		n := r.IntN(s.maxBackends + 1)
		slots := 0
		for j := 0; j < n; j++ {
			bid := id(nextBackend)
			nextBackend++
			var addr netip.Addr
			if r.IntN(4) == 0 {
				addr = netip.AddrFrom16([16]byte{0xfd, 1, 12: byte(i >> 8), 13: byte(i), 15: byte(j)})
			} else {
				addr = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(j)})
			}
			a, af := bpf.AddrFrom(addr)
			weight := 1 + r.IntN(3)
			f.Backends.Entries[bid] = bpf.BackendValue{Addr: a, Port: bpf.PortToNet(uint16(8000 + r.IntN(2))), Proto: proto, Family: af, SvcId: svcID, Slots: uint32(weight)}
			for w := weight; w > 0; w-- {
				f.Slots.Entries[bpf.SlotKey{SvcId: svcID, Slot: uint32(slots)}] = bid
				slots++
			}
		}
		var aff uint32
		if r.IntN(3) == 0 {
			aff = uint32(r.IntN(20000))
		}
		f.Services.Entries[key] = bpf.SvcValue{Id: svcID, Count: uint32(slots), AffinityTimeout: aff}
		if !s.drift || r.IntN(8) != 0 {
			f.Names.Entries[svcID] = bpf.NameFrom(fmt.Sprintf("ns-%d/svc-%d:port", i%7, i))
		}
	}
	if s.drift {
		// Orphans: backends of no service, slots of no backend, names of no service.
		for j := 0; j < 20; j++ {
			a, af := bpf.AddrFrom(netip.AddrFrom4([4]byte{192, 168, 0, byte(j)}))
			f.Backends.Entries[id(nextBackend+j)] = bpf.BackendValue{Addr: a, Port: bpf.PortToNet(1), Family: af, SvcId: id(s.services + j)}
			f.Slots.Entries[bpf.SlotKey{SvcId: id(s.services + j), Slot: 0}] = id(nextBackend + 1000 + j)
			f.Names.Entries[id(s.services+j)] = bpf.NameFrom("orphan")
		}
	}
}

func TestListMatchesReference(t *testing.T) {
	shapes := map[string]listShape{
		"empty":        {services: 0, maxBackends: 3, idBase: 1, idStride: 1},
		"dense":        {services: 300, maxBackends: 12, idBase: 1, idStride: 1},
		"in-order":     {services: 300, maxBackends: 12, idBase: 1, idStride: 1, v4: true},
		"sparse":       {services: 200, maxBackends: 5, idBase: 1 << 31, idStride: 7919},
		"drift":        {services: 300, maxBackends: 6, idBase: 1, idStride: 1, drift: true},
		"drift-sparse": {services: 150, maxBackends: 4, idBase: 3 << 30, idStride: 104729, drift: true},
	}
	for name, shape := range shapes {
		t.Run(name, func(t *testing.T) {
			for seed := uint64(1); seed <= 5; seed++ {
				f := lbmaptest.NewTables(1<<16, 1<<20)
				randomListContent(rand.New(rand.NewPCG(seed, 7)), f, shape)
				got, err := lbmap.List(f.Tables())
				if err != nil {
					t.Fatal(err)
				}
				want, err := listReference(f.Tables())
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("seed %d: List differs from the reference:\n got %+v\nwant %+v", seed, got, want)
				}
				if got == nil {
					t.Fatal("List returned nil, want an empty list")
				}
			}
		})
	}
}

// A service without backends lists an empty, non-nil backend list (JSON "[]").
func TestListServiceWithoutBackends(t *testing.T) {
	f := lbmaptest.NewTables(16, 16)
	vip, fam := bpf.AddrFrom(netip.MustParseAddr("10.96.0.1"))
	f.Services.Entries[bpf.SvcKey{Vip: vip, Port: bpf.PortToNet(80), Proto: 6, Family: fam}] = bpf.SvcValue{Id: 3}
	got, err := lbmap.List(f.Tables())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Backends == nil || len(got[0].Backends) != 0 || got[0].Name != "" || got[0].Frontend != "10.96.0.1:80/TCP" {
		t.Fatalf("%#v", got)
	}
}
