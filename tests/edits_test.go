package tests

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

const web4 = "10.96.0.10:80/TCP"

func hasBackend(fe string, addr netip.Addr) func([]lbmap.ListedService) bool {
	return func(svcs []lbmap.ListedService) bool {
		s, ok := harness.Frontend(svcs, fe)
		if !ok {
			return false
		}
		for _, b := range s.Backends {
			if b.Address.Addr() == addr {
				return true
			}
		}
		return false
	}
}

func not(f func([]lbmap.ListedService) bool) func([]lbmap.ListedService) bool {
	return func(s []lbmap.ListedService) bool { return !f(s) }
}

func backendsSeen(res harness.ClientResult) map[string]int {
	m := map[string]int{}
	for _, a := range res.TCP {
		m[a.Backend]++
	}
	return m
}

func TestYAMLEditsAddRemoveAndDelete(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2", "backend-3")
	backends := env.StartBackends(t, "backend-1", "backend-2", "backend-3")
	path := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2")))
	env.StartAgent(t, path)
	client := env.Host("client")

	// Added backend: receives new connections.
	env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2", "backend-3")))
	took := env.WaitPinned(t, "backend-3 added", hasBackend(web4, env.Host("backend-3").IPv4))
	t.Logf("added backend programmed %v after the file was replaced", took)
	seen := backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 60))
	if seen["backend-3"] == 0 || len(seen) != 3 {
		t.Fatalf("after adding backend-3, 60 connections spread as %v", seen)
	}

	// Removed backend: receives none.
	env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-2", "backend-3")))
	took = env.WaitPinned(t, "backend-1 removed", not(hasBackend(web4, env.Host("backend-1").IPv4)))
	t.Logf("removed backend unprogrammed %v after the file was replaced", took)
	before := backends["backend-1"].AcceptCount()
	res := env.Run(t, client, "tcp", tcpTo(vip4), 100)
	seen = backendsSeen(res)
	if len(res.Errors) > 0 || seen["backend-1"] != 0 || backends["backend-1"].AcceptCount() != before {
		t.Fatalf("after removing backend-1: %v, errors %v, backend-1 accepted %d more", seen, res.Errors, backends["backend-1"].AcceptCount()-before)
	}

	// Deleted service: the ClusterIP is no longer translated (and, with no route, unreachable).
	// An empty file would be no input at all; deleting everything is said explicitly.
	env.WriteFile(t, "svc.yaml", "# no services\napiVersion: v1\nkind: List\nitems: []\n")
	env.WaitPinned(t, "the service deleted", func(s []lbmap.ListedService) bool { return len(s) == 0 })
	res = env.Run(t, client, "tcp", tcpTo(vip4), 1)
	if len(res.TCP) != 0 || len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "network is unreachable") {
		t.Fatalf("deleted service still resolves: %+v", res)
	}
}

func affinityYAML(hosts []*netlab.Host, timeout int) string {
	y := netlab.ServiceYAML("demo", "web", hosts)
	return strings.Replace(y, "  type: ClusterIP\n",
		"  type: ClusterIP\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: "+itoa(timeout)+"}}\n", 1)
}

func TestClientIPAffinityHoldsExpiresAndFollowsRemoval(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2", "backend-3")
	env.StartBackends(t, "backend-1", "backend-2", "backend-3")
	all := env.Hosts("backend-1", "backend-2", "backend-3")
	path := env.WriteFile(t, "svc.yaml", affinityYAML(all, 10800))
	env.StartAgent(t, path)
	client := env.Host("client")

	seen := backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 40))
	if len(seen) != 1 {
		t.Fatalf("ClientIP affinity: 40 connections from one pod spread as %v", seen)
	}
	var pinned string
	for b := range seen {
		pinned = b
	}
	// The backend it sticks to goes away: the next connections go elsewhere, and stick.
	var rest []*netlab.Host
	for _, h := range all {
		if h.Name != pinned {
			rest = append(rest, h)
		}
	}
	env.WriteFile(t, "svc.yaml", affinityYAML(rest, 10800))
	env.WaitPinned(t, pinned+" removed", not(hasBackend(web4, env.Host(pinned).IPv4)))
	seen = backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 40))
	if len(seen) != 1 || seen[pinned] != 0 {
		t.Fatalf("after removing %s: %v", pinned, seen)
	}

	// A short timeout: within it connections stick; after it a new pick is made. Over 8
	// expiries among 3 backends, always the same pick has odds 1 in 2187.
	env.WriteFile(t, "svc.yaml", affinityYAML(all, 1))
	env.WaitPinned(t, "1s affinity", func(s []lbmap.ListedService) bool {
		f, ok := harness.Frontend(s, web4)
		return ok && f.AffinitySeconds == 1 && len(f.Backends) == 3
	})
	picks := map[string]bool{}
	for i := 0; i < 8; i++ {
		seen := backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 5))
		if len(seen) != 1 {
			t.Fatalf("within the timeout, connections spread as %v", seen)
		}
		for b := range seen {
			picks[b] = true
		}
		time.Sleep(1200 * time.Millisecond)
	}
	if len(picks) < 2 {
		t.Fatalf("affinity never expired: 8 picks after the 1s timeout were all %v", picks)
	}
}

func TestEndpointWeightsSkewTheSpread(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	y := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2"))
	// backend-1 three times as likely as backend-2, on the IPv4 slice.
	y = strings.Replace(y, "  name: web-ipv4\n", "  name: web-ipv4\n  annotations: {sockmesh.io/backend-weights: '{\""+env.Host("backend-1").IPv4.String()+"\": 3}'}\n", 1)
	env.StartAgent(t, env.WriteFile(t, "svc.yaml", y))
	const n = 400
	res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), n)
	seen := backendsSeen(res)
	// Binomial(400, 0.75): mean 300, sd 8.7; ±4.5 sd.
	if len(res.Errors) > 0 || seen["backend-1"] < 261 || seen["backend-1"] > 339 {
		t.Fatalf("weights 3:1 spread %d connections as %v (errors %v)", n, seen, res.Errors)
	}
	if out := env.CLI(t, "lb", "list"); !strings.Contains(out, "(3/4)") {
		t.Fatalf("lb list does not show the weight:\n%s", out)
	}
}
