package lbmap

import (
	"github.com/sockmesh/sockmesh/agent/maglev"
	"github.com/sockmesh/sockmesh/agent/model"
)

// SetMaglev sets the size and seed of the Maglev tables of external frontends that ask
// for Maglev (model.LBAlgorithmAnnotation); size 0 turns Maglev off (random for all).
// Every node must be given the same seed for a flow to keep its backend across nodes.
func (w *Writer) SetMaglev(size uint32, seed uint64) error {
	if size != 0 {
		if err := maglev.ValidSize(size); err != nil {
			return err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.maglevSize, w.maglevSeed = size, seed
	w.exact = false
	return nil
}

// maglevTable is the slot layout of a Maglev frontend: entry n names the index in
// selected of the backend slot n+1 picks. Nil for other frontends (and when no
// backend is selected), which get the weighted random layout.
func (w *Writer) maglevTable(svc *model.Service, selected []model.Backend, weights []int) []int32 {
	if !svc.Maglev || !svc.FromOutside() || w.maglevSize == 0 || len(selected) == 0 {
		return nil
	}
	// One table entry per backend address: a backend listed twice adds its weights,
	// and its first listing holds its slots.
	first := map[string]int{}
	var bs []maglev.Backend
	var index []int
	for i, b := range selected {
		key := b.AddrPort().String()
		if at, ok := first[key]; ok {
			bs[at].Weight += uint32(weights[i])
			continue
		}
		first[key] = len(bs)
		bs = append(bs, maglev.Backend{Key: key, Weight: uint32(weights[i])})
		index = append(index, i)
	}
	table, err := maglev.Table(bs, w.maglevSize, w.maglevSeed)
	if err != nil {
		return nil // not reached: the size is checked and every weight is at least 1
	}
	for n, b := range table {
		table[n] = int32(index[b])
	}
	return table
}
