package model

import (
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Builders for test objects: each test states only the fields it is about.

func service(name string, ips []string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       corev1.ServiceSpec{ClusterIPs: ips, Ports: ports},
	}
}

func sport(name string, port int32, proto corev1.Protocol) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: proto}
}

func epSlice(name, svc string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
	if svc != "" {
		s.Labels[discoveryv1.LabelServiceName] = svc
	}
	return s
}

func eport(name string, port int32, proto corev1.Protocol) discoveryv1.EndpointPort {
	p := discoveryv1.EndpointPort{Port: &port}
	if name != "" {
		p.Name = &name
	}
	if proto != "" {
		p.Protocol = &proto
	}
	return p
}

// ep is an endpoint; conds are ready, serving, terminating in that order, nil for unset.
func ep(addr string, conds ...*bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	for i, c := range conds {
		switch i {
		case 0:
			e.Conditions.Ready = c
		case 1:
			e.Conditions.Serving = c
		case 2:
			e.Conditions.Terminating = c
		}
	}
	return e
}

func on(e discoveryv1.Endpoint, node string) discoveryv1.Endpoint { e.NodeName = &node; return e }

// inZone sets the endpoint's own zone.
func inZone(e discoveryv1.Endpoint, zone string) discoveryv1.Endpoint { e.Zone = &zone; return e }

// forZones and forNodes add topology hints, as the EndpointSlice controller writes them.
func forZones(e discoveryv1.Endpoint, zones ...string) discoveryv1.Endpoint {
	if e.Hints == nil {
		e.Hints = &discoveryv1.EndpointHints{}
	}
	for _, z := range zones {
		e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
	}
	return e
}

func forNodes(e discoveryv1.Endpoint, nodes ...string) discoveryv1.Endpoint {
	if e.Hints == nil {
		e.Hints = &discoveryv1.EndpointHints{}
	}
	for _, n := range nodes {
		e.Hints.ForNodes = append(e.Hints.ForNodes, discoveryv1.ForNode{Name: n})
	}
	return e
}

// labelled sets one label on the Service.
func labelled(s *corev1.Service, key, value string) *corev1.Service {
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	s.Labels[key] = value
	return s
}

// selected renders the backends Selected() returns, one line each.
func selected(svc *Service) []string {
	var out []string
	for _, b := range svc.Selected() {
		out = append(out, backendLine(b))
	}
	return out
}

var (
	yes = ptr(true)
	no  = ptr(false)
)

func ptr[T any](v T) *T { return &v }

func tcp(ports ...discoveryv1.EndpointPort) []discoveryv1.EndpointPort { return ports }

// summary renders a snapshot's services as frontend → backends, one string per backend,
// so that tables can state the expected outcome in a line each.
func summary(s *Snapshot) map[string][]string {
	out := map[string][]string{}
	for fe, svc := range s.Services {
		lines := []string{fmt.Sprintf("%s port=%q affinity=%s", svc.Name, svc.PortName, svc.AffinityTimeout)}
		for _, b := range svc.Backends {
			lines = append(lines, backendLine(b))
		}
		out[fe.String()] = lines
	}
	return out
}

func backendLine(b Backend) string {
	flag := func(v bool, c string) string {
		if v {
			return c
		}
		return "-"
	}
	l := fmt.Sprintf("%s w%d %s%s%s", b.AddrPort(), b.Weight, flag(b.Ready, "R"), flag(b.Serving, "S"), flag(b.Terminating, "T"))
	if b.NodeName != "" {
		l += " @" + b.NodeName
	}
	if b.Local {
		l += " local"
	}
	if b.Zone != "" {
		l += " zone=" + b.Zone
	}
	if b.ForZones != "" {
		l += " forZones=" + b.ForZones.String()
	}
	if b.ForNodes != "" {
		l += " forNodes=" + b.ForNodes.String()
	}
	return l
}

// errorKeys renders errors as "Kind ns/name reason", sorted.
func errorKeys(errs []ObjectError) []string {
	out := []string{}
	for _, e := range errs {
		out = append(out, fmt.Sprintf("%s %s/%s %s", e.Kind, e.Namespace, e.Name, e.Reason))
	}
	sort.Strings(out)
	return out
}

// created sets the Service's creationTimestamp to day d of 2026.
func created(s *corev1.Service, d int) *corev1.Service {
	s.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, d, 0, 0, 0, 0, time.UTC))
	return s
}
