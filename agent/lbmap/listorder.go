package lbmap

import (
	"cmp"
	"encoding/binary"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
)

// frontendOrder is a frontend and service id as numbers that sort as
// model.CompareFrontends and then the id sort them: a comparison of a few integers,
// where netip's Compare makes 30k frontends take a third of a listing.
type frontendOrder struct {
	hi, lo uint64 // the address, as As16 gives it
	tail   uint64 // port, protocol, id
	bits   uint8  // the address's BitLen, in 4s: invalid, then IPv4, then IPv6
	at     int32  // where the service is in the content
}

func frontendOrderOf(f model.Frontend, id uint32, at int) frontendOrder {
	a := f.Addr.As16()
	return frontendOrder{bits: uint8(f.Addr.BitLen() / 4), hi: binary.BigEndian.Uint64(a[:8]), lo: binary.BigEndian.Uint64(a[8:]),
		tail: uint64(f.Port)<<48 | uint64(f.Protocol)<<32 | uint64(id), at: int32(at)}
}

func compareFrontendOrder(a, b frontendOrder) int {
	switch {
	case a.bits != b.bits:
		return cmp.Compare(a.bits, b.bits)
	case a.hi != b.hi:
		return cmp.Compare(a.hi, b.hi)
	case a.lo != b.lo:
		return cmp.Compare(a.lo, b.lo)
	}
	return cmp.Compare(a.tail, b.tail)
}

// sortFrontends sorts keys by compareFrontendOrder. When every frontend is IPv4 (the
// usual cluster), address, port and protocol fit in 56 bits, and a radix sort of those
// takes a tenth of a comparison sort's time.
func sortFrontends(keys []frontendOrder) {
	if len(keys) < 2 {
		return
	}
	const v4Bits, v4Hi, v4Lo = 32 / 4, 0, 0xffff << 32 // as frontendOrderOf sets them for IPv4
	packed := make([]uint64, len(keys))
	for i, k := range keys {
		if k.bits != v4Bits || k.hi != v4Hi || k.lo>>32 != v4Lo>>32 {
			slices.SortFunc(keys, compareFrontendOrder)
			return
		}
		packed[i] = k.lo&0xffffffff<<24 | k.tail>>48<<8 | k.tail>>32&0xff // address, port, protocol
	}
	radixSort56(packed, keys)
	// Keys of one frontend (only another writer makes them) go by id.
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && packed[j] == packed[i] {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(keys[i:j], compareFrontendOrder)
		}
		i = j
	}
}

// radixSort56 sorts packed (values below 1<<56) and keys along with it, stably.
func radixSort56(packed []uint64, keys []frontendOrder) {
	tmpP, tmpK := make([]uint64, len(packed)), make([]frontendOrder, len(keys))
	for shift := 0; shift < 56; shift += 8 {
		var count [257]int
		for _, p := range packed {
			count[(p>>shift)&0xff+1]++
		}
		if count[(packed[0]>>shift)&0xff+1] == len(packed) {
			continue // one digit value throughout: the order stands
		}
		for d := 1; d < 257; d++ {
			count[d] += count[d-1]
		}
		for i, p := range packed {
			d := (p >> shift) & 0xff
			tmpP[count[d]], tmpK[count[d]] = p, keys[i]
			count[d]++
		}
		copy(packed, tmpP)
		copy(keys, tmpK)
	}
}
