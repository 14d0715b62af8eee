package model

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// TestServiceProxyName pins the service-proxy-name label as kube-proxy reads it: a
// labelled Service is another proxy's, whatever the value, unless the value is our
// ProxyName; it is skipped silently, with its slices, and claims no frontend.
func TestServiceProxyName(t *testing.T) {
	web := func() *corev1.Service { return service("web", []string{"10.96.0.10"}, sport("", 80, "")) }
	slice := epSlice("web-1", "web", v4, tcp(eport("", 8080, "")), ep("10.0.1.1"))
	tests := []struct {
		name      string
		proxyName string
		services  []*corev1.Service
		want      map[string][]string
		wantErrs  []string
	}{
		{
			name:     "no label: ours",
			services: []*corev1.Service{web()},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`, "10.0.1.1:8080 w1 RS-"}},
		},
		{
			name:     "another proxy's name: skipped, its slice too",
			services: []*corev1.Service{labelled(web(), ServiceProxyNameLabel, "other")},
			want:     map[string][]string{},
		},
		{
			name:     "an empty value still names another proxy",
			services: []*corev1.Service{labelled(web(), ServiceProxyNameLabel, "")},
			want:     map[string][]string{},
		},
		{
			name:      "our name: ours",
			proxyName: "sockmesh",
			services:  []*corev1.Service{labelled(web(), ServiceProxyNameLabel, "sockmesh")},
			want:      map[string][]string{"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`, "10.0.1.1:8080 w1 RS-"}},
		},
		{
			name:      "with a name, unlabelled Services stay ours",
			proxyName: "sockmesh",
			services:  []*corev1.Service{web()},
			want:      map[string][]string{"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`, "10.0.1.1:8080 w1 RS-"}},
		},
		{
			name:      "with a name, another name is still skipped",
			proxyName: "sockmesh",
			services:  []*corev1.Service{labelled(web(), ServiceProxyNameLabel, "other")},
			want:      map[string][]string{},
		},
		{
			name: "a skipped Service reports nothing and claims no frontend",
			services: []*corev1.Service{
				web(),
				func() *corev1.Service {
					s := created(labelled(service("aaa", []string{"10.96.0.10"}, sport("", 80, ""), sport("sig", 3868, corev1.ProtocolSCTP)),
						ServiceProxyNameLabel, "other"), 1)
					s.Annotations = map[string]string{L7Annotation: "maybe"}
					return s
				}(),
			},
			want: map[string][]string{"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`, "10.0.1.1:8080 w1 RS-"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := BuildAll(Input{Services: tt.services, EndpointSlices: []*discoveryv1.EndpointSlice{slice}, ProxyName: tt.proxyName})
			if got := summary(snap); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("services:\n got %v\nwant %v", got, tt.want)
			}
			if got := errorKeys(snap.Errors); !reflect.DeepEqual(got, append([]string{}, tt.wantErrs...)) {
				t.Errorf("errors = %v, want %v", got, tt.wantErrs)
			}
		})
	}
}

