package lbmap

import (
	"maps"

	"github.com/sockmesh/sockmesh/bpf"
)

// Internals the external tests check against.
var (
	SvcKeyOf   = svcKeyOf
	SlotCounts = slotCounts
)

const MaxSlotsPerService = maxSlotsPerService

// Shadow is what a writer believes the maps hold.
type Shadow struct {
	Services map[bpf.SvcKey]bpf.SvcValue
	Slots    map[bpf.SlotKey]uint32
	Backends map[uint32]bpf.BackendValue
	Names    map[uint32]bpf.SvcName
	Local    map[bpf.LbAddr]uint8
}

func ShadowOf(w *Writer) Shadow {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Shadow{maps.Clone(w.services.cur), maps.Clone(w.slots.cur), maps.Clone(w.backends.cur), maps.Clone(w.names.cur), maps.Clone(w.local.cur)}
}
