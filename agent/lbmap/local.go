package lbmap

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// noteLocal records the local endpoint addresses of the snapshot's frontends: all of
// them, or the changed ones in a scoped pass.
func (w *Writer) noteLocal(snap *model.Snapshot, scoped bool) {
	note := func(fe model.Frontend) {
		delete(w.localOf, fe)
		svc, ok := snap.Services[fe]
		if !ok || w.nodeName == "" {
			return
		}
		for _, b := range svc.Backends {
			if b.NodeName == w.nodeName {
				w.localOf[fe] = append(w.localOf[fe], b.Addr)
			}
		}
	}
	if !scoped || w.localOf == nil {
		w.localOf = map[model.Frontend][]netip.Addr{}
		for fe := range snap.Services {
			note(fe)
		}
		return
	}
	for fe := range snap.Changed {
		note(fe)
	}
}

// localAddrs are the addresses of endpoints on this node plus the node's own. When they
// outnumber the map, the ones it holds stay, then the lowest; the rest are reported.
func (w *Writer) localAddrs() (map[bpf.LbAddr]uint8, *model.ObjectError) {
	var addrs []netip.Addr
	addrs = append(addrs, w.nodeAddrs...)
	for _, as := range w.localOf {
		addrs = append(addrs, as...)
	}
	out := make(map[bpf.LbAddr]uint8, len(addrs))
	for _, a := range addrs {
		k, _ := bpf.AddrFrom(a)
		out[k] = 1
	}
	if len(out) <= w.local.max {
		return out, nil
	}
	keys := make([]bpf.LbAddr, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b bpf.LbAddr) int {
		_, aHeld := w.local.cur[a]
		_, bHeld := w.local.cur[b]
		if aHeld != bHeld {
			if aHeld {
				return -1
			}
			return 1
		}
		return slices.Compare(a.Addr[:], b.Addr[:])
	})
	for _, k := range keys[w.local.max:] {
		delete(out, k)
	}
	return out, &model.ObjectError{Kind: "Node", Name: w.nodeName, Reason: "map_full",
		Message: fmt.Sprintf("%d local addresses not marked local (no splicing to them): %s holds at most %d", len(keys)-w.local.max, w.local.name, w.local.max)}
}
