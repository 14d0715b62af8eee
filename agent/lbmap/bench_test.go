package lbmap_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
)

// benchSnapshot has n services of perService ready backends each.
func benchSnapshot(n, perService int) *model.Snapshot {
	s := model.NewSnapshot()
	for i := 0; i < n; i++ {
		v := &model.Service{
			Name:     model.ServiceName{Namespace: "bench", Name: fmt.Sprintf("s%d", i)},
			Frontend: model.Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: model.TCP},
		}
		for j := 0; j < perService; j++ {
			v.Backends = append(v.Backends, model.Backend{Addr: netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(j + 1)}),
				Port: 8080, Weight: 1, Ready: true, Serving: true})
		}
		s.Services[v.Frontend] = v
	}
	return s
}

// programmed is a writer on fake maps that has applied snap.
func programmed(b *testing.B, snap *model.Snapshot) *lbmap.Writer {
	w, err := lbmap.NewWriter(lbmaptest.NewTables(65536, 262144).Tables(), &countingObserver{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.Apply(snap); err != nil {
		b.Fatal(err)
	}
	return w
}

func BenchmarkApplyColdStart10k(b *testing.B) {
	snap := benchSnapshot(10000, 10)
	for i := 0; i < b.N; i++ {
		f := lbmaptest.NewTables(65536, 262144)
		w, err := lbmap.NewWriter(f.Tables(), &countingObserver{})
		if err != nil {
			b.Fatal(err)
		}
		if res, err := w.Apply(snap); err != nil || res.Services != 10000 || res.Backends != 100000 {
			b.Fatalf("%+v, %v", res, err)
		}
	}
}

// One endpoint of one service changes per Apply, at 10k services.
func BenchmarkApplyEndpointChange10k(b *testing.B) {
	snap := benchSnapshot(10000, 10)
	w := programmed(b, snap)
	svcs := snap.SortedServices()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		svcs[i%len(svcs)].Backends[0].Port++
		if _, err := w.Apply(snap); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRepairNoDrift10k(b *testing.B) {
	snap := benchSnapshot(10000, 10)
	w := programmed(b, snap)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if n, err := w.Repair(); err != nil || n != 0 {
			b.Fatal(n, err)
		}
	}
}
