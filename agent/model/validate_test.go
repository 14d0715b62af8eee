package model

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Validate* must flag exactly what rejects an object version, and nothing that only
// degrades it: a source keeps the last good version on any error they return.
func TestValidateService(t *testing.T) {
	mod := func(f func(*corev1.Service)) *corev1.Service {
		s := service("web", []string{"10.96.0.10"}, sport("http", 80, ""))
		f(s)
		return s
	}
	tests := []struct {
		name string
		svc  *corev1.Service
		want []string
	}{
		{"valid", mod(func(*corev1.Service) {}), nil},
		{"headless", mod(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"None"} }), nil},
		{"no cluster IP yet", mod(func(s *corev1.Service) { s.Spec.ClusterIPs = nil }), nil},
		{"SCTP only degrades", mod(func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolSCTP }), nil},
		{"ExternalName is not checked", mod(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeExternalName
			s.Spec.ClusterIPs = []string{"bogus"}
		}), nil},
		{"missing name", mod(func(s *corev1.Service) { s.Name = "" }), []string{ReasonMissingName}},
		{"unknown type", mod(func(s *corev1.Service) { s.Spec.Type = "Magic" }), []string{ReasonUnsupportedType}},
		{"bad cluster IP", mod(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.256"} }), []string{ReasonInvalidClusterIP}},
		{"zoned cluster IP", mod(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"fe80::1%eth0"} }), []string{ReasonInvalidClusterIP}},
		{"clusterIP disagrees with clusterIPs", mod(func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.11" }), []string{ReasonInvalidClusterIP}},
		{"None among IPs", mod(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.10", "None"} }), []string{ReasonInvalidClusterIP}},
		{"two IPv4", mod(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.10", "10.96.0.11"} }), []string{ReasonInvalidClusterIP}},
		{"port zero", mod(func(s *corev1.Service) { s.Spec.Ports[0].Port = 0 }), []string{ReasonInvalidPort}},
		{"port too big", mod(func(s *corev1.Service) { s.Spec.Ports[0].Port = 65536 }), []string{ReasonInvalidPort}},
		{"same port, default and explicit TCP", mod(func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, sport("other", 80, corev1.ProtocolTCP))
		}), []string{ReasonDuplicatePort}},
		{"same port, other protocol is fine", mod(func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, sport("other", 80, corev1.ProtocolUDP))
		}), nil},
		{"same name twice", mod(func(s *corev1.Service) { s.Spec.Ports = append(s.Spec.Ports, sport("http", 81, "")) }), []string{ReasonDuplicatePort}},
		{"unknown affinity", mod(func(s *corev1.Service) { s.Spec.SessionAffinity = "Cookie" }), []string{ReasonInvalidAffinity}},
		{"affinity timeout zero", mod(func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr[int32](0)}}
		}), []string{ReasonInvalidAffinity}},
		{"affinity timeout max", mod(func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr[int32](86400)}}
		}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := reasons(ValidateService(tt.svc)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ValidateService = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidateEndpointSlice(t *testing.T) {
	mod := func(f func(*discoveryv1.EndpointSlice)) *discoveryv1.EndpointSlice {
		s := epSlice("web-1", "web", v4, tcp(eport("http", 8080, "")), ep("10.0.1.1"))
		f(s)
		return s
	}
	tests := []struct {
		name  string
		slice *discoveryv1.EndpointSlice
		want  []string
	}{
		{"valid", mod(func(*discoveryv1.EndpointSlice) {}), nil},
		{"FQDN", mod(func(s *discoveryv1.EndpointSlice) { s.AddressType = discoveryv1.AddressTypeFQDN }), nil},
		{"port without number", mod(func(s *discoveryv1.EndpointSlice) { s.Ports[0].Port = nil }), nil},
		{"bad address only degrades", mod(func(s *discoveryv1.EndpointSlice) { s.Endpoints[0].Addresses[0] = "x" }), nil},
		{"bad annotation only degrades", mod(func(s *discoveryv1.EndpointSlice) {
			s.Annotations = map[string]string{BackendWeightsAnnotation: "{"}
		}), nil},
		{"missing name", mod(func(s *discoveryv1.EndpointSlice) { s.Name = "" }), []string{ReasonMissingName}},
		{"missing label", mod(func(s *discoveryv1.EndpointSlice) { s.Labels = nil }), []string{ReasonMissingServiceLabel}},
		{"bad address type", mod(func(s *discoveryv1.EndpointSlice) { s.AddressType = "IPv5" }), []string{ReasonInvalidAddressType}},
		{"bad port", mod(func(s *discoveryv1.EndpointSlice) { s.Ports[0].Port = ptr[int32](-1) }), []string{ReasonInvalidPort}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := reasons(ValidateEndpointSlice(tt.slice)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ValidateEndpointSlice = %v, want %v", got, tt.want)
			}
		})
	}
}

func reasons(errs []ObjectError) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Reason)
	}
	return out
}
