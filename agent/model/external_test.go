package model

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestExternalFieldsCarried pins what is carried for NodePort support, read as
// kube-proxy reads it: per frontend, the addresses and ranges of its family.
func TestExternalFieldsCarried(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	prefixes := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	lb := func() *corev1.Service {
		s := service("web", []string{"10.96.0.10", "fd00::10"},
			corev1.ServicePort{Name: "http", Port: 80, NodePort: 30080}, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, NodePort: 30053})
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1", "192.0.2.2"}
		s.Spec.LoadBalancerSourceRanges = []string{" 198.51.100.7/24 ", "::/0"}
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
			{IP: "203.0.113.1"},
			{IP: "203.0.113.2", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
			{Hostname: "lb.example.com"},
			{IP: "2001:db8::100", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
		}
		return s
	}
	tests := []struct {
		name     string
		svc      *corev1.Service
		want     map[string]External
		wantErrs []string
	}{
		{
			name: "LoadBalancer, dual-stack, externalTrafficPolicy Local",
			svc:  lb(),
			want: map[string]External{
				"10.96.0.10:80/TCP": {NodePort: 30080, ExternalIPs: addrs("192.0.2.1", "192.0.2.2"), LoadBalancerIPs: addrs("203.0.113.1"),
					SourceRanges: prefixes("198.51.100.0/24"), TrafficPolicy: PolicyLocal, HealthCheckNodePort: 32000},
				"10.96.0.10:53/UDP": {NodePort: 30053, ExternalIPs: addrs("192.0.2.1", "192.0.2.2"), LoadBalancerIPs: addrs("203.0.113.1"),
					SourceRanges: prefixes("198.51.100.0/24"), TrafficPolicy: PolicyLocal, HealthCheckNodePort: 32000},
				// ::/0 allows every IPv6 source: no ranges.
				"[fd00::10]:80/TCP": {NodePort: 30080, ExternalIPs: addrs("2001:db8::1"), LoadBalancerIPs: addrs("2001:db8::100"),
					TrafficPolicy: PolicyLocal, HealthCheckNodePort: 32000},
				"[fd00::10]:53/UDP": {NodePort: 30053, ExternalIPs: addrs("2001:db8::1"), LoadBalancerIPs: addrs("2001:db8::100"),
					TrafficPolicy: PolicyLocal, HealthCheckNodePort: 32000},
			},
		},
		{
			name: "NodePort with externalTrafficPolicy Local: no health check port",
			svc: func() *corev1.Service {
				s := service("web", []string{"10.96.0.10"}, corev1.ServicePort{Port: 80, NodePort: 30080})
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
				return s
			}(),
			want: map[string]External{"10.96.0.10:80/TCP": {NodePort: 30080, TrafficPolicy: PolicyLocal}},
		},
		{
			name: "ClusterIP: externalTrafficPolicy Local only with externalIPs",
			svc: func() *corev1.Service {
				s := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				return s
			}(),
			want: map[string]External{"10.96.0.10:80/TCP": {}},
		},
		{
			name: "ClusterIP with externalIPs and externalTrafficPolicy Local",
			svc: func() *corev1.Service {
				s := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
				s.Spec.ExternalIPs = []string{"192.0.2.1"}
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				return s
			}(),
			want: map[string]External{"10.96.0.10:80/TCP": {ExternalIPs: addrs("192.0.2.1"), TrafficPolicy: PolicyLocal}},
		},
		{
			name: "unreadable values are reported once and left out",
			svc: func() *corev1.Service {
				s := service("web", []string{"10.96.0.10", "fd00::10"}, corev1.ServicePort{Port: 80, NodePort: 70000})
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.ExternalIPs = []string{"not-an-ip", "192.0.2.1"}
				s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/33"}
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = -1
				return s
			}(),
			want: map[string]External{
				"10.96.0.10:80/TCP": {ExternalIPs: addrs("192.0.2.1"), TrafficPolicy: PolicyLocal},
				"[fd00::10]:80/TCP": {TrafficPolicy: PolicyLocal},
			},
			wantErrs: []string{
				"Service default/web invalid_external_address", "Service default/web invalid_external_address",
				"Service default/web invalid_port", "Service default/web invalid_port",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := Build([]*corev1.Service{tt.svc}, nil)
			got := map[string]External{}
			for fe, svc := range snap.Services {
				if !svc.FromOutside() { // TestExternalFrontends covers those
					got[fe.String()] = svc.External
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("External:\n got %+v\nwant %+v", got, tt.want)
			}
			if got := errorKeys(snap.Errors); !reflect.DeepEqual(got, append([]string{}, tt.wantErrs...)) {
				t.Errorf("errors = %v, want %v (%v)", got, tt.wantErrs, snap.Errors)
			}
		})
	}
}

// TestExternalFrontends pins the frontends outside clients reach a Service at, each a
// Service of its own whose endpoints follow externalTrafficPolicy.
func TestExternalFrontends(t *testing.T) {
	svc := service("web", []string{"10.96.0.10", "fd00::10"},
		corev1.ServicePort{Name: "http", Port: 80, NodePort: 30080},
		corev1.ServicePort{Name: "far", Port: 81, NodePort: 20000}) // outside the default range
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalIPs = []string{"192.0.2.1", "203.0.113.1"}
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.1"}, {IP: "2001:db8::100"}}
	snap := Build([]*corev1.Service{svc}, nil)

	got := map[string]string{}
	for fe, s := range snap.Services {
		got[fe.String()] = s.Kind.String() + " " + s.InternalTrafficPolicy.String()
	}
	want := map[string]string{
		"10.96.0.10:80/TCP": "ClusterIP Cluster", "[fd00::10]:80/TCP": "ClusterIP Cluster",
		"10.96.0.10:81/TCP": "ClusterIP Cluster", "[fd00::10]:81/TCP": "ClusterIP Cluster",
		"0.0.0.0:30080/TCP": "NodePort Local", "[::]:30080/TCP": "NodePort Local",
		"192.0.2.1:80/TCP": "ExternalIP Local", "192.0.2.1:81/TCP": "ExternalIP Local",
		// Listed as externalIP and as LB ingress: one frontend, the first kind.
		"203.0.113.1:80/TCP": "ExternalIP Local", "203.0.113.1:81/TCP": "ExternalIP Local",
		"[2001:db8::100]:80/TCP": "LoadBalancer Local", "[2001:db8::100]:81/TCP": "LoadBalancer Local",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("frontends:\n got %v\nwant %v", got, want)
	}
	if got := errorKeys(snap.Errors); !reflect.DeepEqual(got, []string{"Service default/web node_port_out_of_range", "Service default/web node_port_out_of_range"}) {
		t.Errorf("errors = %v (%v)", got, snap.Errors)
	}

	// A custom range serves the far port; a second Service asking for a held
	// externalIP:port is refused with the holder named.
	other := service("other", []string{"10.96.0.11"}, corev1.ServicePort{Port: 80})
	other.Spec.ExternalIPs = []string{"192.0.2.1"}
	svc.CreationTimestamp = metav1.NewTime(time.Unix(1000, 0))
	other.CreationTimestamp = metav1.NewTime(time.Unix(2000, 0))
	snap = BuildAll(Input{Services: []*corev1.Service{svc, other}, NodePortRange: PortRange{20000, 32767}})
	if s := snap.Services[Frontend{Addr: netip.IPv4Unspecified(), Port: 20000, Protocol: TCP}]; s == nil || s.Frontend.Port != 20000 {
		t.Errorf("NodePort 20000 inside --node-port-range 20000-32767 is not served")
	}
	if s := snap.Services[Frontend{Addr: netip.MustParseAddr("192.0.2.1"), Port: 80, Protocol: TCP}]; s == nil || s.Name.Name != "web" {
		t.Errorf("192.0.2.1:80 should stay with web: %v", s)
	}
	if got := errorKeys(snap.Errors); !reflect.DeepEqual(got, []string{"Service default/other duplicate_frontend"}) {
		t.Errorf("errors = %v (%v)", got, snap.Errors)
	}
}

func TestLBAlgorithmAnnotation(t *testing.T) {
	svc := service("web", []string{"10.96.0.10"}, corev1.ServicePort{Port: 80, NodePort: 30080})
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Annotations = map[string]string{LBAlgorithmAnnotation: "maglev"}
	snap := Build([]*corev1.Service{svc}, nil)
	np := snap.Services[Frontend{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: TCP}]
	cluster := snap.Services[Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: TCP}]
	if np == nil || !np.Maglev || cluster == nil || cluster.Maglev {
		t.Fatalf("maglev: NodePort %+v, cluster IP %+v; want Maglev on the NodePort only", np, cluster)
	}
	svc.Annotations[LBAlgorithmAnnotation] = "round-robin"
	snap = Build([]*corev1.Service{svc}, nil)
	if np := snap.Services[Frontend{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: TCP}]; np.Maglev {
		t.Fatal("an unknown algorithm must fall back to random")
	}
	if got := errorKeys(snap.Errors); !reflect.DeepEqual(got, []string{"Service default/web invalid_annotation"}) {
		t.Fatalf("errors %v", got)
	}
}
