package model

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Build resolves Kubernetes Services and EndpointSlices into a Snapshot: one Service per
// cluster IP, port and protocol, with the backends of the matching EndpointSlices. It is
// pure. Its input must be accepted already (each object valid by the Validate
// functions and present once, which agent/source's Store guarantees); problems that only
// degrade an object (an SCTP port, a bad endpoint address) become ObjectErrors in the
// snapshot. An EndpointSlice whose Service is missing is reported and left out, and is
// used by the next Build that sees the Service. The inputs are not modified; nil entries
// are ignored.
func Build(services []*corev1.Service, slices []*discoveryv1.EndpointSlice) *Snapshot {
	return BuildAll(Input{Services: services, EndpointSlices: slices})
}

// Input is every object kind the model is built from, accepted already.
type Input struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Pods           []*corev1.Pod
	Policies       []*AuthorizationPolicy
	// RejectedServices are Services in the source's input that were not accepted (and
	// have no older version in use): their slices are not "unknown", the Service's own
	// error explains them.
	RejectedServices map[ServiceName]bool
	// Holders says which Service held each frontend before this input: a frontend two
	// Services claim stays with its holder, and the newcomer is the one rejected.
	Holders map[Frontend]ServiceName

	// NodeName is this node's name, as endpoints[].nodeName and hints.forNodes spell
	// it: endpoints on it are local (internalTrafficPolicy Local, same-node hints).
	// Empty means no endpoint is local, as for kube-proxy without a node name.
	NodeName string
	// NodeZone is this node's topology.kubernetes.io/zone label, matched against
	// hints.forZones; empty for a node without the label.
	NodeZone string
	// ProxyName is the service-proxy-name this agent answers to: Services labelled
	// ServiceProxyNameLabel with another value (or any value, when ProxyName is empty)
	// are another proxy's and are skipped (see ProxiedBy).
	ProxyName string
	// NodePortRange is the NodePort range this node serves (--node-port-range); a
	// NodePort outside it is reported and not served. Zero means kube's default.
	NodePortRange PortRange
}

// BuildAll is Build with pods and AuthorizationPolicies: policies are resolved against
// the pods (for peer identities) and attached to the services they target.
func BuildAll(in Input) *Snapshot {
	b := &builder{snap: NewSnapshot(), annotatedL7: map[ServiceName]bool{}, nodeName: in.NodeName, nodeZone: in.NodeZone, nodePorts: in.NodePortRange}
	svcs := sortedObjects(in.Services, func(s *corev1.Service) (string, string) { return s.Namespace, s.Name })
	b.present = map[ServiceName]bool{}
	for _, svc := range svcs {
		b.present[ServiceName{svc.Namespace, svc.Name}] = true
	}
	// Another proxy's Services are skipped silently, with their slices: they claim no
	// frontend and are reported for nothing.
	svcs = slices.DeleteFunc(svcs, func(s *corev1.Service) bool { return !ProxiedBy(s, in.ProxyName) })
	for name := range in.RejectedServices {
		b.present[name] = true
	}
	owners := frontendOwners(svcs, in.Holders)
	bySvc := b.indexSlices(in.EndpointSlices)
	for _, svc := range svcs {
		b.addService(svc, bySvc[ServiceName{svc.Namespace, svc.Name}], owners)
	}
	b.resolvePolicies(in.Pods, in.Policies)
	b.decideL7()
	b.snap.built = b.groupErrors()
	b.snap.Errors = b.snap.built.all()
	b.snap.indexFrontends()
	return b.snap
}

type builder struct {
	snap *Snapshot
	// present holds every Service name in the input, accepted or not: a slice of a
	// rejected Service is not "unknown", its Service's own error already explains it.
	present map[ServiceName]bool
	// annotatedL7 holds the Services whose L7Annotation asks for the proxy.
	annotatedL7 map[ServiceName]bool
	// nodeName and nodeZone are Input.NodeName and Input.NodeZone.
	nodeName, nodeZone string
	// sliceService says which Service each EndpointSlice belongs to, for its errors.
	sliceService map[objectKey]ServiceName
	// nodePorts is Input.NodePortRange.
	nodePorts PortRange
}

func (b *builder) report(errs ...ObjectError) { b.snap.Errors = append(b.snap.Errors, errs...) }

