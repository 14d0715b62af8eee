package lbmap

import "math/bits"

// backendIDPool hands out backend ids. The backend map is an array indexed by id, so
// ids must stay within 1..max: an id is free again once its entry is removed, and the
// lowest free ids go first (the same input gets the same ids). Entries written and
// removed through the writer's table keep the pool in step (used, release); ids taken
// for a pass that then failed are neither, so a failed pass rebuilds the pool from what
// the map holds.
type backendIDPool struct {
	free   []uint64 // bit id%64 of word id/64 is set when id is free
	max    uint32
	nfree  int
	lowest int // no word below this one has a free bit
}

// newBackendIDPool is the pool over 1..max with every id the map holds in use.
func newBackendIDPool[V any](max int, held map[uint32]V) *backendIDPool {
	p := &backendIDPool{free: make([]uint64, max/64+1), max: uint32(max)}
	for w := range p.free {
		p.free[w] = ^uint64(0)
	}
	p.free[len(p.free)-1] = uint64(1)<<(max%64+1) - 1 // no id beyond max
	p.free[0] &^= 1                                   // id 0 is never a backend
	for id := range held {
		if id > 0 && id <= p.max {
			p.free[id/64] &^= 1 << (id % 64)
		}
	}
	for _, word := range p.free {
		p.nfree += bits.OnesCount64(word)
	}
	return p
}

// left is how many ids are free.
func (p *backendIDPool) left() int { return p.nfree }

// peek returns the n lowest free ids, or all of them when fewer are free; it takes none.
func (p *backendIDPool) peek(n int) []uint32 {
	if n == 0 {
		return nil
	}
	out := make([]uint32, 0, min(n, p.nfree))
	for w := p.lowest; w < len(p.free) && len(out) < n; w++ {
		for word := p.free[w]; word != 0 && len(out) < n; word &= word - 1 {
			out = append(out, uint32(w*64+bits.TrailingZeros64(word)))
		}
	}
	return out
}

// take marks ids in use, as written entries.
func (p *backendIDPool) take(ids []uint32) {
	for _, id := range ids {
		p.used(id)
	}
}

// used notes that an entry holds id.
func (p *backendIDPool) used(id uint32) {
	if id == 0 || id > p.max {
		return
	}
	if bit := uint64(1) << (id % 64); p.free[id/64]&bit != 0 {
		p.free[id/64] &^= bit
		p.nfree--
	}
	for p.lowest < len(p.free) && p.free[p.lowest] == 0 {
		p.lowest++
	}
}

// release notes that no entry holds id any more.
func (p *backendIDPool) release(id uint32) {
	if id == 0 || id > p.max {
		return
	}
	if bit := uint64(1) << (id % 64); p.free[id/64]&bit == 0 {
		p.free[id/64] |= bit
		p.nfree++
	}
	p.lowest = min(p.lowest, int(id/64))
}
