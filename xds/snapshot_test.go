package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sockmesh/sockmesh/agent/model"
)

// richModel has what a cluster throws at the builders: dual-stack, several ports, UDP,
// weights, terminating endpoints, a service without endpoints.
func richModel() *model.Snapshot {
	s := model.NewSnapshot()
	add := func(ns, name, port string, vip string, p uint16, proto model.Protocol, backends ...model.Backend) {
		svc := &model.Service{Name: model.ServiceName{Namespace: ns, Name: name}, PortName: port,
			Frontend: model.Frontend{Addr: netip.MustParseAddr(vip), Port: p, Protocol: proto}, Backends: backends}
		s.Services[svc.Frontend] = svc
	}
	be := func(ip string, port uint16, weight uint16, ready bool) model.Backend {
		return model.Backend{Addr: netip.MustParseAddr(ip), Port: port, Weight: weight, Ready: ready, Serving: true, Terminating: !ready}
	}
	add("shop", "web", "http", "10.96.0.10", 80, model.TCP, be("10.0.1.1", 8080, 1, true), be("10.0.1.2", 8080, 3, true))
	add("shop", "web", "http", "fd00:96::10", 80, model.TCP, be("fd00:1::1", 8080, 1, true))
	add("shop", "web", "grpc", "10.96.0.10", 9090, model.TCP, be("10.0.1.1", 9090, 1, true))
	add("shop", "web", "dns", "10.96.0.10", 53, model.UDP, be("10.0.1.1", 53, 1, true))
	add("shop", "cart", "", "10.96.0.11", 80, model.TCP, be("10.0.2.1", 80, 1, false))
	add("shop", "empty", "", "10.96.0.12", 80, model.TCP)
	// L7 services, which the node's Envoy serves on its redirect listeners.
	add("shop", "pay", "https", "10.96.0.13", 443, model.TCP, be("10.0.3.1", 8443, 1, true))
	add("shop", "pay", "https", "fd00:96::13", 443, model.TCP, be("fd00:3::1", 8443, 1, true))
	// HTTP services with policies: their chains take RBAC per route over RDS.
	add("shop", "orders", "http", "10.96.0.14", 80, model.TCP, be("10.0.4.1", 8080, 1, true))
	add("shop", "orders", "http", "fd00:96::14", 80, model.TCP, be("fd00:4::1", 8080, 1, true))
	add("shop", "orders", "grpc", "10.96.0.14", 9090, model.TCP, be("10.0.4.1", 9090, 1, true))
	for _, svc := range s.Services {
		svc.L7 = svc.Name.Name == "pay" || svc.Name.Name == "orders"
		switch svc.PortName {
		case "http":
			svc.AppProtocol = model.AppHTTP
		case "grpc":
			svc.AppProtocol = model.AppHTTP2
		}
	}
	s.Policies = map[model.ServiceName][]*model.Policy{
		{Namespace: "shop", Name: "orders"}: richPolicies(),
		{Namespace: "shop", Name: "pay"}:    richPolicies(),
	}
	return s
}

// richPolicies use every field of the supported subset, in both actions, and a
// rejected policy.
func richPolicies() []*model.Policy {
	peers := func(ps ...string) *model.Peers {
		out := &model.Peers{}
		for _, p := range ps {
			out.Prefixes = append(out.Prefixes, netip.MustParsePrefix(p))
		}
		return out
	}
	return []*model.Policy{
		{Name: model.PolicyName{Namespace: "shop", Name: "allow"}, Action: model.PolicyAllow, Rules: []model.Rule{
			{From: []model.Source{{Principals: peers("10.0.9.1/32", "fd00:9::1/128"), NotNamespaces: peers()},
				{IPBlocks: peers("192.0.2.0/24"), NotIPBlocks: peers("192.0.2.7/32"), Namespaces: peers()}},
				To: []model.Operation{{Hosts: []string{"orders.shop*"}, NotHosts: []string{"*.evil"}, Ports: []uint16{80},
					NotPorts: []uint16{81}, Methods: []string{"GET", "POST"}, NotMethods: []string{"DELETE"},
					Paths: []string{"/api/*", "*.json", "/exact", "*"}, NotPaths: []string{"/api/admin*"}}},
				When: []model.Condition{{Header: "x-team", Values: []string{"blue", "gr*", "*"}, NotValues: []string{"red"}}}},
			{}, // allow everything
		}},
		{Name: model.PolicyName{Namespace: "shop", Name: "deny"}, Action: model.PolicyDeny, Rules: []model.Rule{
			{To: []model.Operation{{Paths: []string{"/private*"}}}},
			{From: []model.Source{{NotPrincipals: peers("10.0.9.1/32")}}, When: []model.Condition{{Header: "x-debug", Values: []string{"*"}}}},
		}},
		{Name: model.PolicyName{Namespace: "shop", Name: "broken"}, Action: model.PolicyDeny, Rejected: true},
	}
}

