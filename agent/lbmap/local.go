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
	w.localOf = noteFrontends(w.localOf, snap, scoped, func(svc *model.Service) ([]netip.Addr, bool) {
		var local []netip.Addr
		for _, b := range svc.Backends {
			if w.nodeName != "" && b.NodeName == w.nodeName {
				local = append(local, b.Addr)
			}
		}
		return local, len(local) > 0
	})
}

// noteFrontends keeps an index by frontend of what note derives from each Service:
// rebuilt from every frontend of snap, or, in a scoped pass over an index already
// built, redone for the changed frontends alone. A frontend note keeps nothing for
// (ok false) is left out.
func noteFrontends[V any](index map[model.Frontend]V, snap *model.Snapshot, scoped bool, note func(*model.Service) (v V, ok bool)) map[model.Frontend]V {
	redo := func(fe model.Frontend) {
		delete(index, fe)
		if svc, ok := snap.Services[fe]; ok {
			if v, keep := note(svc); keep {
				index[fe] = v
			}
		}
	}
	if !scoped || index == nil {
		index = map[model.Frontend]V{}
		for fe := range snap.Services {
			redo(fe)
		}
		return index
	}
	for fe := range snap.Changed {
		redo(fe)
	}
	return index
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
