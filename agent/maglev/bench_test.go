package maglev_test

import (
	"hash/fnv"
	"testing"

	"github.com/sockmesh/sockmesh/agent/maglev"
)

// modTable is the baseline: each entry picks backend hash(entry) mod n, as a plain
// hash does.
func modTable(bs []maglev.Backend, m uint32) []int32 {
	tab := make([]int32, m)
	for e := range tab {
		h := fnv.New32a()
		h.Write([]byte{byte(e), byte(e >> 8), byte(e >> 16)})
		tab[e] = int32(h.Sum32() % uint32(len(bs)))
	}
	return tab
}

// BenchmarkTable16381x100 builds the default-size table for 100 backends, and reports
// the share of entries that move when one backend goes: Maglev's (maglev-moved-%)
// beside a hash mod n (mod-moved-%) and the removed backend's own share (own-%).
func BenchmarkTable16381x100(b *testing.B) {
	const n, m = 100, maglev.DefaultSize
	bs := backends(n)
	rest := bs[1:]
	for range b.N {
		if _, err := maglev.Table(bs, m, 3); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	before, after := table(b, bs, m, 3), table(b, rest, m, 3)
	b.ReportMetric(100*float64(moved(before, after, bs, rest))/m, "maglev-moved-%")
	b.ReportMetric(100*float64(moved(modTable(bs, m), modTable(rest, m), bs, rest))/m, "mod-moved-%")
	b.ReportMetric(100*float64(shares(before, n)[0])/m, "own-%")
}
