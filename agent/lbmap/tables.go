// Package lbmap owns the contents of the socket-LB maps: it turns a model snapshot into
// the entries the datapath reads (services, slots, backends, names) and reconciles the
// kernel maps to them by diff, never by flush, so a restart or a bad input never disturbs
// what is already programmed. Every pass is planned within the maps' capacity, and
// Repair puts back what someone else changed in the maps.
package lbmap

import (
	"github.com/sockmesh/sockmesh/bpf"
)

// Table is one map as the writer uses it. bpf.Table implements it on a real map; tests
// use an in-memory fake that can fail on demand.
type Table[K comparable, V comparable] interface {
	Name() string
	MaxEntries() int
	Dump() (map[K]V, error)
	// Update writes entries and returns how many leading ones were written.
	Update(keys []K, vals []V) (int, error)
	// Delete removes entries and returns how many leading ones were removed.
	Delete(keys []K) (int, error)
}

// Tables are the maps the writer programs.
type Tables struct {
	Services Table[bpf.SvcKey, bpf.SvcValue]
	Slots    Table[bpf.SlotKey, uint32]
	Backends Table[uint32, bpf.BackendValue]
	Names    Table[uint32, bpf.SvcName]
	// Local holds this node's addresses (local endpoints, the Envoy listener): only
	// connections to them are candidates for splicing.
	Local Table[bpf.LbAddr, uint8]
	// Ranges holds the loadBalancerSourceRanges of external frontends, by service id;
	// nil when the NodePort datapath is not loaded.
	Ranges Table[bpf.NPRangeKey, uint8]
}

// BPFTables wraps the loaded (or pinned) kernel maps; np is nil without NodePort devices.
func BPFTables(m *bpf.Maps, np *bpf.NodePortMaps) Tables {
	var ranges Table[bpf.NPRangeKey, uint8]
	if np != nil {
		ranges = bpf.NewTable[bpf.NPRangeKey, uint8](np.Ranges).WithoutBatch() // LPM tries have no batch ops
	}
	return Tables{
		Ranges:   ranges,
		Services: bpf.NewTable[bpf.SvcKey, bpf.SvcValue](m.SmServices),
		Slots:    bpf.NewTable[bpf.SlotKey, uint32](m.SmSlots),
		Backends: bpf.NewArrayTable[bpf.BackendValue](m.SmBackends),
		Names:    bpf.NewTable[uint32, bpf.SvcName](m.SmSvcNames),
		Local:    bpf.NewTable[bpf.LbAddr, uint8](m.SmLocal),
	}
}
