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
