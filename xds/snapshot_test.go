package xds

import (
	"net/netip"
	"testing"

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
	for _, svc := range s.Services {
		svc.L7 = svc.Name.Name == "pay"
	}
	return s
}

var testProxy = &Proxy{Listen: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.5:15001"), netip.MustParseAddrPort("[fd00::5]:15001")}, Mark: 0x539}

func TestEveryResourcePassesEnvoysValidation(t *testing.T) {
	res := (&builder{proxy: testProxy}).resources(richModel())
	total := 0
	for typ, list := range res {
		for _, r := range list {
			v, ok := r.(interface{ ValidateAll() error })
			if !ok {
				t.Fatalf("%s resource %T has no validation", typ, r)
			}
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%s %s: %v", typ, cachev3.GetResourceName(r), err)
			}
			total++
		}
	}
	// web:80 (both families), web:9090, cart:80, empty:80, pay:443 — UDP is not served
	// over xDS — plus the passthrough cluster and the two redirect listeners.
	if n := len(res[resourcev3.ClusterType]); n != 6 || total != 18 {
		t.Fatalf("%d clusters, %d resources; want 6 and 18", n, total)
	}
	if _, err := (&builder{proxy: testProxy}).snapshot("1", richModel()); err != nil {
		t.Fatal(err)
	}
}

func TestRedirectListenerHasAChainPerL7Frontend(t *testing.T) {
	res := (&builder{proxy: testProxy}).resources(richModel())
	found := 0
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		if l.ApiListener != nil {
			continue
		}
		found++
		if len(l.ListenerFilters) != 1 || l.ListenerFilters[0].Name != "envoy.filters.listener.original_dst" {
			t.Fatalf("%s: listener filters %v", l.Name, l.ListenerFilters)
		}
		// One family's L7 frontend each: pay's VIP of that family.
		if len(l.FilterChains) != 1 || l.DefaultFilterChain == nil {
			t.Fatalf("%s: %d chains, default %v", l.Name, len(l.FilterChains), l.DefaultFilterChain)
		}
		m := l.FilterChains[0].FilterChainMatch
		if m.DestinationPort.GetValue() != 443 {
			t.Fatalf("%s: chain matches port %d", l.Name, m.DestinationPort.GetValue())
		}
	}
	if found != 2 {
		t.Fatalf("%d redirect listeners, want one per family", found)
	}
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
