package model

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Which backends take a frontend's connections, decided as kube-proxy v1.37 decides it
// for cluster IP traffic (pkg/proxy/topology.go CategorizeEndpoints, the traffic policy
// read as in pkg/proxy/serviceport.go, endpoints as in pkg/proxy/endpointslicecache.go).

// ServiceProxyNameLabel on a Service names the service proxy meant to implement it.
// kube-proxy does not watch Services that carry it, whatever its value.
const ServiceProxyNameLabel = "service.kubernetes.io/service-proxy-name"

// ProxiedBy reports whether the proxy named proxyName (Input.ProxyName) implements svc:
// a Service without ServiceProxyNameLabel, or one whose label value is proxyName. With
// an empty proxyName it is only the Services without the label, as for kube-proxy: a
// label with an empty value still names another proxy.
func ProxiedBy(svc *corev1.Service, proxyName string) bool {
	v, labeled := svc.Labels[ServiceProxyNameLabel]
	return !labeled || (proxyName != "" && v == proxyName)
}

// TrafficPolicy is a Service's internal or external traffic policy.
type TrafficPolicy uint8

// Traffic policies.
const (
	PolicyCluster TrafficPolicy = iota // every usable endpoint of the Service
	PolicyLocal                        // only the usable endpoints on this node
)

func (p TrafficPolicy) String() string {
	if p == PolicyLocal {
		return "Local"
	}
	return "Cluster"
}

// internalTrafficPolicy reads spec.internalTrafficPolicy: Local only when it says
// exactly "Local"; unset and any other value are Cluster.
func internalTrafficPolicy(spec *corev1.ServiceSpec) TrafficPolicy {
	if deref(spec.InternalTrafficPolicy, "") == corev1.ServiceInternalTrafficPolicyLocal {
		return PolicyLocal
	}
	return PolicyCluster
}

// Names is a set of zone or node names held in one comparable value, so that Backend
// stays comparable: the names in sorted order without repeats, each followed by ",".
// The empty string is the empty set. Zone and node names cannot contain ",".
type Names string

// NamesOf returns the set of the given names.
func NamesOf(names ...string) Names {
	if len(names) == 0 {
		return ""
	}
	sorted := slices.Compact(slices.Sorted(slices.Values(names)))
	return Names(strings.Join(sorted, ",") + ",")
}

// List returns the names, sorted; nil for the empty set.
func (n Names) List() []string {
	if n == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(n), ","), ",")
}

// String is the names separated by commas, for display.
func (n Names) String() string { return strings.TrimSuffix(string(n), ",") }

// locate fills in the endpoint's topology fields: its zone and hints, and where it is
// from this node's point of view. As in kube-proxy, an endpoint is local only when this
// node has a name and the endpoint names the same node.
func locate(b *Backend, ep discoveryv1.Endpoint, nodeName, nodeZone string) {
	b.Zone = deref(ep.Zone, "")
	b.Local = nodeName != "" && b.NodeName == nodeName
	if ep.Hints == nil {
		return
	}
	zones := make([]string, len(ep.Hints.ForZones))
	for i, z := range ep.Hints.ForZones {
		zones[i] = z.Name
		b.ForLocalZone = b.ForLocalZone || z.Name == nodeZone
	}
	nodes := make([]string, len(ep.Hints.ForNodes))
	for i, n := range ep.Hints.ForNodes {
		nodes[i] = n.Name
		b.ForLocalNode = b.ForLocalNode || n.Name == nodeName
	}
	b.ForZones, b.ForNodes = NamesOf(zones...), NamesOf(nodes...)
}

// topology is which hints a selection follows.
type topology uint8

const (
	anyTopology topology = iota // no hints: every endpoint
	sameNode                    // only the endpoints hinted for this node
	sameZone                    // only the endpoints hinted for this node's zone
)

// topologyOf decides, from the ready endpoints' hints, which topology the selection
// follows: this node's hints when every ready endpoint has node hints and one is for
// this node; else this zone's when every ready endpoint has zone hints and one is for
// this node's zone; else none. (The hints fall back as a whole, never per endpoint.)
func topologyOf(backends []Backend) topology {
	ready, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, b := range backends {
		if !b.Ready {
			continue
		}
		ready = true
		if b.ForNodes == "" {
			allNode = false
		} else if b.ForLocalNode {
			forNode = true
		}
		if b.ForZones == "" {
			allZone = false
		} else if b.ForLocalZone {
			forZone = true
		}
	}
	switch {
	case !ready:
		return anyTopology
	case allNode && forNode:
		return sameNode
	case allZone && forZone:
		return sameZone
	}
	return anyTopology
}

func (t topology) admits(b Backend) bool {
	switch t {
	case sameNode:
		return b.ForLocalNode
	case sameZone:
		return b.ForLocalZone
	}
	return true
}

// Selected returns the backends that take new connections to the frontend, as kube-proxy
// picks them for cluster IP traffic:
//   - internalTrafficPolicy Cluster: the ready endpoints, only those hinted for this
//     node (or else this node's zone) when the hints allow it (see topologyOf); when no
//     endpoint is ready anywhere, the serving and terminating ones (KEP-1669), hints
//     aside;
//   - internalTrafficPolicy Local: the ready endpoints on this node; when none is, the
//     serving and terminating ones on this node; hints do not apply, and there is never
//     a fallback to other nodes: with no local endpoint the frontend has no backend.
//
// It is the one selection function: the LB maps and the node's Envoy both use it.
func (s *Service) Selected() []Backend { return s.AppendSelected(nil) }

// AppendSelected appends Selected() to dst, in Backends order, without allocating when
// dst has room: for callers that compare selections of many services.
func (s *Service) AppendSelected(dst []Backend) []Backend {
	n := len(dst)
	local := s.InternalTrafficPolicy == PolicyLocal
	topo := anyTopology
	if !local {
		topo = topologyOf(s.Backends)
	}
	for _, b := range s.Backends {
		if b.Ready && (b.Local || !local) && topo.admits(b) {
			dst = append(dst, b)
		}
	}
	if len(dst) > n {
		return dst
	}
	for _, b := range s.Backends {
		if b.Serving && b.Terminating && (b.Local || !local) {
			dst = append(dst, b)
		}
	}
	return dst
}
