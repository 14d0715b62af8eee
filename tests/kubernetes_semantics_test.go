package tests

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// The Kubernetes semantics of --source kubernetes, each on its own Service of one real
// kube-apiserver, one env and one agent. There is no controller manager: the test
// writes the EndpointSlices (conditions, nodeName, hints) as the EndpointSlice
// controller would. The agent is node-a, in zone-a.
func TestKubernetesSemantics(t *testing.T) {
	api := harness.StartAPIServer(t)
	env := harness.NewEnv(t, "backend-1", "backend-2", "backend-3")
	env.StartBackends(t, "backend-1", "backend-2", "backend-3")
	ctx := context.Background()
	c := api.Client
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}}}
	if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.StartAgent(t, "", "--source", "kubernetes", "--kubeconfig", api.Kubeconfig, "--node-name", "node-a")
	client := env.Host("client")
	k := &semantics{t: t, c: c, env: env}

	t.Run("NoEndpointsIsRefused", func(t *testing.T) {
		ip := k.service(t, "none", 20, nil)
		k.slice(t, "none", "none-1")
		k.waitBackends(t, ip, 0)
		res := env.Run(t, client, "tcp", tcpTo(ip), 3)
		if len(res.Errors) != 3 || len(res.TCP) != 0 {
			t.Fatalf("connects to a service without endpoints: %+v", res)
		}
		for _, e := range res.Errors {
			if !strings.Contains(e, syscall.ECONNREFUSED.Error()) {
				t.Fatalf("want connection refused, got %q", e)
			}
		}
	})

	t.Run("ClientIPAffinityHoldsAndExpires", func(t *testing.T) {
		timeout := int32(1)
		ip := k.service(t, "sticky", 21, func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
		})
		k.slice(t, "sticky", "sticky-1", ep("backend-1"), ep("backend-2"), ep("backend-3"))
		fe := tcpFE(ip)
		env.WaitPinned(t, "1s affinity, 3 backends", func(s []lbmap.ListedService) bool {
			f, ok := harness.Frontend(s, fe)
			return ok && f.AffinitySeconds == 1 && len(f.Backends) == 3
		})
		// Within the timeout connections stick; after it a new pick is made. Over 8
		// expiries among 3 backends, always the same pick has odds 1 in 2187.
		picks := map[string]bool{}
		for i := 0; i < 8; i++ {
			res := env.Run(t, client, "tcp", tcpTo(ip), 5)
			seen := backendsSeen(res)
			if len(res.Errors) > 0 || len(seen) != 1 {
				t.Fatalf("within the timeout, connections spread as %v, errors %v", seen, res.Errors)
			}
			for b := range seen {
				picks[b] = true
			}
			time.Sleep(1200 * time.Millisecond)
		}
		if len(picks) < 2 {
			t.Fatalf("affinity never expired: 8 picks after the 1s timeout were all %v", picks)
		}
	})

	t.Run("TerminatingFallback", func(t *testing.T) {
		ip := k.service(t, "term", 22, nil)
		k.slice(t, "term", "term-1", terminating(ep("backend-1")), terminating(ep("backend-2")))
		k.waitBackends(t, ip, 2)
		res := env.Run(t, client, "tcp", tcpTo(ip), 40)
		if seen := backendsSeen(res); len(res.Errors) > 0 || seen["backend-1"] == 0 || seen["backend-2"] == 0 || len(seen) != 2 {
			t.Fatalf("only serving+terminating endpoints: %v, errors %v", seen, res.Errors)
		}
		k.update(t, "term", "term-1", terminating(ep("backend-1")), terminating(ep("backend-2")), ep("backend-3"))
		k.waitOnly(t, ip, "backend-3")
		res = env.Run(t, client, "tcp", tcpTo(ip), 30)
		if seen := backendsSeen(res); len(res.Errors) > 0 || len(seen) != 1 || seen["backend-3"] != 30 {
			t.Fatalf("a ready endpoint beside terminating ones: %v, errors %v", seen, res.Errors)
		}
	})

	t.Run("TopologyHintsPreferThisZone", func(t *testing.T) {
		ip := k.service(t, "zoned", 23, func(s *corev1.Service) {
			pc := corev1.ServiceTrafficDistributionPreferClose
			s.Spec.TrafficDistribution = &pc
		})
		k.slice(t, "zoned", "zoned-1", hinted(ep("backend-1"), "zone-a"), hinted(ep("backend-2"), "zone-b"))
		k.waitOnly(t, ip, "backend-1")
		res := env.Run(t, client, "tcp", tcpTo(ip), 30)
		if seen := backendsSeen(res); len(res.Errors) > 0 || len(seen) != 1 || seen["backend-1"] != 30 {
			t.Fatalf("hints for zone-a and zone-b seen from zone-a: %v, errors %v", seen, res.Errors)
		}
	})

	t.Run("OtherServiceProxyNameIsNotProgrammed", func(t *testing.T) {
		// A Service of ours first, created after the other proxy's: once ours shows,
		// the agent has seen both.
		other := k.service(t, "other", 24, func(s *corev1.Service) {
			s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other"}
		})
		k.slice(t, "other", "other-1", ep("backend-1"))
		mine := k.service(t, "mine", 25, nil)
		k.slice(t, "mine", "mine-1", ep("backend-1"))
		k.waitOnly(t, mine, "backend-1")
		if f, there := harness.Frontend(env.PinnedServices(t), tcpFE(other)); there {
			t.Fatalf("another proxy's Service is programmed: %+v", f)
		}
		res := env.Run(t, client, "tcp", tcpTo(other), 1)
		if len(res.TCP) != 0 {
			t.Fatalf("another proxy's ClusterIP was translated: %+v", res)
		}
	})

	t.Run("MultipleSlicesPerService", func(t *testing.T) {
		ip := k.service(t, "multi", 26, nil)
		k.slice(t, "multi", "multi-1", ep("backend-1"))
		k.slice(t, "multi", "multi-2", ep("backend-2"))
		k.waitBackends(t, ip, 2)
		res := env.Run(t, client, "tcp", tcpTo(ip), 40)
		if seen := backendsSeen(res); len(res.Errors) > 0 || seen["backend-1"] == 0 || seen["backend-2"] == 0 || len(seen) != 2 {
			t.Fatalf("two slices of one Service: %v, errors %v", seen, res.Errors)
		}
	})

	t.Run("SamePortNumberOnTCPAndUDP", func(t *testing.T) {
		// Port 53 on TCP (to the backends' TCP port) and on UDP (to their DNS port).
		ip := netip.AddrFrom4([4]byte{10, 96, 0, 27})
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "both", Namespace: "demo"},
			Spec: corev1.ServiceSpec{ClusterIP: ip.String(), Ports: []corev1.ServicePort{
				{Name: "tcp", Port: netlab.DNSPort, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(netlab.BackendTCPPort)},
				{Name: "udp", Port: netlab.DNSPort, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(netlab.DNSPort)},
			}}}
		k.create(t, svc)
		tcpPort, udpPort := int32(netlab.BackendTCPPort), int32(netlab.DNSPort)
		tcpName, udpName := "tcp", "udp"
		tcpProto, udpProto := corev1.ProtocolTCP, corev1.ProtocolUDP
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "both-1", Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "both"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: &tcpName, Port: &tcpPort, Protocol: &tcpProto},
				{Name: &udpName, Port: &udpPort, Protocol: &udpProto},
			},
		}
		for _, b := range []string{"backend-1", "backend-2"} {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{env.Host(b).IPv4.String()}})
		}
		k.createSlice(t, s)
		tcpFE := fmt.Sprintf("%s:%d/TCP", ip, netlab.DNSPort)
		udpFE := fmt.Sprintf("%s:%d/UDP", ip, netlab.DNSPort)
		env.WaitPinned(t, "53/TCP and 53/UDP with 2 backends each", func(svcs []lbmap.ListedService) bool {
			for fe, port := range map[string]uint16{tcpFE: netlab.BackendTCPPort, udpFE: netlab.DNSPort} {
				f, ok := harness.Frontend(svcs, fe)
				if !ok || len(f.Backends) != 2 {
					return false
				}
				for _, b := range f.Backends {
					if b.Address.Port() != port {
						return false
					}
				}
			}
			return true
		})
		res := env.Run(t, client, "tcp", netip.AddrPortFrom(ip, netlab.DNSPort), 20)
		if seen := backendsSeen(res); len(res.Errors) > 0 || seen["backend-1"] == 0 || seen["backend-2"] == 0 {
			t.Fatalf("TCP to port 53: %v, errors %v", seen, res.Errors)
		}
		res = env.Run(t, client, "dns", netip.AddrPortFrom(ip, netlab.DNSPort), 20)
		dns := map[string]int{}
		for _, a := range res.DNS {
			dns[a.Backend]++
			if a.From != netip.AddrPortFrom(ip, netlab.DNSPort) {
				t.Fatalf("DNS reply from %v, want the ClusterIP", a.From)
			}
		}
		if len(res.Errors) > 0 || len(res.DNS) != 20 || dns["backend-1"] == 0 || dns["backend-2"] == 0 {
			t.Fatalf("UDP to port 53: %v, errors %v", dns, res.Errors)
		}
	})

	t.Run("InternalTrafficPolicyLocal", func(t *testing.T) {
		ip := k.service(t, "local", 28, func(s *corev1.Service) {
			local := corev1.ServiceInternalTrafficPolicyLocal
			s.Spec.InternalTrafficPolicy = &local
		})
		k.slice(t, "local", "local-1", on(ep("backend-1"), "node-a"), on(ep("backend-2"), "node-b"))
		k.waitOnly(t, ip, "backend-1")
		res := env.Run(t, client, "tcp", tcpTo(ip), 30)
		if seen := backendsSeen(res); len(res.Errors) > 0 || len(seen) != 1 || seen["backend-1"] != 30 {
			t.Fatalf("Local with endpoints on node-a and node-b: %v, errors %v", seen, res.Errors)
		}
		k.update(t, "local", "local-1", on(ep("backend-2"), "node-b"))
		k.waitBackends(t, ip, 0)
		res = env.Run(t, client, "tcp", tcpTo(ip), 3)
		if len(res.TCP) != 0 || len(res.Errors) != 3 {
			t.Fatalf("Local with endpoints only on node-b: %+v", res)
		}
		for _, e := range res.Errors {
			if !strings.Contains(e, syscall.ECONNREFUSED.Error()) {
				t.Fatalf("want connection refused, got %q", e)
			}
		}
	})
}

