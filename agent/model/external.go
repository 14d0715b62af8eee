package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// FrontendKind says how clients reach a frontend: at a cluster IP, or from outside the
// cluster at a NodePort, an externalIP or a LoadBalancer ingress IP.
type FrontendKind uint8

// Frontend kinds. A Service's external frontends are Services of their own in the
// snapshot (copies of its cluster frontend's, with the frontend and the traffic policy
// changed), so every reconciler programs them the way it programs any frontend.
const (
	ClusterIPFrontend FrontendKind = iota
	NodePortFrontend               // Addr is the family's unspecified address: every node address
	ExternalIPFrontend
	LoadBalancerFrontend
)

func (k FrontendKind) String() string {
	switch k {
	case NodePortFrontend:
		return "NodePort"
	case ExternalIPFrontend:
		return "ExternalIP"
	case LoadBalancerFrontend:
		return "LoadBalancer"
	}
	return "ClusterIP"
}

// NodePortFrontendOf is the frontend of NodePort port for the family of addr.
func NodePortFrontendOf(addr netip.Addr, port uint16, proto Protocol) Frontend {
	any := netip.IPv4Unspecified()
	if addr.Is6() && !addr.Is4In6() {
		any = netip.IPv6Unspecified()
	}
	return Frontend{Addr: any, Port: port, Protocol: proto}
}

// externalFrontend is one frontend from outside and its kind.
type externalFrontend struct {
	fe   Frontend
	kind FrontendKind
}

// externalFrontends lists how outside clients reach cluster frontend fe: its NodePort
// (every node address of fe's family), its externalIPs and LoadBalancer IPs at fe's
// port; an address listed twice counts once.
func externalFrontends(fe Frontend, ext External) []externalFrontend {
	var out []externalFrontend
	if ext.NodePort != 0 {
		out = append(out, externalFrontend{NodePortFrontendOf(fe.Addr, ext.NodePort, fe.Protocol), NodePortFrontend})
	}
	add := func(ips []netip.Addr, kind FrontendKind) {
		for _, ip := range ips {
			x := Frontend{Addr: ip, Port: fe.Port, Protocol: fe.Protocol}
			if !slices.ContainsFunc(out, func(e externalFrontend) bool { return e.fe == x }) {
				out = append(out, externalFrontend{x, kind})
			}
		}
	}
	add(ext.ExternalIPs, ExternalIPFrontend)
	add(ext.LoadBalancerIPs, LoadBalancerFrontend)
	return out
}

// External is how a frontend's Service port is reached from outside the cluster
// network. Build fills it in on the cluster frontend and on its external frontends
// (see FrontendKind). Fields are read as kube-proxy reads them (pkg/proxy/serviceport.go): addresses
// and ranges are those of the frontend's family, in the Service's order.
type External struct {
	// NodePort is spec.ports[].nodePort; 0 for none.
	NodePort uint16
	// ExternalIPs is spec.externalIPs.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the status.loadBalancer.ingress[].ip addresses in VIP mode
	// (ipMode unset or VIP); Proxy-mode and hostname-only entries are left out.
	LoadBalancerIPs []netip.Addr
	// SourceRanges is spec.loadBalancerSourceRanges, masked; empty when it is empty or
	// holds a /0, both meaning every source is allowed.
	SourceRanges []netip.Prefix
	// TrafficPolicy is spec.externalTrafficPolicy; Local only for a Service reachable
	// from outside (NodePort, LoadBalancer, or ClusterIP with externalIPs).
	TrafficPolicy TrafficPolicy
	// HealthCheckNodePort is spec.healthCheckNodePort of a LoadBalancer Service whose
	// TrafficPolicy is Local; else 0.
	HealthCheckNodePort uint16
}

// externalSpec is a Service's external fields read once, for every frontend.
type externalSpec struct {
	ips, lbIPs   []netip.Addr
	ranges       []netip.Prefix
	policy       TrafficPolicy
	healthCheck  uint16
	nodePortByIx []uint16 // by spec.ports index
}

