package tests

import (
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

var (
	vip4 = netlab.ClusterIPv4
	vip6 = netlab.ClusterIPv6
)

func tcpTo(vip netip.Addr) netip.AddrPort { return netip.AddrPortFrom(vip, netlab.ServiceHTTPPort) }
func dnsTo(vip netip.Addr) netip.AddrPort { return netip.AddrPortFrom(vip, netlab.DNSPort) }

// fairShare fails unless every backend got a share of n that a fair coin would give
// with overwhelming probability (within ±4.5 standard deviations).
func fairShare(t *testing.T, counts map[string]int, backends []string, n int) {
	t.Helper()
	p := 1.0 / float64(len(backends))
	mean := float64(n) * p
	sd := sqrt(float64(n) * p * (1 - p))
	for _, b := range backends {
		if c := float64(counts[b]); c < mean-4.5*sd || c > mean+4.5*sd {
			t.Fatalf("backend %s got %v of %d: not a fair share (%v)", b, c, n, counts)
		}
	}
}

// spreadFromVIP checks that all n requests were answered, that the client saw every
// answer come from the service address (getpeername for TCP, recvfrom for DNS), that
// the backends shared them fairly, and returns the count per backend.
func spreadFromVIP(t *testing.T, res harness.ClientResult, vip netip.AddrPort, n int) map[string]int {
	t.Helper()
	if len(res.Errors) > 0 {
		t.Fatalf("%s: %d of %d requests failed, first: %s", vip, len(res.Errors), n, res.Errors[0])
	}
	counts := map[string]int{}
	seen := func(backend string, from netip.AddrPort) {
		counts[backend]++
		if from != vip {
			t.Fatalf("the client saw the answer come from %s, want the ClusterIP %s", from, vip)
		}
	}
	for _, a := range res.TCP {
		seen(a.Backend, a.Peer)
	}
	for _, a := range res.DNS {
		seen(a.Backend, a.From)
	}
	fairShare(t, counts, []string{"backend-1", "backend-2"}, n)
	return counts
}

func sqrt(x float64) float64 {
	z := x
	for i := 0; i < 50; i++ {
		z -= (z*z - x) / (2 * z)
	}
	return z
}

func TestTCPToClusterIPReachesBackendsFairlyOnBothFamilies(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	yaml := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2")))
	env.StartAgent(t, yaml)

	client := env.Host("client")
	const n = 200
	for _, vip := range []netip.Addr{vip4, vip6} {
		counts := spreadFromVIP(t, env.Run(t, client, "tcp", tcpTo(vip), n), tcpTo(vip), n)
		t.Logf("%s: %v", vip, counts)
	}
}

func TestNoClusterIPRouteMeansUntranslatedTrafficCannotLeave(t *testing.T) {
	// The guard every other test relies on: without the agent, a ClusterIP is simply
	// unreachable from the client namespace (no default route), never routed out.
	env := harness.NewEnv(t, "backend-1")
	res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 1)
	if len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "network is unreachable") {
		t.Fatalf("untranslated connect: %+v, want network is unreachable", res)
	}
}

func TestServiceWithoutBackendsIsRefusedFast(t *testing.T) {
	env := harness.NewEnv(t, "backend-1")
	yaml := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", nil))
	env.StartAgent(t, yaml)
	res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 3)
	if len(res.Errors) != 3 {
		t.Fatalf("connects to a service without endpoints: %+v", res)
	}
	for _, e := range res.Errors {
		if !strings.Contains(e, syscall.ECONNREFUSED.Error()) {
			t.Fatalf("want connection refused, got %q", e)
		}
	}
}