type semantics struct {
	t   *testing.T
	c   kubernetes.Interface
	env *harness.Env
}

func tcpFE(ip netip.Addr) string { return fmt.Sprintf("%s:%d/TCP", ip, netlab.ServiceHTTPPort) }

// service creates demo/NAME on 10.96.0.OCTET, port http 80 → 8080, and deletes it
// (with its slices) when the subtest ends.
func (k *semantics) service(t *testing.T, name string, octet byte, mutate func(*corev1.Service)) netip.Addr {
	t.Helper()
	ip := netip.AddrFrom4([4]byte{10, 96, 0, octet})
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo"},
		Spec: corev1.ServiceSpec{ClusterIP: ip.String(), Ports: []corev1.ServicePort{
			{Name: "http", Port: int32(netlab.ServiceHTTPPort), TargetPort: intstr.FromInt32(netlab.BackendTCPPort)}}}}
	if mutate != nil {
		mutate(svc)
	}
	k.create(t, svc)
	return ip
}

func (k *semantics) create(t *testing.T, svc *corev1.Service) {
	t.Helper()
	ctx := context.Background()
	if _, err := k.c.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = k.c.CoreV1().Services("demo").Delete(ctx, svc.Name, metav1.DeleteOptions{})
		_ = k.c.DiscoveryV1().EndpointSlices("demo").DeleteCollection(ctx, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name})
	})
}

