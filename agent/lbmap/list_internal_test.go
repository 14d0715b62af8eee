package lbmap

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

// sortFrontends sorts as the comparison does: all IPv4 (the radix sort), with keys of
// one frontend under several ids, and mixed with IPv6 (the comparison sort itself).
func TestSortFrontendsMatchesTheComparison(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 11))
	for _, v6 := range []bool{false, true} {
		for round := range 20 {
			var keys []frontendOrder
			for i := range 500 + round {
				a := netip.AddrFrom4([4]byte{10, byte(r.IntN(3)), byte(r.IntN(4)), byte(r.IntN(256))})
				if v6 && r.IntN(5) == 0 {
					a = netip.AddrFrom16([16]byte{0xfd, 15: byte(r.IntN(256))})
				}
				f := model.Frontend{Addr: a, Port: uint16(r.IntN(3) * 300), Protocol: model.Protocol([]uint8{6, 17, 132}[r.IntN(3)])}
				keys = append(keys, frontendOrderOf(f, uint32(r.IntN(1000)), i))
			}
			want := slices.Clone(keys)
			slices.SortFunc(want, compareFrontendOrder)
			sortFrontends(keys)
			for i := range keys {
				if compareFrontendOrder(keys[i], want[i]) != 0 {
					t.Fatalf("v6 %v, round %d: position %d holds %+v, want %+v", v6, round, i, keys[i], want[i])
				}
			}
		}
	}
}