var testProxy = &Proxy{Listen: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.5:15001"), netip.MustParseAddrPort("[fd00::5]:15001")}, Mark: 0x539}

func TestEveryResourcePassesEnvoysValidation(t *testing.T) {
	res := (&builder{proxy: testProxy}).resources(richModel())
	total := 0
	for typ, list := range res {
		for _, r := range list {
			if err := validateDeep(r); err != nil {
				t.Errorf("%s %s: %v", typ, cachev3.GetResourceName(r), err)
			}
			total++
		}
	}
	// web:80 (both families), web:9090, cart:80, empty:80, pay:443, orders:80 and 9090 —
	// UDP is not served over xDS — plus the passthrough cluster, the two redirect
	// listeners and the route configurations of orders' two HTTP ports.
	if n := len(res[resourcev3.ClusterType]); n != 8 || total != 26 {
		t.Fatalf("%d clusters, %d resources; want 8 and 26", n, total)
	}
	if _, _, _, err := (&builder{proxy: testProxy}).snapshots("1", richModel()); err != nil {
		t.Fatal(err)
	}
	// Every upstream socket of Envoy's carries the mark, so it is never redirected back.
	for _, r := range res[resourcev3.ClusterType] {
		c := r.(*clusterv3.Cluster)
		opts := c.GetUpstreamBindConfig().GetSocketOptions()
		if len(opts) != 1 || opts[0].GetIntValue() != int64(testProxy.Mark) {
			t.Errorf("cluster %s: upstream socket options %v, want SO_MARK %#x", c.Name, opts, testProxy.Mark)
		}
	}
}

func TestRedirectListenerHasAChainPerL7Frontend(t *testing.T) {
	res := (&builder{proxy: testProxy}).resources(richModel())
	chains := map[string]string{} // listener/chain name -> what it runs
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		if l.ApiListener != nil {
			continue
		}
		if len(l.ListenerFilters) != 1 || l.ListenerFilters[0].Name != "envoy.filters.listener.original_dst" || l.DefaultFilterChain == nil {
			t.Fatalf("%s: listener filters %v, default chain %v", l.Name, l.ListenerFilters, l.DefaultFilterChain)
		}
		for _, c := range l.FilterChains {
			desc := fmt.Sprint(c.FilterChainMatch.PrefixRanges[0].AddressPrefix, ":", c.FilterChainMatch.DestinationPort.GetValue())
			for _, f := range c.Filters {
				desc += " " + f.Name
				if hcm, ok := unpack[*hcmv3.HttpConnectionManager](t, f.GetTypedConfig()); ok {
					desc += fmt.Sprint("(", hcm.CodecType, " rds=", hcm.GetRds().GetRouteConfigName(), ")")
					if !hcm.NormalizePath.GetValue() || !hcm.MergeSlashes || hcm.PathWithEscapedSlashesAction != hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD {
						t.Errorf("%s: paths reach RBAC unnormalized: a DENY on a path could be walked around", c.Name)
					}
				}
			}
			chains[l.Name+" "+c.Name] = desc
		}
	}
	want := map[string]string{
		"sockmesh_redirect_ipv4 10.96.0.13:443":    "10.96.0.13:443 envoy.filters.network.rbac envoy.filters.network.rbac envoy.filters.network.tcp_proxy",
		"sockmesh_redirect_ipv4 10.96.0.14:80":     "10.96.0.14:80 envoy.filters.network.http_connection_manager(AUTO rds=sockmesh_l7|orders.shop.svc.cluster.local:80)",
		"sockmesh_redirect_ipv4 10.96.0.14:9090":   "10.96.0.14:9090 envoy.filters.network.http_connection_manager(HTTP2 rds=sockmesh_l7|orders.shop.svc.cluster.local:9090)",
		"sockmesh_redirect_ipv6 [fd00:96::13]:443": "fd00:96::13:443 envoy.filters.network.rbac envoy.filters.network.rbac envoy.filters.network.tcp_proxy",
		"sockmesh_redirect_ipv6 [fd00:96::14]:80":  "fd00:96::14:80 envoy.filters.network.http_connection_manager(AUTO rds=sockmesh_l7|orders.shop.svc.cluster.local:80)",
	}
	if !maps.Equal(chains, want) {
		t.Fatalf("redirect chains:\n%v\nwant\n%v", chains, want)
	}
}

