package model

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Kinds named in ObjectError.Kind.
const (
	KindService       = "Service"
	KindEndpointSlice = "EndpointSlice"
)

// Reasons carried in ObjectError.Reason. They are metric label values and part of the
// user's interface, so they are spelled once here and never renamed.
const (
	ReasonMissingName         = "missing_name"
	ReasonInvalidName         = "invalid_name"
	ReasonUnsupportedType     = "unsupported_type"
	ReasonInvalidClusterIP    = "invalid_cluster_ip"
	ReasonInvalidPort         = "invalid_port"
	ReasonDuplicatePort       = "duplicate_port"
	ReasonUnsupportedProtocol = "unsupported_protocol"
	ReasonInvalidAffinity     = "invalid_affinity"
	ReasonMissingServiceLabel = "missing_service_label"
	ReasonInvalidAddressType  = "invalid_address_type"
	ReasonUnknownService      = "unknown_service"
	ReasonInvalidEndpoint     = "invalid_endpoint"
	ReasonInvalidAnnotation   = "invalid_annotation"
	ReasonDuplicateObject     = "duplicate_object"
	ReasonDuplicateFrontend   = "duplicate_frontend"
	// ReasonInvalidExternalAddress is an externalIP, load balancer IP or source range
	// that is not an address or CIDR (carried for NodePort support, see External).
	ReasonInvalidExternalAddress = "invalid_external_address"
	ReasonNodePortOutOfRange     = "node_port_out_of_range"
)

// Session affinity bounds, as the Kubernetes API server enforces them. The maximum is
// not exported by k8s.io/api, hence spelled here.
const (
	DefaultAffinityTimeout = time.Duration(corev1.DefaultClientIPServiceAffinitySeconds) * time.Second
	maxAffinitySeconds     = 86400
)

// The Validate functions are the one place that decides whether an object is accepted;
// sources call them once per object version (agent/source's Store), and Build trusts
// what it is given. Names follow the API server's rules, so that nothing a cluster could
// not hold is programmed, and so that names map one-to-one onto xDS resource names
// (NAME.NAMESPACE.svc.cluster.local is unambiguous only while neither part has a dot).

// ValidateService checks what can be checked on the Service alone (no cross-references).
// A non-empty result means this version of the object must not be used at all; problems
// that only drop a part of it (an SCTP port) are reported by Build instead, so that a
// source keeping "the last good version" does not hold on to an older one for them.
// ExternalName Services are not load-balanced and are not checked beyond their name.
func ValidateService(svc *corev1.Service) []ObjectError {
	if svc == nil {
		return nil
	}
	report := reporter(KindService, svc.Namespace, svc.Name)
	errs := validateName(svc.Namespace, svc.Name, validation.IsDNS1035Label, report)
	switch svc.Spec.Type {
	case corev1.ServiceTypeExternalName:
		return errs
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	default:
		errs = append(errs, report(ReasonUnsupportedType,
			fmt.Sprintf("spec.type %q is not ClusterIP, NodePort, LoadBalancer or ExternalName", svc.Spec.Type)))
	}
	_, _, ipErrs := clusterIPs(&svc.Spec)
	for _, msg := range ipErrs {
		errs = append(errs, report(ReasonInvalidClusterIP, msg))
	}
	errs = append(errs, validateServicePorts(svc.Spec.Ports, report)...)
	if _, msg := affinityTimeout(&svc.Spec); msg != "" {
		errs = append(errs, report(ReasonInvalidAffinity, msg))
	}
	return errs
}

func validateServicePorts(ports []corev1.ServicePort, report func(reason, msg string) ObjectError) []ObjectError {
	type portProto struct {
		port  int32
		proto corev1.Protocol
	}
	var errs []ObjectError
	byPort := map[portProto]int{}
	byName := map[string]int{}
	for i, p := range ports {
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, report(ReasonInvalidPort,
				fmt.Sprintf("spec.ports[%d]: port %d is outside 1..65535", i, p.Port)))
			continue
		}
		key := portProto{p.Port, defaultProtocol(p.Protocol)}
		if j, dup := byPort[key]; dup {
			errs = append(errs, report(ReasonDuplicatePort,
				fmt.Sprintf("spec.ports[%d]: %d/%s repeats spec.ports[%d]", i, key.port, key.proto, j)))
			continue
		}
		byPort[key] = i
		// Endpoints are matched to Service ports by name, so two ports with one name would
		// get each other's backends.
		if j, dup := byName[p.Name]; dup {
			errs = append(errs, report(ReasonDuplicatePort,
				fmt.Sprintf("spec.ports[%d]: name %q is already used by spec.ports[%d]", i, p.Name, j)))
			continue
		}
		byName[p.Name] = i
	}
	return errs
}

// ValidateEndpointSlice checks what can be checked on the EndpointSlice alone. As with
// ValidateService, a non-empty result rejects this version of the object; a bad endpoint
// address or a bad weight annotation only degrades it and is reported by Build.
func ValidateEndpointSlice(slice *discoveryv1.EndpointSlice) []ObjectError {
	if slice == nil {
		return nil
	}
	report := reporter(KindEndpointSlice, slice.Namespace, slice.Name)
	errs := validateName(slice.Namespace, slice.Name, validation.IsDNS1123Subdomain, report)
	switch svc := slice.Labels[discoveryv1.LabelServiceName]; {
	case svc == "":
		errs = append(errs, report(ReasonMissingServiceLabel,
			"label "+discoveryv1.LabelServiceName+" is missing, so it belongs to no Service"))
	case len(validation.IsDNS1035Label(svc)) > 0:
		errs = append(errs, report(ReasonMissingServiceLabel, fmt.Sprintf(
			"label %s=%q is not a Service name (%s), so it belongs to no Service",
			discoveryv1.LabelServiceName, svc, strings.Join(validation.IsDNS1035Label(svc), "; "))))
	}
	switch slice.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	default:
		errs = append(errs, report(ReasonInvalidAddressType,
			fmt.Sprintf("addressType %q is not IPv4, IPv6 or FQDN", slice.AddressType)))
	}
	for i, p := range slice.Ports {
		if p.Port != nil && (*p.Port < 1 || *p.Port > 65535) {
			errs = append(errs, report(ReasonInvalidPort,
				fmt.Sprintf("ports[%d]: port %d is outside 1..65535", i, *p.Port)))
		}
	}
	return errs
}