// sliceOf is service's IPv4 slice NAME, port http 8080, over the endpoints.
func sliceOf(service, name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	port, pname := int32(netlab.BackendTCPPort), "http"
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
		Endpoints:   eps,
	}
}

func (k *semantics) slice(t *testing.T, service, name string, eps ...discoveryv1.Endpoint) {
	t.Helper()
	k.createSlice(t, sliceOf(service, name, k.addressed(eps)...))
}

func (k *semantics) createSlice(t *testing.T, s *discoveryv1.EndpointSlice) {
	t.Helper()
	if _, err := k.c.DiscoveryV1().EndpointSlices("demo").Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (k *semantics) update(t *testing.T, service, name string, eps ...discoveryv1.Endpoint) {
	t.Helper()
	if _, err := k.c.DiscoveryV1().EndpointSlices("demo").Update(context.Background(), sliceOf(service, name, k.addressed(eps)...), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// addressed replaces each endpoint's backend host name (ep's placeholder) by its IPv4.
func (k *semantics) addressed(eps []discoveryv1.Endpoint) []discoveryv1.Endpoint {
	out := make([]discoveryv1.Endpoint, len(eps))
	for i, e := range eps {
		e.Addresses = []string{k.env.Host(e.Addresses[0]).IPv4.String()}
		out[i] = e
	}
	return out
}

// waitBackends waits for ip's http frontend to be programmed with n backends.
func (k *semantics) waitBackends(t *testing.T, ip netip.Addr, n int) {
	t.Helper()
	k.env.WaitPinned(t, fmt.Sprintf("%s with %d backends", tcpFE(ip), n), func(s []lbmap.ListedService) bool {
		f, ok := harness.Frontend(s, tcpFE(ip))
		return ok && len(f.Backends) == n
	})
}

// waitOnly waits for ip's http frontend to have exactly the named backend.
func (k *semantics) waitOnly(t *testing.T, ip netip.Addr, backend string) {
	t.Helper()
	want := k.env.Host(backend).IPv4
	k.env.WaitPinned(t, tcpFE(ip)+" with only "+backend, func(s []lbmap.ListedService) bool {
		f, ok := harness.Frontend(s, tcpFE(ip))
		return ok && len(f.Backends) == 1 && f.Backends[0].Address.Addr() == want
	})
}

// ep is a ready endpoint on the named backend host (its address filled in by addressed).
func ep(backend string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{backend}}
}

func terminating(e discoveryv1.Endpoint) discoveryv1.Endpoint {
	f, t := false, true
	e.Conditions = discoveryv1.EndpointConditions{Ready: &f, Serving: &t, Terminating: &t}
	return e
}

func hinted(e discoveryv1.Endpoint, zone string) discoveryv1.Endpoint {
	e.Zone = &zone
	e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}
	return e
}

func on(e discoveryv1.Endpoint, node string) discoveryv1.Endpoint {
	e.NodeName = &node
	return e
}
