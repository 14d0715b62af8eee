package model

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

const (
	v4 = discoveryv1.AddressTypeIPv4
	v6 = discoveryv1.AddressTypeIPv6
)

func TestBuild(t *testing.T) {
	web := func() *corev1.Service { return service("web", []string{"10.96.0.10"}, sport("http", 80, "")) }
	webSlice := func(name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return epSlice(name, "web", v4, tcp(eport("http", 8080, "")), eps...)
	}
	withAnnotation := func(s *discoveryv1.EndpointSlice, v string) *discoveryv1.EndpointSlice {
		s.Annotations = map[string]string{BackendWeightsAnnotation: v}
		return s
	}
	tests := []struct {
		name     string
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		holders  map[Frontend]ServiceName
		want     map[string][]string
		wantErrs []string
	}{
		{
			name: "dual-stack service gets one frontend per family, each with its family's backends",
			services: []*corev1.Service{
				service("web", []string{"10.96.0.10", "fd00::10"}, sport("http", 80, corev1.ProtocolTCP)),
			},
			slices: []*discoveryv1.EndpointSlice{
				epSlice("web-v4", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.5")),
				epSlice("web-v6", "web", v6, tcp(eport("http", 8080, "")), ep("fd00:1::5")),
			},
			want: map[string][]string{
				"10.96.0.10:80/TCP": {`default/web port="http" affinity=0s`, "10.0.1.5:8080 w1 RS-"},
				"[fd00::10]:80/TCP": {`default/web port="http" affinity=0s`, "[fd00:1::5]:8080 w1 RS-"},
			},
		},
		{
			name: "spec.clusterIP is used when spec.clusterIPs is empty",
			services: []*corev1.Service{func() *corev1.Service {
				s := service("web", nil, sport("", 80, ""))
				s.Spec.ClusterIP = "10.96.0.10"
				return s
			}()},
			slices: []*discoveryv1.EndpointSlice{epSlice("web-1", "web", v4, tcp(eport("", 8080, "")), ep("10.0.1.5"))},
			want: map[string][]string{
				"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`, "10.0.1.5:8080 w1 RS-"},
			},
		},
		{
			name: "multi-port: slice ports are matched by name and protocol",
			services: []*corev1.Service{service("dns", []string{"10.96.0.53"},
				sport("dns", 53, corev1.ProtocolUDP), sport("dns-tcp", 53, corev1.ProtocolTCP), sport("metrics", 9153, ""))},
			slices: []*discoveryv1.EndpointSlice{epSlice("dns-1", "dns", v4, []discoveryv1.EndpointPort{
				eport("dns", 5353, corev1.ProtocolUDP),
				eport("dns-tcp", 5354, corev1.ProtocolTCP),
				eport("metrics", 9154, corev1.ProtocolUDP), // wrong protocol: no match
			}, ep("10.0.2.1"))},
			want: map[string][]string{
				"10.96.0.53:53/UDP":   {`default/dns port="dns" affinity=0s`, "10.0.2.1:5353 w1 RS-"},
				"10.96.0.53:53/TCP":   {`default/dns port="dns-tcp" affinity=0s`, "10.0.2.1:5354 w1 RS-"},
				"10.96.0.53:9153/TCP": {`default/dns port="metrics" affinity=0s`},
			},
		},
		{
			name:     "an unnamed service port matches only an unnamed slice port",
			services: []*corev1.Service{service("web", []string{"10.96.0.10"}, sport("", 80, ""))},
			slices:   []*discoveryv1.EndpointSlice{epSlice("web-1", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.5"))},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`}},
		},
		{
			name:     "endpoint conditions are defaulted and node names kept",
			services: []*corev1.Service{web()},
			slices: []*discoveryv1.EndpointSlice{webSlice("web-1",
				on(ep("10.0.1.1"), "node-a"), // all nil: ready, serving, not terminating
				ep("10.0.1.2", no),           // serving nil is true, as the API says and kube-proxy reads it
				ep("10.0.1.3", no, yes, yes), // terminating but still serving
				ep("10.0.1.4", nil, no),      // ready nil is true even when not serving
			)},
			want: map[string][]string{"10.96.0.10:80/TCP": {
				`default/web port="http" affinity=0s`,
				"10.0.1.1:8080 w1 RS- @node-a", "10.0.1.2:8080 w1 -S-", "10.0.1.3:8080 w1 -ST", "10.0.1.4:8080 w1 R--",
			}},
		},
		{
			name:     "duplicates across slices: first by slice name, unless a later copy is ready",
			services: []*corev1.Service{web()},
			slices: []*discoveryv1.EndpointSlice{
				webSlice("web-b", on(ep("10.0.1.1", yes), "second"), on(ep("10.0.1.2", no), "second")),
				webSlice("web-a", on(ep("10.0.1.1", yes), "first"), on(ep("10.0.1.2", no), "first"), on(ep("10.0.1.3", no), "first")),
				webSlice("web-c", on(ep("10.0.1.3", yes), "third")),
			},
			want: map[string][]string{"10.96.0.10:80/TCP": {
				`default/web port="http" affinity=0s`,
				"10.0.1.1:8080 w1 RS- @first", "10.0.1.2:8080 w1 -S- @first", "10.0.1.3:8080 w1 RS- @third",
			}},
		},
		{
			name:     "weights from the annotation, keys compared as addresses",
			services: []*corev1.Service{service("web", []string{"fd00::10"}, sport("http", 80, ""))},
			slices: []*discoveryv1.EndpointSlice{withAnnotation(
				epSlice("web-1", "web", v6, tcp(eport("http", 8080, "")), ep("fd00::1"), ep("fd00::2")),
				`{"fd00::0001": 3, "fd00::99": 1000}`)},
			want: map[string][]string{"[fd00::10]:80/TCP": {
				`default/web port="http" affinity=0s`, "[fd00::1]:8080 w3 RS-", "[fd00::2]:8080 w1 RS-",
			}},
		},
		{
			name:     "bad weight annotations: slice used with weight 1",
			services: []*corev1.Service{web()},
			slices: []*discoveryv1.EndpointSlice{
				withAnnotation(webSlice("web-1", ep("10.0.1.1")), `{"10.0.1.1": 3`),
				withAnnotation(webSlice("web-2", ep("10.0.1.2")), `{"10.0.1.2": 1001}`),
				withAnnotation(webSlice("web-3", ep("10.0.1.3")), `{"10.0.1.3": 0}`),
				withAnnotation(webSlice("web-4", ep("10.0.1.4")), `{"10.0.1.4": 2.5}`),
				withAnnotation(webSlice("web-5", ep("10.0.1.5")), `{"web-5": 2}`),
			},
			want: map[string][]string{"10.96.0.10:80/TCP": {
				`default/web port="http" affinity=0s`,
				"10.0.1.1:8080 w1 RS-", "10.0.1.2:8080 w1 RS-", "10.0.1.3:8080 w1 RS-", "10.0.1.4:8080 w1 RS-", "10.0.1.5:8080 w1 RS-",
			}},
			wantErrs: []string{
				"EndpointSlice default/web-1 invalid_annotation", "EndpointSlice default/web-2 invalid_annotation",
				"EndpointSlice default/web-3 invalid_annotation", "EndpointSlice default/web-4 invalid_annotation",
				"EndpointSlice default/web-5 invalid_annotation",
			},
		},
		{
			name: "ExternalName and headless services are skipped silently, with their slices",
			services: []*corev1.Service{
				func() *corev1.Service {
					s := service("ext", nil, sport("", 80, ""))
					s.Spec.Type = corev1.ServiceTypeExternalName
					s.Spec.ExternalName = "example.com"
					return s
				}(),
				service("headless", []string{"None"}, sport("", 80, "")),
			},
			slices: []*discoveryv1.EndpointSlice{epSlice("headless-1", "headless", v4, tcp(eport("", 80, "")), ep("10.0.1.1"))},
			want:   map[string][]string{},
		},
		{
			name:     "unknown service: slice reported and left out",
			services: []*corev1.Service{web()},
			slices:   []*discoveryv1.EndpointSlice{epSlice("api-1", "api", v4, tcp(eport("http", 8080, "")), ep("10.0.1.1"))},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/web port="http" affinity=0s`}},
			wantErrs: []string{"EndpointSlice default/api-1 unknown_service"},
		},
		{
			name:     "SCTP port is left out, the other ports are kept",
			services: []*corev1.Service{service("web", []string{"10.96.0.10"}, sport("http", 80, ""), sport("sig", 3868, corev1.ProtocolSCTP))},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/web port="http" affinity=0s`}},
			wantErrs: []string{"Service default/web unsupported_protocol"},
		},
		{
			name:     "bad endpoint addresses are skipped, the rest of the slice is used",
			services: []*corev1.Service{web()},
			slices: []*discoveryv1.EndpointSlice{webSlice("web-1",
				ep("10.0.1.1"), ep("not-an-ip"), ep("fd00::1"), ep("10.0.1.02"), discoveryv1.Endpoint{})},
			want: map[string][]string{"10.96.0.10:80/TCP": {`default/web port="http" affinity=0s`, "10.0.1.1:8080 w1 RS-"}},
			wantErrs: []string{
				"EndpointSlice default/web-1 invalid_endpoint", "EndpointSlice default/web-1 invalid_endpoint",
				"EndpointSlice default/web-1 invalid_endpoint", "EndpointSlice default/web-1 invalid_endpoint",
			},
		},
		{
			name: "a frontend claimed twice goes to the first service by name",
			services: []*corev1.Service{
				service("web-b", []string{"10.96.0.10"}, sport("", 80, "")),
				service("web-a", []string{"10.96.0.10"}, sport("", 80, "")),
			},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/web-a port="" affinity=0s`}},
			wantErrs: []string{"Service default/web-b duplicate_frontend"},
		},
		{
			name: "a contested frontend stays with the Service that holds it",
			services: []*corev1.Service{
				service("web", []string{"10.96.0.10"}, sport("", 80, "")),
				service("aaa", []string{"10.96.0.10"}, sport("", 80, "")),
			},
			holders:  map[Frontend]ServiceName{{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: TCP}: {Namespace: "default", Name: "web"}},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/web port="" affinity=0s`}},
			wantErrs: []string{"Service default/aaa duplicate_frontend"},
		},
		{
			name: "without a holder, the older Service keeps a contested frontend",
			services: []*corev1.Service{
				service("web", []string{"10.96.0.10"}, sport("", 80, "")),
				created(service("aaa", []string{"10.96.0.10"}, sport("", 80, "")), 2),
				created(service("zzz", []string{"10.96.0.10"}, sport("", 80, "")), 1),
			},
			want:     map[string][]string{"10.96.0.10:80/TCP": {`default/zzz port="" affinity=0s`}},
			wantErrs: []string{"Service default/aaa duplicate_frontend", "Service default/web duplicate_frontend"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Services: tt.services, EndpointSlices: tt.slices, Holders: tt.holders}
			snap := BuildAll(in)
			if got := summary(snap); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("services:\n got %v\nwant %v", got, tt.want)
			}
			if got, want := errorKeys(snap.Errors), append([]string{}, tt.wantErrs...); !reflect.DeepEqual(got, want) {
				t.Errorf("errors:\n got %v\nwant %v\n(%v)", got, want, snap.Errors)
			}
			for _, e := range snap.Errors {
				if e.Message == "" || strings.Contains(e.Message, "\n") {
					t.Errorf("error %+v: want a one-line message", e)
				}
			}
			if again := BuildAll(in); !reflect.DeepEqual(again, snap) {
				t.Errorf("Build is not deterministic")
			}
		})
	}
}

