package xds

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sockmesh/sockmesh/agent/model"
)

// collidingModel has c/a.b and b.c/a, whose host is a.b.c.svc.cluster.local for both,
// each with one backend of its own, and a service that collides with nothing.
func collidingModel(l7 bool) *model.Snapshot {
	s := model.NewSnapshot()
	add := func(ns, name, vip, backend string) {
		svc := &model.Service{Name: model.ServiceName{Namespace: ns, Name: name}, PortName: "http", L7: l7, AppProtocol: model.AppHTTP,
			Frontend: model.Frontend{Addr: netip.MustParseAddr(vip), Port: 80, Protocol: model.TCP},
			Backends: []model.Backend{{Addr: netip.MustParseAddr(backend), Port: 8080, Weight: 1, Ready: true, Serving: true}}}
		s.Services[svc.Frontend] = svc
	}
	add("c", "a.b", "10.96.0.1", "10.1.0.1")
	add("b.c", "a", "10.96.0.2", "10.2.0.1")
	add("shop", "web", "10.96.0.3", "10.3.0.1")
	return s
}

const collidingCluster = "outbound|80||a.b.c.svc.cluster.local"

// backendsOf lists the endpoints a snapshot serves for a cluster.
func backendsOf(t *testing.T, s cachev3.ResourceSnapshot, cluster string) string {
	t.Helper()
	cla, ok := s.GetResources(resourcev3.EndpointType)[cluster].(*endpointv3.ClusterLoadAssignment)
	if !ok {
		t.Fatalf("no endpoints for %s", cluster)
	}
	var out []string
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			out = append(out, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
		}
	}
	return strings.Join(out, ",")
}

// Two service ports with one set of xDS names: the first by name (b.c/a) is served,
// every time, and the other is reported by name, naming the first, while the rest
// of the model is served.
func TestCollidingServicePortsAreReportedAndTheFirstIsServed(t *testing.T) {
	for i := range 20 { // map order differs from run to run; the outcome must not
		ts := startServer(t, scaled(1, 0))
		errs, err := ts.Update(context.Background(), collidingModel(false))
		if err != nil {
			t.Fatal(err)
		}
		if len(errs) != 1 {
			t.Fatalf("run %d: %d object errors %v; want one, for the port left out", i, len(errs), errs)
		}
		e := errs[0]
		if e.Kind != "Service" || e.Namespace != "c" || e.Name != "a.b" || e.Reason != ReasonNameCollision ||
			!strings.Contains(e.Message, "b.c/a") || !strings.Contains(e.Message, collidingCluster) {
			t.Fatalf("run %d: %+v; want Service c/a.b reported, naming b.c/a and the cluster", i, e)
		}
		envoy := ts.served.envoy
		if got := backendsOf(t, envoy, collidingCluster); got != "10.2.0.1" {
			t.Fatalf("run %d: %s serves %s; want b.c/a's backend, 10.2.0.1", i, collidingCluster, got)
		}
		if n := len(envoy.GetResources(resourcev3.ClusterType)); n != 2 {
			t.Fatalf("run %d: %d clusters; want the served one and shop/web's", i, n)
		}
		// Reported as long as it lasts, also when nothing changed.
		if again, _ := ts.Update(context.Background(), collidingModel(false)); len(again) != 1 || again[0] != e {
			t.Fatalf("run %d: the unchanged model reports %v; want %v again", i, again, e)
		}
	}
}

// When the served port goes, the one it shadowed takes its names and the report ends.
func TestShadowedServicePortIsServedOnceTheNamesAreFree(t *testing.T) {
	b := &builder{}
	m := collidingModel(false)
	if _, _, _, err := b.snapshots("1", m); err != nil {
		t.Fatal(err)
	}
	delete(m.Services, model.Frontend{Addr: netip.MustParseAddr("10.96.0.2"), Port: 80, Protocol: model.TCP}) // b.c/a
	envoy, _, _, err := b.snapshots("2", m)
	if err != nil {
		t.Fatal(err)
	}
	if errs := b.claims.errors(); len(errs) != 0 {
		t.Fatalf("still reported: %v", errs)
	}
	if got := backendsOf(t, envoy, collidingCluster); got != "10.1.0.1" {
		t.Fatalf("%s serves %s; want c/a.b's backend, 10.1.0.1", collidingCluster, got)
	}
	// An endpoint change of the port now served is patched in like any other.
	m.Services[model.Frontend{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP}].Backends[0].Addr = netip.MustParseAddr("10.1.0.9")
	if envoy, _, _, err = b.snapshots("3", m); err != nil {
		t.Fatal(err)
	}
	if got := backendsOf(t, envoy, collidingCluster); got != "10.1.0.9" {
		t.Fatalf("%s serves %s after its endpoint changed; want 10.1.0.9", collidingCluster, got)
	}
}

// The node Envoy refuses connections to an L7 port that is not served, rather than
// sending them to the other service's cluster and policies.
func TestShadowedL7PortIsRefusedByEnvoy(t *testing.T) {
	res := (&builder{proxy: testProxy}).resources(collidingModel(true))
	var chains []string
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		if l.Name != RedirectListenerName+"_ipv4" {
			continue
		}
		if err := validateDeep(l); err != nil {
			t.Fatal(err)
		}
		for _, c := range l.FilterChains {
			desc := c.Name
			for _, f := range c.Filters {
				desc += " " + f.Name
				if rbac, ok := unpack[*netrbacv3.RBAC](t, f.GetTypedConfig()); ok {
					desc += fmt.Sprintf("(%s, %d policies)", rbac.GetRules().GetAction(), len(rbac.GetRules().GetPolicies()))
				}
			}
			chains = append(chains, desc)
		}
	}
	want := []string{
		"10.96.0.1:80 envoy.filters.network.rbac(ALLOW, 0 policies) envoy.filters.network.tcp_proxy", // c/a.b: allows nothing
		"10.96.0.2:80 envoy.filters.network.http_connection_manager",
		"10.96.0.3:80 envoy.filters.network.http_connection_manager",
	}
	if fmt.Sprint(chains) != fmt.Sprint(want) {
		t.Fatalf("redirect chains:\n%v\nwant\n%v", strings.Join(chains, "\n"), strings.Join(want, "\n"))
	}
	if n := len(res[resourcev3.RouteType]); n != 2 {
		t.Fatalf("%d route configurations; want b.c/a's and shop/web's", n)
	}
}
