package lbmap_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// copyInto writes every entry of from into to.
func copyInto[K comparable, V comparable](t *testing.T, to lbmap.Table[K, V], from *lbmaptest.Table[K, V]) {
	t.Helper()
	var keys []K
	var vals []V
	for k, v := range from.Entries {
		keys = append(keys, k)
		vals = append(vals, v)
	}
	if _, err := to.Update(keys, vals); err != nil {
		t.Fatal(err)
	}
}

// loadListMaps loads the socket-LB maps for 4096 services and 16384 backends into a
// pin dir of their own (attached nowhere), removed when the test ends.
func loadListMaps(t *testing.T, name string) *bpf.Maps {
	m, _ := loadListPins(t, name)
	return m
}

// loadListPins is loadListMaps, and the pin dir.
func loadListPins(t *testing.T, name string) (*bpf.Maps, string) {
	t.Helper()
	harness.RequirePrivileged(t)
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("%s%d", name, os.Getpid()))
	t.Cleanup(func() {
		if err := bpf.Cleanup(dir); err != nil {
			t.Error(err)
		}
	})
	dp, err := bpf.Load(dir, bpf.Limits{MaxServices: 4096, MaxBackends: 16384})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp.Maps(), dir
}

// ListMaps on kernel maps (loaded and pinned in a private dir, attached nowhere) lists
// what List lists, in batches of any size: batches smaller than a hash bucket make the
// kernel refuse them, and ListMaps asks again with bigger ones.
func TestListMapsMatchesList(t *testing.T) {
	m := loadListMaps(t, "smtlblist")

	got, err := lbmap.ListMaps(m)
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty maps: %#v, %v", got, err)
	}

	f := lbmaptest.NewTables(4096, 16384)
	randomListContent(rand.New(rand.NewPCG(3, 9)), f, listShape{services: 1500, maxBackends: 8, idBase: 1, idStride: 1, drift: true})
	kt := lbmap.BPFTables(m, nil)
	copyInto(t, kt.Services, f.Services)
	copyInto(t, kt.Slots, f.Slots)
	copyInto(t, kt.Backends, f.Backends)
	copyInto(t, kt.Names, f.Names)
	want, err := lbmap.List(f.Tables())
	if err != nil {
		t.Fatal(err)
	}
	for _, batch := range []int{4096, 1, 3, 1 << 20} {
		restore := lbmap.SetListBatch(batch)
		got, err := lbmap.ListMaps(m)
		restore()
		if err != nil {
			t.Fatalf("batches of %d: %v", batch, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("batches of %d: ListMaps differs from List of the same entries", batch)
		}
	}
	if got, err := lbmap.List(kt); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("List of the kernel maps differs from List of the same entries: %v", err)
	}
}

// ListMaps reads the backend array twice (the scan that groups the backends, then
// each backend's value as it is built) while an agent may write it: a backend may
// have moved or gone by then. It must never fail for that, and every backend it
// shows is one that was programmed. A writer moves backends
// between services and empties and refills elements while the maps are listed.
func TestListMapsWhileTheBackendsChange(t *testing.T) {
	// In id order the backends go straight into place; IPv6 frontends among them put
	// the ranks out of order, and they are staged.
	t.Run("in-order", func(t *testing.T) {
		listWhileChanging(t, listShape{services: 800, maxBackends: 8, idBase: 1, idStride: 1, v4: true})
	})
	t.Run("staged", func(t *testing.T) {
		listWhileChanging(t, listShape{services: 800, maxBackends: 8, idBase: 1, idStride: 1})
	})
}