// TestTerminatingFallback pins KEP-1669 as kube-proxy applies it: ready endpoints;
// when none is ready anywhere, the serving terminating ones; else none.
func TestTerminatingFallback(t *testing.T) {
	svc := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
	sl := func(eps ...discoveryv1.Endpoint) []*discoveryv1.EndpointSlice {
		return []*discoveryv1.EndpointSlice{epSlice("web-1", "web", v4, tcp(eport("", 8080, "")), eps...)}
	}
	tests := []struct {
		name string
		eps  []discoveryv1.Endpoint
		want []string
	}{
		{"ready ones win", []discoveryv1.Endpoint{ep("10.0.1.1", yes), ep("10.0.1.2", no, yes, yes)}, []string{"10.0.1.1:8080 w1 RS-"}},
		{"a ready terminating endpoint is ready", []discoveryv1.Endpoint{ep("10.0.1.1", yes, yes, yes), ep("10.0.1.2", no, yes, yes)}, []string{"10.0.1.1:8080 w1 RST"}},
		{"serving terminating when none is ready", []discoveryv1.Endpoint{ep("10.0.1.1", no, no, yes), ep("10.0.1.2", no, yes, yes)}, []string{"10.0.1.2:8080 w1 -ST"}},
		{"serving unset counts as serving", []discoveryv1.Endpoint{ep("10.0.1.1", no, nil, yes)}, []string{"10.0.1.1:8080 w1 -ST"}},
		{"serving but not terminating is not a fallback", []discoveryv1.Endpoint{ep("10.0.1.1", no, yes, no)}, nil},
		{"none when nothing serves", []discoveryv1.Endpoint{ep("10.0.1.1", no, no, yes), ep("10.0.1.2", no)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := Build([]*corev1.Service{svc}, sl(tt.eps...))
			if got := selected(snap.SortedServices()[0]); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Selected() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSessionAffinity pins ClientIP affinity: the API's default timeout when none is
// given, on every port and family of the Service.
func TestSessionAffinity(t *testing.T) {
	clientIP := func(s *corev1.Service, secs *int32) *corev1.Service {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if secs != nil {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: secs}}
		}
		return s
	}
	tests := []struct {
		name string
		svc  *corev1.Service
		want map[string]time.Duration
	}{
		{"none", service("web", []string{"10.96.0.10"}, sport("", 80, "")), map[string]time.Duration{"10.96.0.10:80/TCP": 0}},
		{"explicit None", func() *corev1.Service {
			s := service("web", []string{"10.96.0.10"}, sport("", 80, ""))
			s.Spec.SessionAffinity = corev1.ServiceAffinityNone
			return s
		}(), map[string]time.Duration{"10.96.0.10:80/TCP": 0}},
		{"ClientIP without a timeout: 3h", clientIP(service("web", []string{"10.96.0.10"}, sport("", 80, "")), nil),
			map[string]time.Duration{"10.96.0.10:80/TCP": 3 * time.Hour}},
		{"ClientIP with a timeout", clientIP(service("web", []string{"10.96.0.10"}, sport("", 80, "")), ptr[int32](60)),
			map[string]time.Duration{"10.96.0.10:80/TCP": time.Minute}},
		{"on every port and family", clientIP(service("dns", []string{"10.96.0.53", "fd00::53"},
			sport("dns", 53, corev1.ProtocolUDP), sport("dns-tcp", 53, corev1.ProtocolTCP)), ptr[int32](10)),
			map[string]time.Duration{
				"10.96.0.53:53/UDP": 10 * time.Second, "10.96.0.53:53/TCP": 10 * time.Second,
				"[fd00::53]:53/UDP": 10 * time.Second, "[fd00::53]:53/TCP": 10 * time.Second,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]time.Duration{}
			for fe, svc := range Build([]*corev1.Service{tt.svc}, nil).Services {
				got[fe.String()] = svc.AffinityTimeout
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("affinity timeouts = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestMultipleSlicesPerService pins how a Service's EndpointSlices combine: every slice
// of the frontend's family adds its endpoints, each through its own port number for the
// Service port (during a targetPort rollout two slices disagree), and a slice without
// the port adds nothing.
func TestMultipleSlicesPerService(t *testing.T) {
	svc := service("web", []string{"10.96.0.10", "fd00::10"}, sport("http", 80, ""))
	tests := []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
		want   map[string][]string
	}{
		{
			name: "endpoints of every slice, in address order",
			slices: []*discoveryv1.EndpointSlice{
				epSlice("web-b", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.3"), ep("10.0.1.1")),
				epSlice("web-a", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.2")),
			},
			want: map[string][]string{
				"10.96.0.10:80/TCP": {"10.0.1.1:8080 w1 RS-", "10.0.1.2:8080 w1 RS-", "10.0.1.3:8080 w1 RS-"},
				"[fd00::10]:80/TCP": nil,
			},
		},
		{
			name: "each slice's own port number",
			slices: []*discoveryv1.EndpointSlice{
				epSlice("web-old", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.1")),
				epSlice("web-new", "web", v4, tcp(eport("http", 9090, "")), ep("10.0.1.2")),
			},
			want: map[string][]string{
				"10.96.0.10:80/TCP": {"10.0.1.1:8080 w1 RS-", "10.0.1.2:9090 w1 RS-"},
				"[fd00::10]:80/TCP": nil,
			},
		},
		{
			name: "slices feed only their family's frontend",
			slices: []*discoveryv1.EndpointSlice{
				epSlice("web-v4", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.1")),
				epSlice("web-v6", "web", v6, tcp(eport("http", 8080, "")), ep("fd00:1::1")),
				epSlice("web-v6b", "web", v6, tcp(eport("http", 8080, "")), ep("fd00:1::2")),
			},
			want: map[string][]string{
				"10.96.0.10:80/TCP": {"10.0.1.1:8080 w1 RS-"},
				"[fd00::10]:80/TCP": {"[fd00:1::1]:8080 w1 RS-", "[fd00:1::2]:8080 w1 RS-"},
			},
		},
		{
			name: "a slice without the Service's port adds nothing",
			slices: []*discoveryv1.EndpointSlice{
				epSlice("web-1", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.1")),
				epSlice("web-2", "web", v4, tcp(eport("metrics", 9100, "")), ep("10.0.1.2")),
			},
			want: map[string][]string{
				"10.96.0.10:80/TCP": {"10.0.1.1:8080 w1 RS-"},
				"[fd00::10]:80/TCP": nil,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string][]string{}
			for fe, s := range Build([]*corev1.Service{svc}, tt.slices).Services {
				got[fe.String()] = selected(s)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("selected:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestSamePortTCPAndUDP pins one port number on both protocols (DNS): two frontends,
// each fed only by the slice port of its own name and protocol.
func TestSamePortTCPAndUDP(t *testing.T) {
	svc := service("dns", []string{"10.96.0.53"}, sport("dns", 53, corev1.ProtocolUDP), sport("dns-tcp", 53, corev1.ProtocolTCP))
	tests := []struct {
		name  string
		ports []discoveryv1.EndpointPort
		want  map[string][]string
	}{
		{
			name:  "each protocol through its own slice port",
			ports: []discoveryv1.EndpointPort{eport("dns", 5353, corev1.ProtocolUDP), eport("dns-tcp", 5354, corev1.ProtocolTCP)},
			want: map[string][]string{
				"10.96.0.53:53/UDP": {`default/dns port="dns" affinity=0s`, "10.0.2.1:5353 w1 RS-"},
				"10.96.0.53:53/TCP": {`default/dns port="dns-tcp" affinity=0s`, "10.0.2.1:5354 w1 RS-"},
			},
		},
		{
			name:  "only UDP in the slice: the TCP frontend has no backend",
			ports: []discoveryv1.EndpointPort{eport("dns", 5353, corev1.ProtocolUDP)},
			want: map[string][]string{
				"10.96.0.53:53/UDP": {`default/dns port="dns" affinity=0s`, "10.0.2.1:5353 w1 RS-"},
				"10.96.0.53:53/TCP": {`default/dns port="dns-tcp" affinity=0s`},
			},
		},
		{
			name:  "a name on the wrong protocol does not match",
			ports: []discoveryv1.EndpointPort{eport("dns", 5353, corev1.ProtocolTCP), eport("dns-tcp", 5354, corev1.ProtocolUDP)},
			want: map[string][]string{
				"10.96.0.53:53/UDP": {`default/dns port="dns" affinity=0s`},
				"10.96.0.53:53/TCP": {`default/dns port="dns-tcp" affinity=0s`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{epSlice("dns-1", "dns", v4, tt.ports, ep("10.0.2.1"))})
			if got := summary(snap); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("services:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestBuildDoesNotModifyInput(t *testing.T) {
	svcs := []*corev1.Service{service("b", []string{"10.96.0.2"}, sport("", 80, "")), nil, service("a", []string{"10.96.0.1"}, sport("", 80, ""))}
	Build(svcs, nil)
	if svcs[0].Name != "b" || svcs[1] != nil || svcs[2].Name != "a" {
		t.Errorf("Build reordered its input")
	}
}