func unpack[T proto.Message](t *testing.T, a *anypb.Any) (T, bool) {
	var zero T
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	out, ok := m.(T)
	if !ok {
		return zero, false
	}
	return out, true
}

func TestEndpointsFollowTheModelsSelection(t *testing.T) {
	res := Resources(richModel())
	byName := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, r := range res[resourcev3.EndpointType] {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		byName[cla.ClusterName] = cla
	}
	web := byName["outbound|80||web.shop.svc.cluster.local"]
	if web == nil || len(web.Endpoints) != 1 || len(web.Endpoints[0].LbEndpoints) != 3 {
		t.Fatalf("web:80 endpoints %v: want both families' three endpoints", web)
	}
	if w := web.Endpoints[0].LbEndpoints[1].LoadBalancingWeight.GetValue(); w != 3 {
		t.Fatalf("weight %d, want 3", w)
	}
	// Weight 1 is Envoy's and grpc-go's default for an unset weight.
	if w := web.Endpoints[0].LbEndpoints[0].LoadBalancingWeight; w != nil {
		t.Fatalf("weight-1 endpoint carries weight %v, want it unset", w)
	}
	cart := byName["outbound|80||cart.shop.svc.cluster.local"]
	if lbs := cart.Endpoints[0].LbEndpoints; len(lbs) != 1 || lbs[0].HealthStatus.String() != "DRAINING" {
		t.Fatalf("cart's only endpoint is terminating: %v", cart)
	}
	if empty := byName["outbound|80||empty.shop.svc.cluster.local"]; len(empty.Endpoints) != 0 {
		t.Fatalf("empty service has endpoints: %v", empty)
	}
	for _, r := range res[resourcev3.ListenerType] {
		if l := r.(*listenerv3.Listener); l.ApiListener == nil {
			t.Fatalf("listener %s is not an API listener (no proxy configured)", l.Name)
		}
	}
}

func TestProxylessClientsReachL7ServicesThroughTheClusterIP(t *testing.T) {
	envoy, proxyless, _, err := (&builder{proxy: testProxy}).snapshots("1", richModel())
	if err != nil {
		t.Fatal(err)
	}
	endpoints := func(s cachev3.ResourceSnapshot, cluster string) []string {
		cla, ok := s.GetResources(resourcev3.EndpointType)[cluster].(*endpointv3.ClusterLoadAssignment)
		if !ok {
			t.Fatalf("no endpoints for %s", cluster)
		}
		var out []string
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				a := e.GetEndpoint().Address.GetSocketAddress()
				out = append(out, netip.AddrPortFrom(netip.MustParseAddr(a.Address), uint16(a.GetPortValue())).String())
			}
		}
		return out
	}
	const orders, web = "outbound|80||orders.shop.svc.cluster.local", "outbound|80||web.shop.svc.cluster.local"
	if got := endpoints(proxyless, orders); fmt.Sprint(got) != "[10.96.0.14:80 [fd00:96::14]:80]" {
		t.Fatalf("proxyless endpoints of an L7 service: %v, want its ClusterIPs (so the node's Envoy applies its policies)", got)
	}
	if got := endpoints(envoy, orders); fmt.Sprint(got) != "[10.0.4.1:8080 [fd00:4::1]:8080]" {
		t.Fatalf("Envoy's endpoints of an L7 service: %v, want its pods", got)
	}
	if a, b := endpoints(proxyless, web), endpoints(envoy, web); fmt.Sprint(a) != fmt.Sprint(b) || len(a) != 3 {
		t.Fatalf("a plain service's endpoints differ: proxyless %v, Envoy %v", a, b)
	}
	if proxyless.GetResources(resourcev3.RouteType) != nil && len(proxyless.GetResources(resourcev3.RouteType)) != 0 {
		t.Fatal("proxyless clients got the node Envoy's route configurations")
	}
}

