package tests

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

const badObjects = `---
apiVersion: v1
kind: Service
metadata: {name: bad-ip, namespace: demo}
spec:
  clusterIP: 10.96.0.300
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 70000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orphan
  namespace: demo
  labels: {kubernetes.io/service-name: ghost}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["10.200.0.11"]}]
`

func inputErrors(t *testing.T, a *harness.Agent, kind, reason string) float64 {
	return a.Metric(t, "sockmesh_input_errors_total", map[string]string{"kind": kind, "reason": reason})
}

func TestBadObjectsAreNamedCountedAndIsolated(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	good := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2"))
	path := env.WriteFile(t, "svc.yaml", good+badObjects)
	a := env.StartAgent(t, path)
	client := env.Host("client")

	log := a.WaitLog(t, "demo/bad-ip", "demo/bad-port", "demo/orphan")
	for _, want := range []string{"10.96.0.300", "70000", "ghost"} {
		if !strings.Contains(log, want) {
			t.Errorf("agent log does not say why (%q missing):\n%s", want, log)
		}
	}
	for _, c := range []struct{ kind, reason string }{
		{"Service", "invalid_cluster_ip"}, {"Service", "invalid_port"}, {"EndpointSlice", "unknown_service"},
	} {
		if got := inputErrors(t, a, c.kind, c.reason); got != 1 {
			t.Errorf("sockmesh_input_errors_total{kind=%q,reason=%q} = %v, want 1", c.kind, c.reason, got)
		}
	}
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 10); len(res.TCP) != 10 {
		t.Fatalf("the good service next to bad ones: %+v", res)
	}

	// A malformed file changes nothing that is programmed.
	before := pinnedJSON(t, env)
	env.WriteFile(t, "svc.yaml", good+"---\napiVersion: v1\nkind: Service\nmetadata: {name: broken\n")
	a.WaitLog(t, "malformed_yaml")
	if got := inputErrors(t, a, "File", "malformed_yaml"); got != 1 {
		t.Fatalf("malformed_yaml counted %v times, want 1", got)
	}
	if after := pinnedJSON(t, env); after != before {
		t.Fatalf("a malformed file changed the maps:\nbefore %s\nafter  %s", before, after)
	}
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 10); len(res.TCP) != 10 {
		t.Fatalf("service after a malformed file: %+v", res)
	}

	// An invalid edit of a programmed service keeps its last good version.
	env.WriteFile(t, "svc.yaml", strings.Replace(good, "clusterIP: 10.96.0.10", "clusterIP: not-an-ip", 1))
	a.WaitLog(t, "not-an-ip")
	if after := pinnedJSON(t, env); after != before {
		t.Fatalf("an invalid edit changed the maps:\nbefore %s\nafter  %s", before, after)
	}
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 10); len(res.TCP) != 10 {
		t.Fatalf("service after an invalid edit: %+v", res)
	}
}

func TestFullServiceMapRejectsTheRestAndKeepsServing(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	path := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2")))
	// Four frontends (v4/v6 × TCP/UDP) into room for two: the IPv4 ones sort first.
	a := env.StartAgent(t, path, "--max-services", "2")
	log := a.WaitLog(t, "map_full", "[fd00:96::10]:80/TCP", "--max-services")
	if !strings.Contains(log, "demo/web") {
		t.Fatalf("map-full error does not name the service:\n%s", log)
	}
	if got := inputErrors(t, a, "Service", "map_full"); got != 2 {
		t.Fatalf("map_full counted %v, want 2 (the two IPv6 frontends)", got)
	}
	if res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 10); len(res.TCP) != 10 {
		t.Fatalf("programmed service with the map full: %+v", res)
	}
	if p := a.Metric(t, "sockmesh_map_pressure", map[string]string{"map": "sm_services"}); p != 1 {
		t.Fatalf("sm_services pressure %v, want 1", p)
	}
}

func TestBadFlagsAreRejectedWithTheFlagNamed(t *testing.T) {
	bin := harness.Binary(t)
	env := harness.NewEnv(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--source", "nonsense"}, `--source "nonsense"`},
		{[]string{"agent", "--source", "file:/x.yaml", "--max-services", "0"}, "--max-services 0"},
		{[]string{"agent", "--source", "file:/x.yaml", "--http-listen", "nope"}, "--http-listen"},
		{[]string{"agent"}, "no --kubeconfig, no $KUBECONFIG, and not in a cluster"},
		{[]string{"agent", "--kubeconfig", "/nonexistent/kubeconfig"}, "--kubeconfig /nonexistent/kubeconfig"},
		{[]string{"agent", "--source", "file:/x.yaml", "--splice", "sometimes"}, `--splice "sometimes"`},
		{[]string{"agent", "--source", "file:/x.yaml", "--envoy-redirect", "10.0.0.1"}, `--envoy-redirect "10.0.0.1"`},
		{[]string{"agent", "--source", "file:/x.yaml", "--envoy-redirect", "10.0.0.1:1,10.0.0.2:2"}, "one address per IP family"},
		{[]string{"agent", "--source", "file:/x.yaml", "--envoy-mark", "zz"}, "want a hex number"},
		{[]string{"agent", "--source", "file:/x.yaml", "--envoy-mark", "0"}, "--envoy-mark 0"},
		{[]string{"agent", "--source", "file:/x.yaml", "--debug-listen", "127.0.0.1:9"}, `--debug-listen "127.0.0.1:9": want unix:PATH`},
		{[]string{"agent", "--source", "file:/x.yaml", "--max-input-bytes", "0"}, "--max-input-bytes 0"},
		{[]string{"agent", "--source", "file:/x.yaml", "--cgroup", "/tmp"}, "--cgroup /tmp: not a cgroup v2 directory"},
		{[]string{"lb", "list", "-o", "yaml"}, "-o \"yaml\""},
	} {
		args := c.args
		if args[0] == "agent" {
			// Should a flag check regress, the agent must start in the env's own cgroup and
			// pins, never the defaults (the root cgroup), and not for long.
			args = append([]string{"agent", "--cgroup", env.Cgroup.Path, "--bpffs", env.BPFFS,
				"--http-listen", "", "--xds-listen", "", "--debug-listen", ""}, args[1:]...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG=", "KUBERNETES_SERVICE_HOST=") // not in any cluster
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut || !strings.Contains(string(out), c.want) {
			t.Errorf("sockmesh %v: err=%v, output %q; want a failure at once mentioning %q", c.args, err, out, c.want)
		}
	}
}