// readExternal reads the Service's external fields and reports, once, those that cannot
// be read (the API server would not have accepted them); they are left out.
func (b *builder) readExternal(svc *corev1.Service, report func(reason, msg string) ObjectError) externalSpec {
	var e externalSpec
	spec := &svc.Spec
	for i, p := range spec.Ports {
		np := uint16(0)
		if p.NodePort < 0 || p.NodePort > 65535 {
			b.report(report(ReasonInvalidPort, fmt.Sprintf(
				"spec.ports[%d].nodePort %d is outside 1..65535; it is left out", i, p.NodePort)))
		} else {
			np = uint16(p.NodePort)
		}
		e.nodePortByIx = append(e.nodePortByIx, np)
	}
	for i, s := range spec.ExternalIPs {
		if ip, ok := b.readExternalAddr(s, fmt.Sprintf("spec.externalIPs[%d]", i), report); ok {
			e.ips = append(e.ips, ip)
		}
	}
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || deref(ing.IPMode, corev1.LoadBalancerIPModeVIP) != corev1.LoadBalancerIPModeVIP {
			continue // a hostname, or a load balancer that proxies rather than forwards
		}
		if ip, ok := b.readExternalAddr(ing.IP, fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), report); ok {
			e.lbIPs = append(e.lbIPs, ip)
		}
	}
	for i, s := range spec.LoadBalancerSourceRanges {
		// The API's validation lets whitespace around a range through; kube-proxy trims it.
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || p.Addr().Zone() != "" {
			b.report(report(ReasonInvalidExternalAddress, fmt.Sprintf(
				"spec.loadBalancerSourceRanges[%d] %q is not a CIDR; it is left out", i, clip(s))))
			continue
		}
		e.ranges = append(e.ranges, p.Masked())
	}
	reachable := spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer ||
		(spec.Type == corev1.ServiceTypeClusterIP || spec.Type == "") && len(spec.ExternalIPs) > 0
	if reachable && spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		e.policy = PolicyLocal
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer && e.policy == PolicyLocal {
		if spec.HealthCheckNodePort < 0 || spec.HealthCheckNodePort > 65535 {
			b.report(report(ReasonInvalidPort, fmt.Sprintf(
				"spec.healthCheckNodePort %d is outside 1..65535; it is left out", spec.HealthCheckNodePort)))
		} else {
			e.healthCheck = uint16(spec.HealthCheckNodePort)
		}
	}
	return e
}

func (b *builder) readExternalAddr(s, field string, report func(reason, msg string) ObjectError) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		b.report(report(ReasonInvalidExternalAddress, fmt.Sprintf("%s %q is not an IP address; it is left out", field, clip(s))))
		return netip.Addr{}, false
	}
	return ip, true
}

// forFrontend is what frontend fe, of spec.ports[portIx], carries: the addresses and
// ranges of its family.
func (e *externalSpec) forFrontend(fe Frontend, portIx int) External {
	sameFamily := func(a netip.Addr) bool { return a.Is4() == fe.Addr.Is4() }
	ranges := filter(e.ranges, func(p netip.Prefix) bool { return sameFamily(p.Addr()) })
	if slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Bits() == 0 }) {
		ranges = nil // a /0 allows every source, as no range at all does
	}
	return External{
		NodePort:            e.nodePortByIx[portIx],
		ExternalIPs:         filter(e.ips, sameFamily),
		LoadBalancerIPs:     filter(e.lbIPs, sameFamily),
		SourceRanges:        ranges,
		TrafficPolicy:       e.policy,
		HealthCheckNodePort: e.healthCheck,
	}
}

// filter returns the elements keep accepts, in a new slice; nil when there are none.
func filter[T any](in []T, keep func(T) bool) []T {
	var out []T
	for _, v := range in {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// PortRange is an inclusive range of ports, such as the NodePort range.
type PortRange struct{ Min, Max uint16 }

// DefaultNodePortRange is kube-apiserver's --service-node-port-range default.
var DefaultNodePortRange = PortRange{30000, 32767}

func (r PortRange) orDefault() PortRange {
	if r == (PortRange{}) {
		return DefaultNodePortRange
	}
	return r
}

func (r PortRange) contains(p uint16) bool {
	r = r.orDefault()
	return p >= r.Min && p <= r.Max
}

func (r PortRange) String() string {
	r = r.orDefault()
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}

// LBAlgorithmAnnotation picks how the NodePort datapath chooses a Service's backend
// for a new flow from outside: "random" (the default) or "maglev", a consistent hash of
// the flow that every node computes alike, so a flow keeps its backend whichever node
// it enters (Cilium's service.cilium.io/lb-algorithm, under our prefix).
const LBAlgorithmAnnotation = "sockmesh.io/lb-algorithm"

// readLBAlgorithm reads LBAlgorithmAnnotation; another value is reported and random used.
func (b *builder) readLBAlgorithm(svc *corev1.Service, report func(reason, msg string) ObjectError) bool {
	switch v, ok := svc.Annotations[LBAlgorithmAnnotation]; {
	case !ok || v == "random":
		return false
	case v == "maglev":
		return true
	default:
		b.report(report(ReasonInvalidAnnotation, fmt.Sprintf(
			"annotation %s=%q: want \"random\" or \"maglev\"; random is used", LBAlgorithmAnnotation, clip(v))))
		return false
	}
}