// ValidatePod checks a pod's name; its addresses only degrade it and Build reports them.
func ValidatePod(pod *corev1.Pod) []ObjectError {
	if pod == nil {
		return nil
	}
	return validateName(pod.Namespace, pod.Name, validation.IsDNS1123Subdomain, reporter(KindPod, pod.Namespace, pod.Name))
}

// ValidatePolicyName checks an AuthorizationPolicy's name. Its spec is not validated
// here: a policy is never kept at an older version, since its newest intent may be
// stricter; Build rejects a bad spec and fails closed instead.
func ValidatePolicyName(p *AuthorizationPolicy) []ObjectError {
	if p == nil {
		return nil
	}
	return validateName(p.Namespace, p.Name, validation.IsDNS1123Subdomain,
		reporter(KindAuthorizationPolicy, p.Namespace, p.Name))
}

// validateName applies the API server's rules: the namespace is a DNS-1123 label, the
// name whatever the kind asks for.
func validateName(namespace, name string, rule func(string) []string, report func(reason, msg string) ObjectError) []ObjectError {
	var errs []ObjectError
	if name == "" {
		errs = append(errs, report(ReasonMissingName, "metadata.name is empty"))
	} else if msgs := rule(name); len(msgs) > 0 {
		errs = append(errs, report(ReasonInvalidName, fmt.Sprintf("metadata.name %q: %s", clip(name), strings.Join(msgs, "; "))))
	}
	if msgs := validation.IsDNS1123Label(namespace); len(msgs) > 0 {
		errs = append(errs, report(ReasonInvalidName, fmt.Sprintf("metadata.namespace %q: %s", clip(namespace), strings.Join(msgs, "; "))))
	}
	return errs
}

// clip keeps a hostile name from filling a log line.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// clusterIPs returns the Service's virtual addresses (spec.clusterIPs, or spec.clusterIP
// for objects written before dual-stack), whether it is headless, and what is wrong with
// them. Shared by validation and Build so both read the fields the same way.
func clusterIPs(spec *corev1.ServiceSpec) (ips []netip.Addr, headless bool, errs []string) {
	raw := spec.ClusterIPs
	if len(raw) == 0 && spec.ClusterIP != "" {
		raw = []string{spec.ClusterIP}
	}
	if len(raw) > 0 && spec.ClusterIP != "" && spec.ClusterIP != raw[0] {
		errs = append(errs, fmt.Sprintf("spec.clusterIP %q differs from spec.clusterIPs[0] %q", spec.ClusterIP, raw[0]))
	}
	for i, s := range raw {
		if s == corev1.ClusterIPNone {
			headless = true
			if len(raw) > 1 {
				errs = append(errs, fmt.Sprintf("spec.clusterIPs[%d] is %q, which must be the only entry", i, s))
			}
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			errs = append(errs, fmt.Sprintf("spec.clusterIPs[%d] %q is not an IP address", i, s))
			continue
		}
		for _, prev := range ips {
			if prev.Is4() == ip.Is4() {
				errs = append(errs, fmt.Sprintf("spec.clusterIPs has two addresses of one family (%s, %s)", prev, ip))
			}
		}
		ips = append(ips, ip)
	}
	if len(raw) > 2 {
		errs = append(errs, fmt.Sprintf("spec.clusterIPs has %d entries, at most one per family is allowed", len(raw)))
	}
	return ips, headless, errs
}

// affinityTimeout returns the ClientIP affinity timeout (zero for no affinity) or why the
// affinity settings are invalid.
func affinityTimeout(spec *corev1.ServiceSpec) (time.Duration, string) {
	switch spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone:
		return 0, ""
	case corev1.ServiceAffinityClientIP:
	default:
		return 0, fmt.Sprintf("spec.sessionAffinity %q is not None or ClientIP", spec.SessionAffinity)
	}
	cfg := spec.SessionAffinityConfig
	if cfg == nil || cfg.ClientIP == nil || cfg.ClientIP.TimeoutSeconds == nil {
		return DefaultAffinityTimeout, ""
	}
	secs := *cfg.ClientIP.TimeoutSeconds
	if secs < 1 || secs > maxAffinitySeconds {
		return 0, fmt.Sprintf("spec.sessionAffinityConfig.clientIP.timeoutSeconds %d is outside 1..%d", secs, maxAffinitySeconds)
	}
	return time.Duration(secs) * time.Second, ""
}

// defaultProtocol applies the API default: a port without a protocol is TCP.
func defaultProtocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

// protocolOf maps a Kubernetes protocol to the datapath's; ok is false for protocols the
// datapath does not load-balance (SCTP).
func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch defaultProtocol(p) {
	case corev1.ProtocolTCP:
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	}
	return 0, false
}

// reporter returns a constructor of ObjectErrors about one object, so call sites only
// say what is wrong.
func reporter(kind, namespace, name string) func(reason, msg string) ObjectError {
	return func(reason, msg string) ObjectError {
		return ObjectError{Kind: kind, Namespace: namespace, Name: name, Reason: reason, Message: msg}
	}
}