func listWhileChanging(t *testing.T, shape listShape) {
	m := loadListMaps(t, fmt.Sprintf("smtlbchurn%v", shape.v4))
	f := lbmaptest.NewTables(4096, 16384)
	randomListContent(rand.New(rand.NewPCG(4, 2)), f, shape)
	kt := lbmap.BPFTables(m, nil)
	copyInto(t, kt.Services, f.Services)
	copyInto(t, kt.Backends, f.Backends)
	copyInto(t, kt.Names, f.Names)
	programmed := map[uint32]bool{}
	var ids []uint32
	for id := range f.Backends.Entries {
		programmed[id] = true
		ids = append(ids, id)
	}

	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		r := rand.New(rand.NewPCG(8, 8))
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			id := ids[r.IntN(len(ids))]
			v := f.Backends.Entries[id]
			switch r.IntN(3) {
			case 0: // to another service
				v.SvcId = 1 + uint32(r.IntN(800))
			case 1: // emptied
				v = bpf.BackendValue{}
			}
			if _, err := kt.Backends.Update([]uint32{id}, []bpf.BackendValue{v}); err != nil {
				done <- err
				return
			}
		}
	}()
	for range 200 {
		svcs, err := lbmap.ListMaps(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range svcs {
			for _, b := range s.Backends {
				if !programmed[b.ID] || !b.Address.IsValid() {
					t.Fatalf("listed backend %+v of %s, never programmed", b, s.Frontend)
				}
			}
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A listing re-reads each backend as it fills a service: one moved to another service
// or emptied since the listing was opened is left out, and one changed in place shows
// as it is now.
func TestListingFillsTheBackendsAsTheyAreNow(t *testing.T) {
	m := loadListMaps(t, "smtlbfill")
	kt := lbmap.BPFTables(m, nil)
	backend := func(last byte, svc uint32) bpf.BackendValue {
		a, fam := bpf.AddrFrom(netip.AddrFrom4([4]byte{10, 0, 0, last}))
		return bpf.BackendValue{Addr: a, Port: bpf.PortToNet(80), Proto: 6, Family: fam, SvcId: svc, Slots: 1}
	}
	for svc := uint32(1); svc <= 2; svc++ {
		vip, fam := bpf.AddrFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(svc)}))
		if _, err := kt.Services.Update([]bpf.SvcKey{{Vip: vip, Port: bpf.PortToNet(80), Proto: 6, Family: fam}}, []bpf.SvcValue{{Id: svc, Count: 3}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kt.Backends.Update([]uint32{1, 2, 3, 4}, []bpf.BackendValue{backend(1, 1), backend(2, 1), backend(3, 1), backend(4, 2)}); err != nil {
		t.Fatal(err)
	}
	l, err := lbmap.OpenListing(m)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// After the listing is opened: 1 moves to service 2, 2 is emptied, 3 changes port.
	changed := backend(3, 1)
	changed.Port = bpf.PortToNet(81)
	if _, err := kt.Backends.Update([]uint32{1, 2, 3}, []bpf.BackendValue{backend(1, 2), {}, changed}); err != nil {
		t.Fatal(err)
	}
	svcs := l.Services()
	var got []string
	for _, s := range svcs {
		for _, b := range s.Backends {
			got = append(got, fmt.Sprintf("%s %d %s", s.Frontend, b.ID, b.Address))
		}
	}
	want := []string{"10.96.0.1:80/TCP 3 10.0.0.3:81", "10.96.0.2:80/TCP 4 10.0.0.4:80"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("listed %q, want %q", got, want)
	}
}

// Over pins an older agent left (backends in a hash map), lb list says what to do.
func TestListMapsOverAnOlderAgentsPins(t *testing.T) {
	_, dir := loadListPins(t, "smtlbold")
	harness.PinLegacyBackends(t, dir, map[uint32]bpf.BackendValue{1: {Family: bpf.FamilyIPv4, SvcId: 1}})
	m, err := bpf.OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := lbmap.ListMaps(m); err == nil || !strings.Contains(err.Error(), "older agent") || !strings.Contains(err.Error(), "sm_backends") {
		t.Fatalf("lb list over a hash sm_backends: %v", err)
	}
}
