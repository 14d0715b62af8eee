package lbmap

import (
	"slices"
	"testing"
)

func TestBackendIDPool(t *testing.T) {
	for _, max := range []int{1, 63, 64, 65, 200} {
		held := map[uint32]struct{}{1: {}, uint32(max): {}}
		p := newBackendIDPool(max, held)
		wantLeft := max - len(held)
		if p.left() != wantLeft {
			t.Fatalf("max %d: %d free, want %d", max, p.left(), wantLeft)
		}
		all := p.peek(max + 10)
		if len(all) != wantLeft || (len(all) > 0 && (all[0] != 2 || all[len(all)-1] != uint32(max-1))) || !slices.IsSorted(all) {
			t.Fatalf("max %d: peek gave %v", max, all)
		}
		if max < 4 {
			continue
		}
		p.take([]uint32{2, 3})
		p.release(1)
		p.release(1) // twice: still one free id
		p.used(5)
		if got := p.peek(3); !slices.Equal(got, []uint32{1, 4, 6}) || p.left() != wantLeft-3+1 {
			t.Fatalf("max %d: after take, release and use: peek %v, %d left", max, got, p.left())
		}
		p.release(0)
		p.release(uint32(max + 1))
		if p.left() != wantLeft-2 {
			t.Fatalf("max %d: ids outside 1..max were taken in: %d left", max, p.left())
		}
	}
}
