package lbmap_test

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

func TestExternalFrontendsGetFlagsAndSourceRanges(t *testing.T) {
	f := newFakes(100, 100)
	ranges := lbmaptest.NewTable[bpf.NPRangeKey, uint8]("sm_np_ranges", 3)
	tables := f.Tables()
	tables.Ranges = ranges
	w, err := lbmap.NewWriter(tables, &countingObserver{})
	if err != nil {
		t.Fatal(err)
	}
	lb := svc("default", "web", "203.0.113.1", 80, "10.0.0.1:8080")
	lb.Kind = model.LoadBalancerFrontend
	lb.External.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("192.0.2.0/28")}
	nodePort := svc("default", "web", "0.0.0.0", 30080, "10.0.0.1:8080")
	nodePort.Kind = model.NodePortFrontend
	cluster := svc("default", "web", "10.96.0.10", 80, "10.0.0.1:8080")
	if _, err := w.Apply(snapOf(lb, nodePort, cluster)); err != nil {
		t.Fatal(err)
	}
	flags := func(s *model.Service) uint32 { return f.Services.Entries[svcKeyOf(s.Frontend)].Flags }
	if flags(cluster) != 0 || flags(nodePort) != bpf.SvcFlagExternal || flags(lb) != bpf.SvcFlagExternal|bpf.SvcFlagLoadBalancer|bpf.SvcFlagSourceRanges {
		t.Fatalf("flags: cluster %#x, NodePort %#x, LB %#x", flags(cluster), flags(nodePort), flags(lb))
	}
	id := f.Services.Entries[svcKeyOf(lb.Frontend)].Id
	want := map[bpf.NPRangeKey]uint8{}
	for _, p := range lb.External.SourceRanges {
		a, _ := bpf.AddrFrom(p.Addr())
		want[bpf.NPRangeKey{Prefixlen: uint32(32 + p.Bits()), SvcId: id, Addr: bpf.NPLbAddr(a)}] = 1
	}
	if !maps.Equal(ranges.Entries, want) {
		t.Fatalf("ranges %v, want %v", ranges.Entries, want)
	}

	// A second LB Service whose two ranges overflow the table stays closed, reported.
	other := svc("default", "other", "203.0.113.2", 80, "10.0.0.2:8080")
	other.Kind = model.LoadBalancerFrontend
	other.External.SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.2.0.0/16")}
	res, err := w.Apply(snapOf(lb, nodePort, cluster, other))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || res.Errors[0].Name != "other" || res.Errors[0].Reason != "map_full" {
		t.Fatalf("errors %v, want one map_full for default/other", res.Errors)
	}
	if flags(other)&bpf.SvcFlagSourceRanges == 0 || len(ranges.Entries) != 2 {
		t.Fatalf("the overflowing Service must stay closed: flags %#x, ranges %v", flags(other), ranges.Entries)
	}

	// Ranges dropped: the entries go, and the frontend opens.
	lb.External.SourceRanges = nil
	if _, err := w.Apply(snapOf(lb, nodePort, cluster)); err != nil {
		t.Fatal(err)
	}
	if len(ranges.Entries) != 0 || flags(lb) != bpf.SvcFlagExternal|bpf.SvcFlagLoadBalancer {
		t.Fatalf("after dropping the ranges: %v, flags %#x", ranges.Entries, flags(lb))
	}
}

// TestMaglevFrontendsGetTheSameTableOnEveryNode: a Maglev frontend's slots are the
// Maglev table, and two nodes whose maps hand out other backend ids (one programmed
// other services first) map every slot to the same backend address.
func TestMaglevFrontendsGetTheSameTableOnEveryNode(t *testing.T) {
	lb := svc("default", "web", "0.0.0.0", 30080, "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080")
	lb.Kind, lb.Maglev = model.NodePortFrontend, true
	other := svc("default", "other", "10.96.0.9", 80, "10.0.0.9:80", "10.0.0.8:80")
	layout := func(first ...*model.Service) map[uint32]netip.AddrPort {
		f := newFakes(100, 2000)
		w, err := lbmap.NewWriter(f.Tables(), &countingObserver{})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.SetMaglev(251, 42); err != nil {
			t.Fatal(err)
		}
		if len(first) > 0 {
			if _, err := w.Apply(snapOf(first...)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := w.Apply(snapOf(append(first, lb)...)); err != nil {
			t.Fatal(err)
		}
		v := f.Services.Entries[svcKeyOf(lb.Frontend)]
		if v.Count != 251 || v.Flags&bpf.SvcFlagMaglev == 0 {
			t.Fatalf("Maglev frontend: count %d flags %#x, want 251 slots and the Maglev flag", v.Count, v.Flags)
		}
		out := map[uint32]netip.AddrPort{}
		for k, id := range f.Slots.Entries {
			if k.SvcId == v.Id {
				b := f.Backends.Entries[id]
				out[k.Slot] = netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port))
			}
		}
		return out
	}
	a, b := layout(), layout(other)
	if len(a) != 251 || !maps.Equal(a, b) {
		t.Fatalf("the two nodes' Maglev slots differ (%d and %d slots)", len(a), len(b))
	}
	if err := (&lbmap.Writer{}).SetMaglev(250, 1); err == nil {
		t.Fatal("a table size that is not one of the primes was accepted")
	}
}