// frontendOwners decides, for every frontend that Services claim, which one gets it: the
// Service that held it before, if it still claims it; else the oldest claimant (by
// creationTimestamp, then name), as the API server's IP allocator would have refused
// the later one.
func frontendOwners(svcs []*corev1.Service, holders map[Frontend]ServiceName) map[Frontend]ServiceName {
	byAge := slices.Clone(svcs)
	slices.SortStableFunc(byAge, func(a, b *corev1.Service) int {
		// An object without a creationTimestamp (typical of files) has no age to claim.
		at, bt := a.CreationTimestamp, b.CreationTimestamp
		return cmp.Or(cmp.Compare(boolRank(at.IsZero()), boolRank(bt.IsZero())), at.Compare(bt.Time))
	})
	owners := map[Frontend]ServiceName{}
	for _, svc := range byAge {
		name := ServiceName{svc.Namespace, svc.Name}
		for _, fe := range claimedFrontends(svc) {
			if _, taken := owners[fe]; !taken || holders[fe] == name {
				owners[fe] = name
			}
		}
	}
	return owners
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// claimedFrontends lists the frontends a Service asks for.
func claimedFrontends(svc *corev1.Service) []Frontend {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ips, headless, _ := clusterIPs(&svc.Spec)
	if headless {
		return nil
	}
	// The fields are read as addService reads them; a claim reports nothing (a
	// throwaway builder takes the reports), addService does.
	external := (&builder{snap: &Snapshot{}}).readExternal(svc, reporter(KindService, svc.Namespace, svc.Name))
	var out []Frontend
	for i, port := range svc.Spec.Ports {
		proto, ok := protocolOf(port.Protocol)
		if !ok || port.Port < 1 || port.Port > 65535 {
			continue
		}
		for _, ip := range ips {
			fe := Frontend{Addr: ip, Port: uint16(port.Port), Protocol: proto}
			out = append(out, fe)
			for _, x := range externalFrontends(fe, external.forFrontend(fe, i)) {
				out = append(out, x.fe)
			}
		}
	}
	return out
}

// addService adds one Service's frontends, those it owns.
func (b *builder) addService(svc *corev1.Service, slices []*parsedSlice, owners map[Frontend]ServiceName) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return // a DNS alias, nothing to load-balance
	}
	ips, headless, _ := clusterIPs(&svc.Spec)
	if headless {
		return // clients reach the endpoints directly, by DNS
	}
	name := ServiceName{svc.Namespace, svc.Name}
	report := reporter(KindService, svc.Namespace, svc.Name)
	timeout, _ := affinityTimeout(&svc.Spec)
	policy := internalTrafficPolicy(&svc.Spec)
	external := b.readExternal(svc, report)
	maglev := b.readLBAlgorithm(svc, report)
	b.annotatedL7[name] = b.readL7Annotation(svc, report)
	for i, port := range svc.Spec.Ports {
		proto, ok := protocolOf(port.Protocol)
		if port.Port < 1 || port.Port > 65535 {
			continue // not accepted by ValidateService; never truncated into another port
		}
		if !ok {
			b.report(report(ReasonUnsupportedProtocol, fmt.Sprintf(
				"spec.ports[%d] (%d/%s): protocol %s is not load-balanced; this port is left out",
				i, port.Port, port.Protocol, port.Protocol)))
			continue
		}
		for _, ip := range ips {
			fe := Frontend{Addr: ip, Port: uint16(port.Port), Protocol: proto}
			if owner := owners[fe]; owner != name {
				b.report(report(ReasonDuplicateFrontend, fmt.Sprintf(
					"frontend %s is held by Service %s; this port is left out until that Service lets it go", fe, owner)))
				continue
			}
			b.snap.Services[fe] = &Service{
				Name:                  name,
				PortName:              port.Name,
				Frontend:              fe,
				AffinityTimeout:       timeout,
				AppProtocol:           appProtocolOf(port),
				InternalTrafficPolicy: policy,
				External:              external.forFrontend(fe, i),
				Backends:              backendsFor(slices, fe, port.Name),
			}
			b.addExternal(b.snap.Services[fe], i, name, owners, maglev, report)
		}
	}
}

// addExternal adds the frontends outside clients reach cluster service svc at, of
// spec.ports[portIx], those the Service owns: each a copy of svc whose endpoints are
// picked by externalTrafficPolicy.
func (b *builder) addExternal(svc *Service, portIx int, name ServiceName, owners map[Frontend]ServiceName, maglev bool, report func(reason, msg string) ObjectError) {
	for _, x := range externalFrontends(svc.Frontend, svc.External) {
		if x.kind == NodePortFrontend && !b.nodePorts.contains(x.fe.Port) {
			b.report(report(ReasonNodePortOutOfRange, fmt.Sprintf(
				"spec.ports[%d].nodePort %d is outside this node's NodePort range %s; that NodePort is not served",
				portIx, x.fe.Port, b.nodePorts)))
			continue
		}
		if owner := owners[x.fe]; owner != name {
			b.report(report(ReasonDuplicateFrontend, fmt.Sprintf(
				"%s frontend %s is held by Service %s; it is left out until that Service lets it go", x.kind, x.fe, owner)))
			continue
		}
		if _, taken := b.snap.Services[x.fe]; taken {
			continue // the same address listed for two ports of one family
		}
		cp := *svc
		cp.Frontend, cp.Kind, cp.InternalTrafficPolicy, cp.Maglev = x.fe, x.kind, svc.External.TrafficPolicy, maglev
		b.snap.Services[x.fe] = &cp
	}
}

// appProtocolOf reads the port's appProtocol, or else the protocol its name starts with
// ("http-web", "grpc"), the way Istio selects protocols.
func appProtocolOf(port corev1.ServicePort) AppProtocol {
	p := ""
	if port.AppProtocol != nil {
		p = strings.ToLower(*port.AppProtocol)
	} else {
		p, _, _ = strings.Cut(strings.ToLower(port.Name), "-")
		if strings.HasPrefix(strings.ToLower(port.Name), "grpc-web") {
			p = "grpc-web"
		}
	}
	switch p {
	case "http", "grpc-web", "kubernetes.io/ws":
		return AppHTTP
	case "http2", "h2c", "grpc", "kubernetes.io/h2c":
		return AppHTTP2
	}
	return AppOpaque
}

// sortedObjects returns the non-nil objects ordered by namespace and name, without
// touching the caller's slice.
func sortedObjects[T any](in []*T, key func(*T) (string, string)) []*T {
	out := make([]*T, 0, len(in))
	for _, o := range in {
		if o != nil {
			out = append(out, o)
		}
	}
	slices.SortStableFunc(out, func(a, b *T) int {
		an, aa := key(a)
		bn, bb := key(b)
		return cmp.Or(cmp.Compare(an, bn), cmp.Compare(aa, bb))
	})
	return out
}

func sortErrors(errs []ObjectError) {
	slices.SortStableFunc(errs, func(a, b ObjectError) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}
