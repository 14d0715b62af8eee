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
// pure: every problem becomes an ObjectError in the snapshot, a rejected object is left
// out, and all other objects are used as if it were not there. An EndpointSlice whose
// Service is missing is reported and left out, and is used by the next Build that sees
// the Service. The inputs are not modified; nil entries are ignored.
func Build(services []*corev1.Service, slices []*discoveryv1.EndpointSlice) *Snapshot {
	return BuildAll(Input{Services: services, EndpointSlices: slices})
}

// Input is every object kind the model is built from.
type Input struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Pods           []*corev1.Pod
	Policies       []*AuthorizationPolicy
}

// BuildAll is Build with pods and AuthorizationPolicies: policies are resolved against
// the pods (for peer identities) and attached to the services they target.
func BuildAll(in Input) *Snapshot {
	b := &builder{snap: NewSnapshot()}
	svcs := b.acceptServices(in.Services)
	bySvc := b.indexSlices(in.EndpointSlices)
	for _, svc := range svcs {
		b.addService(svc, bySvc[ServiceName{svc.Namespace, svc.Name}])
	}
	b.resolvePolicies(in.Pods, in.Policies)
	// Errors are sorted per object so that two Builds of the same input compare equal
	// and logs and metrics do not flap; within one object they keep their field order.
	sortErrors(b.snap.Errors)
	return b.snap
}

type builder struct {
	snap *Snapshot
	// present holds every Service name in the input, valid or not: a slice of a rejected
	// Service is not "unknown", its Service's own error already explains it.
	present map[ServiceName]bool
}

func (b *builder) report(errs ...ObjectError) { b.snap.Errors = append(b.snap.Errors, errs...) }

// acceptServices returns the valid, load-balanced Services in name order (so that a
// frontend claimed by two Services deterministically goes to the first).
func (b *builder) acceptServices(in []*corev1.Service) []*corev1.Service {
	sorted := sortedObjects(in, func(s *corev1.Service) (string, string) { return s.Namespace, s.Name })
	b.present = map[ServiceName]bool{}
	var out []*corev1.Service
	for _, svc := range sorted {
		name := ServiceName{svc.Namespace, svc.Name}
		if b.present[name] {
			b.report(reporter(KindService, svc.Namespace, svc.Name)(ReasonDuplicateObject,
				"the input holds this Service twice; only the first copy is used"))
			continue
		}
		b.present[name] = true
		if errs := ValidateService(svc); len(errs) > 0 {
			b.report(errs...)
			continue
		}
		out = append(out, svc)
	}
	return out
}

// addService adds one Service's frontends. It assumes svc passed ValidateService.
func (b *builder) addService(svc *corev1.Service, slices []*parsedSlice) {
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
	l7 := b.needsL7(svc, report)
	for i, port := range svc.Spec.Ports {
		proto, ok := protocolOf(port.Protocol)
		if !ok {
			b.report(report(ReasonUnsupportedProtocol, fmt.Sprintf(
				"spec.ports[%d] (%d/%s): protocol %s is not load-balanced; this port is left out",
				i, port.Port, port.Protocol, port.Protocol)))
			continue
		}
		for _, ip := range ips {
			fe := Frontend{Addr: ip, Port: uint16(port.Port), Protocol: proto}
			if other, taken := b.snap.Services[fe]; taken {
				b.report(report(ReasonDuplicateFrontend, fmt.Sprintf(
					"frontend %s is already used by Service %s; this port is left out", fe, other.Name)))
				continue
			}
			b.snap.Services[fe] = &Service{
				Name:            name,
				PortName:        port.Name,
				Frontend:        fe,
				AffinityTimeout: timeout,
				L7:              l7,
				AppProtocol:     appProtocolOf(port),
				Backends:        backendsFor(slices, fe, port.Name),
			}
		}
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

// L7Annotation marks a Service whose TCP connections must go through the node's Envoy.
const L7Annotation = "sockmesh.io/l7"

// needsL7 reads L7Annotation. A value other than "true" or "false" is reported and read
// as "true": a misspelt request for policy must fail closed, not bypass the proxy.
func (b *builder) needsL7(svc *corev1.Service, report func(reason, msg string) ObjectError) bool {
	v, ok := svc.Annotations[L7Annotation]
	switch {
	case !ok || v == "false":
		return false
	case v == "true":
		return true
	}
	b.report(report(ReasonInvalidAnnotation, fmt.Sprintf(
		"annotation %s=%q: want \"true\" or \"false\"; treating it as \"true\" so traffic is not let past the proxy", L7Annotation, v)))
	return true
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
