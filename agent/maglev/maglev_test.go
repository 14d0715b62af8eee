package maglev_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/maglev"
)

func backends(n int) []maglev.Backend {
	bs := make([]maglev.Backend, n)
	for i := range bs {
		bs[i] = maglev.Backend{Key: fmt.Sprintf("10.1.%d.%d:8080", i/250, i%250+1), Weight: 1}
	}
	return bs
}

func table(t testing.TB, bs []maglev.Backend, m uint32, seed uint64) []int32 {
	t.Helper()
	tab, err := maglev.Table(bs, m, seed)
	if err != nil {
		t.Fatal(err)
	}
	if len(tab) != int(m) {
		t.Fatalf("%d entries, want %d", len(tab), m)
	}
	for e, i := range tab {
		if i < 0 || int(i) >= len(bs) || bs[i].Weight == 0 {
			t.Fatalf("entry %d picks %d of %d backends", e, i, len(bs))
		}
	}
	return tab
}

func shares(tab []int32, n int) []int {
	c := make([]int, n)
	for _, e := range tab {
		c[e]++
	}
	return c
}

// Equal weights: every backend holds ⌊m/n⌋ or ⌈m/n⌉ entries.
func TestEqualWeightsShareEvenly(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 100, 1000} {
		for _, m := range []uint32{251, 16381, 65521} {
			if uint32(n) > m {
				continue
			}
			for i, c := range shares(table(t, backends(n), m, 1), n) {
				if lo := int(m) / n; c < lo || c > lo+1 {
					t.Fatalf("%d backends, m %d: backend %d holds %d entries, want %d or %d", n, m, i, c, lo, lo+1)
				}
			}
		}
	}
}

// Shares follow the weights: 1, 2 and 5 of 8.
func TestWeightsSetTheShares(t *testing.T) {
	bs := backends(3)
	bs[0].Weight, bs[1].Weight, bs[2].Weight = 1, 2, 5
	const m = 16381
	for i, c := range shares(table(t, bs, m, 7), 3) {
		want := float64(m) * float64(bs[i].Weight) / 8
		if d := float64(c) - want; d > want/100 || d < -want/100 {
			t.Errorf("backend of weight %d holds %d entries, want %.0f ± 1%%", bs[i].Weight, c, want)
		}
	}
	// A weight of 0 takes nothing.
	bs[1].Weight = 0
	if c := shares(table(t, bs, m, 7), 3); c[1] != 0 {
		t.Errorf("a backend of weight 0 holds %d entries", c[1])
	}
}

// Every node builds the same table from the same backends in any order: the table
// names the same keys entry by entry.
func TestSameTableInAnyOrder(t *testing.T) {
	bs := backends(50)
	want := table(t, bs, 4093, 42)
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		shuffled := append([]maglev.Backend(nil), bs...)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := table(t, shuffled, 4093, 42)
		for e := range got {
			if shuffled[got[e]].Key != bs[want[e]].Key {
				t.Fatalf("entry %d: %s in one order, %s in another", e, shuffled[got[e]].Key, bs[want[e]].Key)
			}
		}
	}
	// Another seed, another table.
	other := table(t, bs, 4093, 43)
	same := 0
	for e := range other {
		if other[e] == want[e] {
			same++
		}
	}
	if same > len(other)/10 {
		t.Errorf("seeds 42 and 43 agree on %d of %d entries", same, len(other))
	}
}

// moved is how many entries pick another backend (by key) in after than in before.
func moved(before, after []int32, bsBefore, bsAfter []maglev.Backend) int {
	n := 0
	for e := range before {
		if bsBefore[before[e]].Key != bsAfter[after[e]].Key {
			n++
		}
	}
	return n
}

// Removing one of n backends moves its own entries and few others: the point of
// Maglev over a hash mod n, which moves nearly all of them.
func TestRemovingABackendMovesLittle(t *testing.T) {
	const n, m = 100, 16381
	bs := backends(n)
	before := table(t, bs, m, 9)
	for _, gone := range []int{0, 37, n - 1} {
		rest := append(append([]maglev.Backend(nil), bs[:gone]...), bs[gone+1:]...)
		after := table(t, rest, m, 9)
		own := shares(before, n)[gone]
		others := moved(before, after, bs, rest) - own
		// The paper measures a few percent of the table beyond the removed share.
		if others > m*3/100 {
			t.Errorf("removing backend %d moved %d entries besides its own %d (of %d)", gone, others, own, m)
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, c := range []struct {
		name string
		bs   []maglev.Backend
		m    uint32
		want string
	}{
		{"size not prime", backends(3), 1000, "maglev table size 1000: want one of the primes 251, 509"},
		{"size 0", backends(3), 0, "maglev table size 0"},
		{"no backends", nil, 251, "none has a weight"},
		{"all weight 0", []maglev.Backend{{Key: "10.0.0.1:80"}}, 251, "none has a weight"},
		{"a key twice", []maglev.Backend{{Key: "10.0.0.1:80", Weight: 1}, {Key: "10.0.0.1:80", Weight: 2}}, 251, "backend 10.0.0.1:80 given twice"},
	} {
		if _, err := maglev.Table(c.bs, c.m, 0); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	for _, m := range maglev.Sizes {
		if err := maglev.ValidSize(m); err != nil {
			t.Error(err)
		}
	}
}