// The incremental builder must serve exactly what a fresh full build serves, through
// every kind of change, and an endpoint-only change must leave the other types'
// versions alone (state-of-the-world clients are then sent endpoints only).
func TestIncrementalSnapshotsMatchAFullBuild(t *testing.T) {
	inc := &builder{proxy: testProxy}
	typeURLs := []resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}
	// step builds the model on both paths and returns each type's version in the
	// incremental pair (envoy, then proxyless) and whether it reported a change.
	step := func(name string, m *model.Snapshot) (versions [2]map[resourcev3.Type]string, changed bool) {
		t.Helper()
		version := fmt.Sprint(name)
		e, p, changed, err := inc.snapshots(version, m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		fe, fp, _, err := (&builder{proxy: testProxy}).snapshots(version, m)
		if err != nil {
			t.Fatalf("%s: full build: %v", name, err)
		}
		for i, pair := range [][2]*liveSnapshot{{e, fe}, {p, fp}} {
			versions[i] = map[resourcev3.Type]string{}
			for _, typ := range typeURLs {
				versions[i][typ] = pair[0].GetVersion(typ)
				got, want := pair[0].GetResources(typ), pair[1].GetResources(typ)
				if len(got) != len(want) || len(pair[0].Snapshot.GetResources(typ)) != len(want) {
					t.Fatalf("%s: %d %s resources, a full build has %d", name, len(got), typ, len(want))
				}
				for n, r := range want {
					if !proto.Equal(got[n], r) || !proto.Equal(pair[0].Snapshot.GetResources(typ)[n], r) {
						t.Fatalf("%s: %s %s differs from a full build", name, typ, n)
					}
					if pair[0].GetVersionMap(typ)[n] != pair[1].GetVersionMap(typ)[n] {
						t.Fatalf("%s: %s %s has another delta version than in a full build", name, typ, n)
					}
				}
			}
			if err := pair[0].Consistent(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		return versions, changed
	}
	m := richModel()
	v1, _ := step("start", m)

	// An endpoint added to web:80: only endpoints get a new version.
	web := m.Services[model.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP}]
	web.Backends = append(web.Backends, model.Backend{Addr: netip.MustParseAddr("10.0.1.3"), Port: 8080, Weight: 1, Ready: true, Serving: true})
	v2, changed := step("endpoint", m)
	if !changed {
		t.Fatal("an endpoint change was not reported as a change")
	}
	for i := range v2 {
		if v2[i][resourcev3.EndpointType] != "endpoint" {
			t.Fatal("changed endpoints kept their old version")
		}
		for _, typ := range []resourcev3.Type{resourcev3.ClusterType, resourcev3.ListenerType} {
			if v1[i][typ] != v2[i][typ] {
				t.Fatalf("an endpoint change gave %s a new version: SotW clients would be sent them all again", typ)
			}
		}
	}
	// Nothing changed: nothing to push, and every version stays.
	if v, changed := step("same", m); changed || fmt.Sprint(v) != fmt.Sprint(v2) {
		t.Fatalf("an unchanged model was reported changed (%v) or gave new versions %v, was %v", changed, v, v2)
	}
	// An endpoint of an L7 service: Envoy's endpoints change, proxyless ones stay the ClusterIPs.
	orders := m.Services[model.Frontend{Addr: netip.MustParseAddr("10.96.0.14"), Port: 80, Protocol: model.TCP}]
	orders.Backends = orders.Backends[:0]
	step("l7 endpoint", m)
	// The port's protocol changed: its cluster's upstream protocol follows.
	web.AppProtocol = model.AppHTTP2
	step("protocol", m)
	// A service removed, one added, an L7 flag and a policy changed: full rebuilds.
	delete(m.Services, model.Frontend{Addr: netip.MustParseAddr("10.96.0.11"), Port: 80, Protocol: model.TCP})
	step("removed", m)
	add := &model.Service{Name: model.ServiceName{Namespace: "shop", Name: "new"}, PortName: "http",
		Frontend: model.Frontend{Addr: netip.MustParseAddr("10.96.0.99"), Port: 80, Protocol: model.TCP}}
	m.Services[add.Frontend] = add
	step("added", m)
	add.L7 = true
	step("made L7", m)
	m.Policies[model.ServiceName{Namespace: "shop", Name: "orders"}] = nil
	step("policy removed", m)
}