// TestInternalTrafficPolicyLocal pins internalTrafficPolicy Local: only this node's
// endpoints, ready ones first, else its serving terminating ones; hints do not apply;
// never endpoints of other nodes, so without a local one there is no backend.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	withPolicy := func(p corev1.ServiceInternalTrafficPolicy) *corev1.Service {
		s := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
		if p != "" {
			s.Spec.InternalTrafficPolicy = &p
		}
		return s
	}
	local := withPolicy(corev1.ServiceInternalTrafficPolicyLocal)
	tests := []struct {
		name       string
		svc        *corev1.Service
		node, zone string
		eps        []discoveryv1.Endpoint
		wantPolicy TrafficPolicy
		want       []string
	}{
		{
			name: "only the local ready endpoints", svc: local, node: "node-a",
			eps:        []discoveryv1.Endpoint{on(ep("10.0.1.1"), "node-a"), on(ep("10.0.1.2"), "node-b"), on(ep("10.0.1.3", no), "node-a")},
			wantPolicy: PolicyLocal,
			want:       []string{"10.0.1.1:8080 w1 RS- @node-a local"},
		},
		{
			name: "no local endpoint: no backend, remote ready ones are not used", svc: local, node: "node-a",
			eps:        []discoveryv1.Endpoint{on(ep("10.0.1.2"), "node-b"), ep("10.0.1.3")},
			wantPolicy: PolicyLocal,
		},
		{
			name: "local serving terminating ones when no local one is ready, even with remote ready ones", svc: local, node: "node-a",
			eps:        []discoveryv1.Endpoint{on(ep("10.0.1.1", no, yes, yes), "node-a"), on(ep("10.0.1.2"), "node-b"), on(ep("10.0.1.3", no, yes, yes), "node-b")},
			wantPolicy: PolicyLocal,
			want:       []string{"10.0.1.1:8080 w1 -ST @node-a local"},
		},
		{
			name: "without a node name nothing is local", svc: local,
			eps:        []discoveryv1.Endpoint{on(ep("10.0.1.1"), "node-a"), ep("10.0.1.2")},
			wantPolicy: PolicyLocal,
		},
		{
			name: "zone hints do not apply", svc: local, node: "node-a", zone: "zone-a",
			eps: []discoveryv1.Endpoint{
				forZones(on(ep("10.0.1.1"), "node-a"), "zone-b"),
				forZones(on(ep("10.0.1.2"), "node-b"), "zone-a"),
			},
			wantPolicy: PolicyLocal,
			want:       []string{"10.0.1.1:8080 w1 RS- @node-a local forZones=zone-b"},
		},
		{
			name: "Cluster: every ready endpoint", svc: withPolicy(corev1.ServiceInternalTrafficPolicyCluster), node: "node-a",
			eps:        []discoveryv1.Endpoint{on(ep("10.0.1.1"), "node-a"), on(ep("10.0.1.2"), "node-b")},
			wantPolicy: PolicyCluster,
			want:       []string{"10.0.1.1:8080 w1 RS- @node-a local", "10.0.1.2:8080 w1 RS- @node-b"},
		},
		{
			name: "unset is Cluster", svc: withPolicy(""), node: "node-a",
			eps:        []discoveryv1.Endpoint{on(ep("10.0.1.2"), "node-b")},
			wantPolicy: PolicyCluster,
			want:       []string{"10.0.1.2:8080 w1 RS- @node-b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := BuildAll(Input{
				Services:       []*corev1.Service{tt.svc},
				EndpointSlices: []*discoveryv1.EndpointSlice{epSlice("web-1", "web", v4, tcp(eport("", 8080, "")), tt.eps...)},
				NodeName:       tt.node, NodeZone: tt.zone,
			})
			svc := snap.SortedServices()[0]
			if svc.InternalTrafficPolicy != tt.wantPolicy {
				t.Errorf("InternalTrafficPolicy = %v, want %v", svc.InternalTrafficPolicy, tt.wantPolicy)
			}
			if got := selected(svc); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Selected() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTopologyHints pins kube-proxy's use of the hints the EndpointSlice controller
// writes for trafficDistribution (PreferClose and PreferSameZone: a zone hint per
// endpoint; PreferSameNode: a node hint too) and for topology-mode Auto (zone hints
// spread by capacity): this node's when every ready endpoint has node hints and one is
// for this node; else this zone's when every ready endpoint has zone hints and one is
// for this zone; else every endpoint. The Service's own fields are not read.
func TestTopologyHints(t *testing.T) {
	svc := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
	preferClose := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
	preferClose.Spec.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferClose)
	// closeEP is an endpoint as PreferClose hints it: for its own zone.
	closeEP := func(addr, zone string, conds ...*bool) discoveryv1.Endpoint {
		return forZones(inZone(ep(addr, conds...), zone), zone)
	}
	// sameNodeEP is an endpoint as PreferSameNode hints it: for its node and zone.
	sameNodeEP := func(addr, node, zone string) discoveryv1.Endpoint {
		return forNodes(forZones(inZone(on(ep(addr), node), zone), zone), node)
	}
	tests := []struct {
		name string
		svc  *corev1.Service
		zone string
		eps  []discoveryv1.Endpoint
		want []string
	}{
		{
			name: "zone hints: only this zone's", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{closeEP("10.0.1.1", "zone-a"), closeEP("10.0.1.2", "zone-b"), closeEP("10.0.1.3", "zone-a")},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-a forZones=zone-a", "10.0.1.3:8080 w1 RS- zone=zone-a forZones=zone-a"},
		},
		{
			name: "hints, not the endpoint's zone, decide (topology-mode Auto lends endpoints)", zone: "zone-a",
			eps: []discoveryv1.Endpoint{
				forZones(inZone(ep("10.0.1.1"), "zone-b"), "zone-a", "zone-b"),
				forZones(inZone(ep("10.0.1.2"), "zone-a"), "zone-c"),
			},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-b forZones=zone-a,zone-b"},
		},
		{
			name: "a ready endpoint without hints: every endpoint", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{closeEP("10.0.1.1", "zone-a"), inZone(ep("10.0.1.2"), "zone-b")},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-a forZones=zone-a", "10.0.1.2:8080 w1 RS- zone=zone-b"},
		},
		{
			name: "a not-ready endpoint without hints does not count", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{closeEP("10.0.1.1", "zone-a"), closeEP("10.0.1.2", "zone-b"), ep("10.0.1.3", no)},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-a forZones=zone-a"},
		},
		{
			name: "no endpoint hinted for this zone: every endpoint", zone: "zone-c",
			eps:  []discoveryv1.Endpoint{closeEP("10.0.1.1", "zone-a"), closeEP("10.0.1.2", "zone-b")},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-a forZones=zone-a", "10.0.1.2:8080 w1 RS- zone=zone-b forZones=zone-b"},
		},
		{
			name: "a node without a zone: every endpoint",
			eps:  []discoveryv1.Endpoint{closeEP("10.0.1.1", "zone-a"), closeEP("10.0.1.2", "zone-b")},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-a forZones=zone-a", "10.0.1.2:8080 w1 RS- zone=zone-b forZones=zone-b"},
		},
		{
			name: "no ready endpoint: serving terminating ones of every zone", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{closeEP("10.0.1.1", "zone-a", no, yes, yes), closeEP("10.0.1.2", "zone-b", no, yes, yes)},
			want: []string{"10.0.1.1:8080 w1 -ST zone=zone-a forZones=zone-a", "10.0.1.2:8080 w1 -ST zone=zone-b forZones=zone-b"},
		},
		{
			name: "trafficDistribution without hints changes nothing", svc: preferClose, zone: "zone-a",
			eps:  []discoveryv1.Endpoint{inZone(ep("10.0.1.1"), "zone-a"), inZone(ep("10.0.1.2"), "zone-b")},
			want: []string{"10.0.1.1:8080 w1 RS- zone=zone-a", "10.0.1.2:8080 w1 RS- zone=zone-b"},
		},
		{
			name: "node hints (PreferSameNode): only this node's", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{sameNodeEP("10.0.1.1", "node-a", "zone-a"), sameNodeEP("10.0.1.2", "node-b", "zone-a")},
			want: []string{"10.0.1.1:8080 w1 RS- @node-a local zone=zone-a forZones=zone-a forNodes=node-a"},
		},
		{
			name: "node hints, none for this node: this zone's", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{sameNodeEP("10.0.1.2", "node-b", "zone-a"), sameNodeEP("10.0.1.3", "node-c", "zone-b")},
			want: []string{"10.0.1.2:8080 w1 RS- @node-b zone=zone-a forZones=zone-a forNodes=node-b"},
		},
		{
			name: "a ready endpoint without a node hint: this zone's", zone: "zone-a",
			eps:  []discoveryv1.Endpoint{sameNodeEP("10.0.1.1", "node-a", "zone-a"), closeEP("10.0.1.2", "zone-a"), closeEP("10.0.1.3", "zone-b")},
			want: []string{"10.0.1.1:8080 w1 RS- @node-a local zone=zone-a forZones=zone-a forNodes=node-a", "10.0.1.2:8080 w1 RS- zone=zone-a forZones=zone-a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := svc
			if tt.svc != nil {
				s = tt.svc
			}
			snap := BuildAll(Input{
				Services:       []*corev1.Service{s},
				EndpointSlices: []*discoveryv1.EndpointSlice{epSlice("web-1", "web", v4, tcp(eport("", 8080, "")), tt.eps...)},
				NodeName:       "node-a", NodeZone: tt.zone,
			})
			if got := selected(snap.SortedServices()[0]); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Selected():\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	for _, tt := range []struct {
		in   []string
		want []string
		str  string
	}{
		{nil, nil, ""},
		{[]string{"b", "a", "b"}, []string{"a", "b"}, "a,b"},
		{[]string{""}, []string{""}, ""}, // a set holding the empty name is not the empty set
	} {
		n := NamesOf(tt.in...)
		if got := n.List(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("NamesOf(%q).List() = %q, want %q", tt.in, got, tt.want)
		}
		if n.String() != tt.str || (n == "") != (len(tt.in) == 0) {
			t.Errorf("NamesOf(%q) = %q (String %q), want String %q and empty only for no names", tt.in, string(n), n.String(), tt.str)
		}
	}
}

func TestSelectedDoesNotAllocate(t *testing.T) {
	snap := BuildAll(Input{
		Services: []*corev1.Service{service("web", []string{"10.96.0.10"}, sport("", 80, ""))},
		EndpointSlices: []*discoveryv1.EndpointSlice{epSlice("web-1", "web", v4, tcp(eport("", 8080, "")),
			forZones(ep("10.0.1.1"), "zone-a"), forZones(ep("10.0.1.2"), "zone-b"))},
		NodeZone: "zone-a",
	})
	svc := snap.SortedServices()[0]
	dst := make([]Backend, 0, 4)
	if n := testing.AllocsPerRun(100, func() { dst = svc.AppendSelected(dst[:0]) }); n != 0 {
		t.Errorf("AppendSelected allocates %v times with room in dst", n)
	}
}
