package tests

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/demo"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// grpcYAML is a gRPC service whose endpoints are the given hosts.
func grpcYAML(hosts ...*demo.Host) string {
	var eps []string
	for _, h := range hosts {
		eps = append(eps, fmt.Sprintf("{addresses: [\"%s\"]}", h.IPv4))
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: demo}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: grpc, port: %[1]d, appProtocol: grpc}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: greeter, namespace: demo, labels: {kubernetes.io/service-name: greeter}}
addressType: IPv4
ports: [{name: grpc, port: %[1]d}]
endpoints: [%[2]s]
`, harness.GRPCPort, strings.Join(eps, ", "))
}

func grpcViaXDS(t *testing.T, env *harness.Env, n int) harness.GRPCResult {
	t.Helper()
	out, err := env.RunOp(t, harness.ClientRequest{Op: "grpc-xds", NetNS: env.Host("client").NetNS, N: n,
		Environ: []string{harness.XDSBootstrapEnv(env.XDSSocket(), "node-1")},
		Args:    []string{fmt.Sprintf("greeter.demo.svc.cluster.local:%d", harness.GRPCPort)}})
	if err != nil {
		t.Fatalf("grpc xds client: %v", err)
	}
	var res harness.GRPCResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	return res
}

func TestGRPCClientResolvesServicesThroughTheAgentsXDS(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	b1, b2 := env.Host("backend-1"), env.Host("backend-2")
	env.StartGRPCBackends(t, b1, b2)
	path := env.WriteFile(t, "svc.yaml", grpcYAML(b1, b2))
	a := env.StartAgent(t, path)

	res := grpcViaXDS(t, env, 40)
	if len(res.Errors) > 0 || res.Peers[b1.IPv4.String()] == 0 || res.Peers[b2.IPv4.String()] == 0 {
		t.Fatalf("40 RPCs through xds:/// landed on %v (errors %v); want both backends", res.Peers, res.Errors)
	}
	if a.Metric(t, "sockmesh_xds_nacks_total", nil) != 0 {
		t.Fatal("the gRPC client rejected the agent's config")
	}

	// An endpoint removed from the YAML: RPCs stop landing there.
	env.WriteFile(t, "svc.yaml", grpcYAML(b1))
	a.WaitMetric(t, "sockmesh_backends", nil, 1, 10e9)
	res = grpcViaXDS(t, env, 20)
	if len(res.Errors) > 0 || res.Peers[b2.IPv4.String()] != 0 || res.Peers[b1.IPv4.String()] != 20 {
		t.Fatalf("after removing backend-2, 20 RPCs landed on %v (errors %v)", res.Peers, res.Errors)
	}
	// And added back: they land there again.
	env.WriteFile(t, "svc.yaml", grpcYAML(b1, b2))
	a.WaitMetric(t, "sockmesh_backends", nil, 2, 10e9)
	res = grpcViaXDS(t, env, 40)
	if len(res.Errors) > 0 || res.Peers[b2.IPv4.String()] == 0 {
		t.Fatalf("after adding backend-2 back, 40 RPCs landed on %v (errors %v)", res.Peers, res.Errors)
	}
}
