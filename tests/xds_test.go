package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// grpcYAML is a gRPC service whose endpoints are the given hosts.
func grpcYAML(hosts ...*netlab.Host) string {
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

// policyYAML is three AuthorizationPolicies: a good one on greeter, one outside the
// supported subset on web, and one naming a Service that does not exist.
const policyYAML = `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-open, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: greeter}]
  rules: [{from: [{source: {namespaces: [demo]}}]}, {to: [{operation: {paths: ["/grpc.health.*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-jwt, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: web}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ghost-policy, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: ghost}]
`

// A policy makes its service L7: a proxyless gRPC client then gets the ClusterIP as
// the endpoint and its connections are redirected to the node's proxy (the relay),
// not sent to the pods around the policy. Bad policies are named and counted, and
// everything else is served.
func TestPolicyTargetedServiceIsReachedThroughTheProxyByProxylessClients(t *testing.T) {
	env := harness.NewEnv(t, "node", "backend-1", "backend-2")
	b1, b2 := env.Host("backend-1"), env.Host("backend-2")
	env.StartGRPCBackends(t, b1, b2)
	node := env.Host("node")
	listen := []netip.AddrPort{netip.AddrPortFrom(node.IPv4, relayPort), netip.AddrPortFrom(node.IPv6, relayPort)}
	relay := env.StartRelay(t, node, listen, agent.DefaultEnvoyMark)
	web := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2"))
	path := env.WriteFile(t, "svc.yaml", grpcYAML(b1, b2)+"---\n"+web+policyYAML)
	a := env.StartAgent(t, path, "--envoy-redirect", listen[0].String()+","+listen[1].String(),
		"--envoy-mark", "0x539", "--node-name", "node-1")

	a.WaitLog(t, "AuthorizationPolicy demo/web-jwt: spec.rules[0].from[0].source.requestPrincipals is not supported")
	a.WaitLog(t, "AuthorizationPolicy demo/ghost-policy: spec.targetRefs[0] names Service demo/ghost, which does not exist")
	if n := inputErrors(t, a, "AuthorizationPolicy", "unsupported_field"); n != 1 {
		t.Fatalf("unsupported_field errors counted: %v, want 1", n)
	}
	if n := inputErrors(t, a, "AuthorizationPolicy", "unknown_service"); n != 1 {
		t.Fatalf("unknown_service errors counted: %v, want 1", n)
	}
	// /debug/state says which policies apply where, and which fail closed.
	st := a.DebugState(t)
	policies := map[string]string{}
	for _, svc := range st.Services {
		if svc.L7 {
			policies[svc.Name] = strings.Join(svc.Policies, ",")
		}
	}
	if policies["demo/greeter"] != "demo/greeter-open (ALLOW)" || policies["demo/web"] != "demo/web-jwt (rejected: denies all)" {
		t.Fatalf("/debug/state policies of L7 services: %v", policies)
	}
	for state, want := range map[string]float64{"enforced": 1, "fail_closed": 1} {
		if n := a.Metric(t, "sockmesh_policy_services", map[string]string{"state": state}); n != want {
			t.Fatalf("sockmesh_policy_services{state=%q} = %v, want %v (greeter enforced, web failing closed)", state, n, want)
		}
	}

	redirects, translations := counter(t, env, "redirect"), counter(t, env, "xlate_tcp4")
	res := grpcViaXDS(t, env, 40)
	// The client sees the ClusterIP as its peer. The RPCs succeed, so they reached a
	// gRPC server, and those run only on the backends.
	if len(res.Errors) > 0 || res.Peers["10.96.0.40"] != 40 {
		t.Fatalf("40 RPCs to a policy-targeted service: peers %v, errors %v; want all via the ClusterIP", res.Peers, res.Errors)
	}
	vip := fmt.Sprintf("10.96.0.40:%d", harness.GRPCPort)
	viaRelay := 0
	for _, ev := range relay.Events(t) {
		if ev.OrigDst == vip {
			viaRelay++
		}
	}
	redirects = counter(t, env, "redirect") - redirects
	translations = counter(t, env, "xlate_tcp4") - translations
	// Each client connection was redirected to the relay, which found the ClusterIP and
	// whose own (marked) upstream connect was load-balanced to a backend.
	if redirects == 0 || viaRelay != int(redirects) || translations != redirects {
		t.Fatalf("%d client connects redirected, %d seen by the relay for %s, %d upstream translations: "+
			"want every connection through the relay", redirects, viaRelay, vip, translations)
	}
	if a.Metric(t, "sockmesh_xds_nacks_total", nil) != 0 {
		t.Fatal("the gRPC client rejected the agent's config")
	}
}
