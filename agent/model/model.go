// Package model is the agent's single in-memory view of what to program: L4 services
// (one per frontend address, port and protocol), the backends chosen for each, and the
// errors found in the input. Kubernetes semantics are resolved here, once, the way
// kube-proxy resolves them: dual-stack, port names (the same port number on TCP and UDP
// is two services), several EndpointSlices per Service, endpoint conditions and the
// KEP-1669 terminating fallback, session affinity, the service-proxy-name label,
// internalTrafficPolicy Local, and topology hints (trafficDistribution and the
// topology-mode annotation, through the hints the EndpointSlice controller writes). The
// NodePort, LoadBalancer and externalIPs fields are carried, not yet used. Sources write a
// Snapshot, reconcilers only read it. It imports no other package of this module.
package model

import (
	"cmp"
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// Protocol is an IP protocol number, as the datapath sees it.
type Protocol uint8

// Protocols sockmesh load-balances.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ServiceName names a Kubernetes Service.
type ServiceName struct {
	Namespace string
	Name      string
}

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// Frontend is what a client dials: a virtual address, port and protocol. It identifies an
// L4 service in the datapath.
type Frontend struct {
	Addr     netip.Addr
	Port     uint16
	Protocol Protocol
}

func (f Frontend) String() string { return string(f.AppendTo(make([]byte, 0, 64))) }

// AppendTo appends what String returns: address:port/protocol.
func (f Frontend) AppendTo(b []byte) []byte {
	if ap := netip.AddrPortFrom(f.Addr, f.Port); f.Addr.IsValid() {
		b = ap.AppendTo(b)
	} else {
		b = append(b, ap.String()...)
	}
	b = append(b, '/')
	switch f.Protocol {
	case TCP:
		return append(b, "TCP"...)
	case UDP:
		return append(b, "UDP"...)
	}
	return append(b, f.Protocol.String()...)
}

// Backend is one endpoint address and port behind a frontend, with its EndpointSlice
// conditions already defaulted as the API documents them and kube-proxy reads them
// (ready nil = true, serving nil = true, terminating nil = false). Backend is
// comparable: callers compare selections with ==.
type Backend struct {
	Addr        netip.Addr
	Port        uint16
	Weight      uint16 // relative share of new connections, >= 1
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	// Zone is the endpoint's zone (endpoints[].zone). It is carried for display:
	// selection does not read it, as kube-proxy does not (it reads the hints).
	Zone string
	// ForZones and ForNodes are the endpoint's topology hints (hints.forZones,
	// hints.forNodes): the zones and nodes whose clients should use it. The
	// EndpointSlice controller writes them for trafficDistribution and for the
	// topology-mode annotation.
	ForZones Names
	ForNodes Names
	// Where the endpoint is from this node's point of view (Input.NodeName and
	// Input.NodeZone), as Build found it: Local, its NodeName is this node; ForLocalZone,
	// ForZones names this node's zone; ForLocalNode, ForNodes names this node.
	Local        bool
	ForLocalZone bool
	ForLocalNode bool
}

// AddrPort is the backend's socket address.
func (b Backend) AddrPort() netip.AddrPort { return netip.AddrPortFrom(b.Addr, b.Port) }

// Service is one L4 service: a frontend of a Kubernetes Service (one per cluster IP and
// port) and all the endpoints known for it.
type Service struct {
	Name     ServiceName
	PortName string
	Frontend Frontend
	// AffinityTimeout is the ClientIP session affinity timeout; zero means no affinity.
	AffinityTimeout time.Duration
	// L7 services need the node's Envoy: TCP connects to them are redirected there.
	L7 bool
	// AppProtocol is how the node's Envoy reads the connections: as HTTP, or as bytes.
	AppProtocol AppProtocol
	// InternalTrafficPolicy is spec.internalTrafficPolicy: with PolicyLocal only the
	// endpoints on this node take the frontend's connections (see Selected).
	InternalTrafficPolicy TrafficPolicy
	// Kind says how clients reach Frontend. An external one (FromOutside) is a copy of
	// its cluster frontend's Service whose selection follows externalTrafficPolicy.
	Kind FrontendKind
	// External is how the Service port is reached from outside the cluster.
	External External
	// Maglev says an external frontend picks backends by Maglev hashing of the flow
	// (LBAlgorithmAnnotation), not at random.
	Maglev bool
	// Backends holds every known endpoint for this frontend, sorted by address and port,
	// whatever its conditions. Selected says which of them take new connections.
	Backends []Backend
}

// AppProtocol is a service port's application protocol, as far as the proxy cares.
type AppProtocol uint8

// Application protocols, from the port's appProtocol or its name (Istio's "http-web",
// "grpc-api" convention).
const (
	AppOpaque AppProtocol = iota // raw TCP: a TCP proxy, policies see only peers and ports
	AppHTTP                      // HTTP/1.1, and h2c with prior knowledge
	AppHTTP2                     // HTTP/2 only (h2c, gRPC)
)

func (a AppProtocol) String() string {
	return [...]string{"tcp", "http", "http2"}[a]
}

// FromOutside says the frontend is a NodePort, externalIP or LoadBalancer IP, which
// the NodePort datapath serves and the proxy's listeners leave alone.
func (s *Service) FromOutside() bool { return s.Kind != ClusterIPFrontend }

// DisplayName is how logs, errors and the CLI name this L4 service, e.g.
// "default/web:http 10.96.0.10:80/TCP".
func (s *Service) DisplayName() string {
	n := s.Name.String()
	if s.PortName != "" {
		n += ":" + s.PortName
	}
	return n + " " + s.Frontend.String()
}

// ObjectError says why one input object (or a whole input) could not be used.
type ObjectError struct {
	Kind      string // "Service", "EndpointSlice", "File", ...
	Namespace string
	Name      string
	Reason    string // a short machine-friendly class, used as a metric label
	Message   string // the human sentence
}

func (e ObjectError) Error() string {
	obj := e.Kind
	if e.Name != "" {
		obj += " " + e.Namespace + "/" + e.Name
		if e.Namespace == "" {
			obj = e.Kind + " " + e.Name
		}
	}
	return obj + ": " + e.Message
}

// Snapshot is the whole desired state at one moment. Reconcilers treat it as read-only.
type Snapshot struct {
	Services map[Frontend]*Service
	// Policies holds the AuthorizationPolicies that apply to each Service, by policy
	// name order; a service with any is L7.
	Policies map[ServiceName][]*Policy
	// Errors lists the objects that were rejected or only partly used in this snapshot.
	Errors []ObjectError
	// Changed, when set, says that only these frontends may differ from the snapshot
	// this one was rebuilt from (see Rebuild): a reconciler may look at them alone. Nil
	// means anything may have changed.
	Changed map[Frontend]bool

	// built are the errors Build found, by the Service they belong to (an EndpointSlice's
	// are its Service's), so that Rebuild can replace one Service's alone; Errors may
	// have more, appended by the caller.
	built builtErrors
	// frontendsOf lists each Service's frontends in order, for Rebuild.
	frontendsOf map[ServiceName][]Frontend
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot { return &Snapshot{Services: map[Frontend]*Service{}} }

// SortedServices returns the services ordered by frontend, for stable output and for
// deterministic admission when a map is near full.
func (s *Snapshot) SortedServices() []*Service {
	out := make([]*Service, 0, len(s.Services))
	for _, svc := range s.Services {
		out = append(out, svc)
	}
	sort.Slice(out, func(i, j int) bool { return FrontendLess(out[i].Frontend, out[j].Frontend) })
	return out
}

// FrontendLess orders frontends by address, port, then protocol.
func FrontendLess(a, b Frontend) bool { return CompareFrontends(a, b) < 0 }

// CompareFrontends is FrontendLess as a three-way comparison, for slices.SortFunc.
func CompareFrontends(a, b Frontend) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}
