package harness

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// BenchResult is the latency of connect + one request/response + close to one target.
type BenchResult struct {
	Target netip.AddrPort
	N      int
	Mean   time.Duration
	P50    time.Duration
	P90    time.Duration
}

// bench runs in a client child: rounds × (n/rounds) requests per target, alternating
// targets every round.
func bench(targets []netip.AddrPort, n, rounds int) ([]BenchResult, error) {
	rounds = max(rounds, 1)
	per := max(n/rounds, 1)
	lat := make([][]time.Duration, len(targets))
	for r := 0; r < rounds; r++ {
		for i := range targets {
			// Alternate the order too, so neither target always runs first.
			ti := i
			if r%2 == 1 {
				ti = len(targets) - 1 - i
			}
			for k := 0; k < per; k++ {
				start := time.Now()
				c, _, err := netlab.DialTCP(targets[ti])
				if err != nil {
					return nil, fmt.Errorf("%s: %w", targets[ti], err)
				}
				// Abort instead of FIN: tens of thousands of TIME_WAIT sockets towards one
				// destination make the kernel's ephemeral-port search dominate connect(),
				// on every path alike, and the benchmark would measure that.
				_ = c.SetLinger(0)
				c.Close()
				lat[ti] = append(lat[ti], time.Since(start))
			}
		}
	}
	out := make([]BenchResult, len(targets))
	for i, l := range lat {
		slices.Sort(l)
		var sum time.Duration
		for _, d := range l {
			sum += d
		}
		out[i] = BenchResult{Target: targets[i], N: len(l), Mean: sum / time.Duration(len(l)),
			P50: l[len(l)/2], P90: l[len(l)*9/10]}
	}
	return out, nil
}
