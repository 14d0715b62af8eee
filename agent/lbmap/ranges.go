package lbmap

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// sourceRanges are one external frontend's loadBalancerSourceRanges and its Service.
type sourceRanges struct {
	svc      model.ServiceName
	prefixes []netip.Prefix
}

// noteRanges records the loadBalancerSourceRanges of the snapshot's external
// frontends that have any: all of them, or the changed ones in a scoped pass.
func (w *Writer) noteRanges(snap *model.Snapshot, scoped bool) {
	w.rangesOf = noteFrontends(w.rangesOf, snap, scoped, func(svc *model.Service) (sourceRanges, bool) {
		return sourceRanges{svc.Name, svc.External.SourceRanges}, svc.FromOutside() && len(svc.External.SourceRanges) > 0
	})
}

// syncRanges writes the source ranges of the programmed external frontends under their
// ids. A frontend with ranges is published closed (SvcFlagSourceRanges) and opens to
// its ranges here; one whose ranges do not fit stays closed and is reported.
func (w *Writer) syncRanges(res *Result) error {
	if w.ranges == nil {
		return nil
	}
	desired := map[bpf.NPRangeKey]uint8{}
	for _, fe := range slices.SortedFunc(maps.Keys(w.rangesOf), model.CompareFrontends) {
		v, ok := w.services.cur[svcKeyOf(fe)]
		if !ok {
			continue
		}
		r := w.rangesOf[fe]
		if len(desired)+len(r.prefixes) > w.ranges.max {
			svc := r.svc
			res.Errors = append(res.Errors, model.ObjectError{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Reason: "map_full",
				Message: fmt.Sprintf("%s: loadBalancerSourceRanges not programmed, every source is refused: %s holds at most %d ranges", fe, w.ranges.name, w.ranges.max)})
			continue
		}
		for _, p := range r.prefixes {
			addr, _ := bpf.AddrFrom(p.Addr())
			desired[bpf.NPRangeKey{Prefixlen: uint32(32 + p.Bits()), SvcId: v.Id, Addr: bpf.NPLbAddr(addr)}] = 1
		}
	}
	if err := w.ranges.upsert(desired); err != nil {
		return err
	}
	return w.ranges.prune(desired)
}
