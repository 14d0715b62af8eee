package model

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// BackendWeightsAnnotation on an EndpointSlice holds a JSON object mapping endpoint IP to
// an integer weight in 1..MaxBackendWeight, e.g. {"10.0.1.5": 3}. Endpoints it does not
// name get weight 1.
const BackendWeightsAnnotation = "sockmesh.io/backend-weights"

// MaxBackendWeight bounds a backend weight, so that the datapath's selection tables stay
// small whatever the annotation says.
const MaxBackendWeight = 1000

// parsedSlice is an accepted EndpointSlice read once, so that problems with its endpoints
// are reported once however many frontends use it.
type parsedSlice struct {
	ipv6      bool
	ports     []discoveryv1.EndpointPort
	endpoints []Backend // Port is filled in per frontend
}

// indexSlices groups the EndpointSlices by the Service they name, each group in slice
// name order.
func (b *builder) indexSlices(in []*discoveryv1.EndpointSlice) map[ServiceName][]*parsedSlice {
	sorted := sortedObjects(in, func(s *discoveryv1.EndpointSlice) (string, string) { return s.Namespace, s.Name })
	out := map[ServiceName][]*parsedSlice{}
	for _, s := range sorted {
		report := reporter(KindEndpointSlice, s.Namespace, s.Name)
		if s.AddressType == discoveryv1.AddressTypeFQDN {
			continue // names, not addresses: nothing the datapath can connect to
		}
		svc := ServiceName{s.Namespace, s.Labels[discoveryv1.LabelServiceName]}
		if b.sliceService == nil {
			b.sliceService = map[objectKey]ServiceName{}
		}
		b.sliceService[objectKey{s.Namespace, s.Name}] = svc
		if !b.present[svc] {
			b.report(report(ReasonUnknownService, fmt.Sprintf(
				"Service %s does not exist; its endpoints are used once it does", svc)))
			continue
		}
		out[svc] = append(out[svc], b.parseSlice(s))
	}
	return out
}

func (b *builder) parseSlice(s *discoveryv1.EndpointSlice) *parsedSlice {
	report := reporter(KindEndpointSlice, s.Namespace, s.Name)
	var weights map[netip.Addr]uint16
	if raw, ok := s.Annotations[BackendWeightsAnnotation]; ok {
		var err error
		if weights, err = parseWeights(raw); err != nil {
			b.report(report(ReasonInvalidAnnotation, fmt.Sprintf(
				"annotation %s: %v; every endpoint of this slice gets weight 1", BackendWeightsAnnotation, err)))
		}
	}
	ps := &parsedSlice{ipv6: s.AddressType == discoveryv1.AddressTypeIPv6, ports: s.Ports}
	family := string(s.AddressType)
	for i, ep := range s.Endpoints {
		// Only the first address counts: the API defines no meaning for the others and
		// kube-proxy ignores them, so using them would send traffic kube-proxy would not.
		if len(ep.Addresses) == 0 {
			b.report(report(ReasonInvalidEndpoint, fmt.Sprintf("endpoints[%d] has no address; it is skipped", i)))
			continue
		}
		addr, err := netip.ParseAddr(ep.Addresses[0])
		if err != nil || addr.Zone() != "" {
			b.report(report(ReasonInvalidEndpoint, fmt.Sprintf(
				"endpoints[%d]: %q is not an IP address; it is skipped", i, ep.Addresses[0])))
			continue
		}
		if addr.Is4() == ps.ipv6 {
			b.report(report(ReasonInvalidEndpoint, fmt.Sprintf(
				"endpoints[%d]: %s is not an %s address, as the slice's addressType says; it is skipped", i, addr, family)))
			continue
		}
		be := endpointBackend(addr, ep, max(weights[addr], 1))
		locate(&be, ep, b.nodeName, b.nodeZone)
		ps.endpoints = append(ps.endpoints, be)
	}
	return ps
}

// endpointBackend applies the EndpointConditions defaults the API documents and
// kube-proxy applies: ready and serving nil are true, terminating nil is false.
func endpointBackend(addr netip.Addr, ep discoveryv1.Endpoint, weight uint16) Backend {
	return Backend{
		Addr:        addr,
		Weight:      weight,
		Ready:       deref(ep.Conditions.Ready, true),
		Serving:     deref(ep.Conditions.Serving, true),
		Terminating: deref(ep.Conditions.Terminating, false),
		NodeName:    deref(ep.NodeName, ""),
	}
}

// backendsFor collects the backends of one frontend from its Service's slices: slices of
// the frontend's family, through the slice port with the Service port's name and
// protocol. An address:port seen twice is kept once, the first copy unless a later one
// is ready and the first is not (a stale slice must not hide a ready endpoint).
func backendsFor(from []*parsedSlice, fe Frontend, portName string) []Backend {
	var out []Backend
	at := map[netip.AddrPort]int{}
	for _, s := range from {
		if s.ipv6 == fe.Addr.Is4() {
			continue
		}
		port, ok := s.port(portName, fe.Protocol)
		if !ok {
			continue
		}
		for _, b := range s.endpoints {
			b.Port = port
			if i, dup := at[b.AddrPort()]; dup {
				if b.Ready && !out[i].Ready {
					out[i] = b
				}
				continue
			}
			at[b.AddrPort()] = len(out)
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b Backend) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// port returns the slice's port for a Service port name and protocol. A slice port
// without a number cannot be connected to and never matches.
func (s *parsedSlice) port(name string, proto Protocol) (uint16, bool) {
	for _, p := range s.ports {
		pp, ok := protocolOf(deref(p.Protocol, corev1.ProtocolTCP))
		if ok && pp == proto && deref(p.Name, "") == name && p.Port != nil {
			return uint16(*p.Port), true
		}
	}
	return 0, false
}

// parseWeights reads the BackendWeightsAnnotation value. Keys are compared as addresses,
// not strings, so "fd00::0001" names the endpoint "fd00::1".
func parseWeights(raw string) (map[netip.Addr]uint16, error) {
	var m map[string]int64
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return nil, fmt.Errorf("want a JSON object of IP to integer weight: %v", err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first bad key reported is always the same one
	out := make(map[netip.Addr]uint16, len(m))
	for _, k := range keys {
		addr, err := netip.ParseAddr(k)
		if err != nil {
			return nil, fmt.Errorf("key %q is not an IP address", k)
		}
		if w := m[k]; w < 1 || w > MaxBackendWeight {
			return nil, fmt.Errorf("weight %d for %s is outside 1..%d", w, k, MaxBackendWeight)
		}
		out[addr] = uint16(m[k])
	}
	return out, nil
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
