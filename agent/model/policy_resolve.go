package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Kinds and reasons of policy and pod errors (metric label values, never renamed).
const (
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPod                 = "Pod"

	// ReasonUnsupportedField: the policy uses a field or value outside sockmesh's subset;
	// it is rejected and the services it targets fail closed.
	ReasonUnsupportedField = "unsupported_field"
	// ReasonInvalidPolicy: a value is malformed (a bad CIDR, port or pattern); rejected
	// and failing closed like an unsupported field.
	ReasonInvalidPolicy = "invalid_policy"
	// ReasonInvalidPodIP: a pod address is not an IP; that address is left out.
	ReasonInvalidPodIP = "invalid_pod_ip"
)

// RootNamespace holds mesh-wide policies, as Istio's default root namespace does.
const RootNamespace = "istio-system"

// resolvePolicies attaches policies to the services they target and marks those
// services L7, so their connections go through the node's Envoy. It runs after every
// service is in the snapshot.
func (b *builder) resolvePolicies(pods []*corev1.Pod, policies []*AuthorizationPolicy) {
	known := b.acceptPods(pods)
	if len(policies) == 0 {
		return // the rest indexes every service, for nothing
	}
	byName := map[ServiceName][]*Service{}
	for _, svc := range b.snap.Services {
		byName[svc.Name] = append(byName[svc.Name], svc)
	}
	sorted := sortedObjects(policies, func(p *AuthorizationPolicy) (string, string) { return p.Namespace, p.Name })
	for _, in := range sorted {
		name := PolicyName{in.Namespace, in.Name}
		report := reporter(KindAuthorizationPolicy, in.Namespace, in.Name)
		var p *Policy
		var targets []ServiceName
		if in.Unreadable {
			// The source could not read it and has said why; all it can do here is deny.
			p = &Policy{Name: name, Action: PolicyDeny, Rejected: true}
			targets = namespaceServices(in.Namespace, byName)
		} else {
			var errs, targetErrs []policyError
			p, errs = resolvePolicy(in, known)
			targets, targetErrs = policyTargets(in, byName, known)
			for _, e := range errs {
				b.report(report(e.reason, e.msg+"; the services it targets deny every request until it is fixed"))
			}
			for _, e := range targetErrs {
				b.report(report(e.reason, e.msg))
				if e.reason == ReasonUnsupportedField {
					p = &Policy{Name: name, Action: PolicyDeny, Rejected: true}
				}
			}
		}
		for _, svc := range targets {
			if b.snap.Policies == nil {
				b.snap.Policies = map[ServiceName][]*Policy{}
			}
			b.snap.Policies[svc] = append(b.snap.Policies[svc], p)
		}
	}
}

// acceptPods reads the identity and addresses of each pod.
func (b *builder) acceptPods(in []*corev1.Pod) []Pod {
	var out []Pod
	for _, p := range sortedObjects(in, func(p *corev1.Pod) (string, string) { return p.Namespace, p.Name }) {
		pod := Pod{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.Spec.ServiceAccountName, Labels: p.Labels}
		if pod.ServiceAccount == "" {
			pod.ServiceAccount = "default"
		}
		ips := []string{p.Status.PodIP}
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		for _, s := range ips {
			if s == "" {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				b.report(reporter(KindPod, p.Namespace, p.Name)(ReasonInvalidPodIP,
					fmt.Sprintf("status.podIPs: %q is not an IP address; it is left out", s)))
				continue
			}
			if !slices.Contains(pod.IPs, ip.Unmap()) {
				pod.IPs = append(pod.IPs, ip.Unmap())
			}
		}
		out = append(out, pod)
	}
	return out
}

type policyError struct {
	reason, msg string
	empty       bool // a source or operation with no field the subset knows
}

// resolvePolicy checks a policy against the subset and resolves it. Any error rejects it.
func resolvePolicy(in *AuthorizationPolicy, pods []Pod) (*Policy, []policyError) {
	p := &Policy{Name: PolicyName{in.Namespace, in.Name}}
	var errs []policyError
	fail := func(reason, format string, args ...any) {
		errs = append(errs, policyError{reason: reason, msg: fmt.Sprintf(format, args...)})
	}
	for _, f := range in.Unsupported {
		fail(ReasonUnsupportedField, "%s is not supported by sockmesh", f)
	}
	switch in.Spec.Action {
	case "", "ALLOW":
		p.Action = PolicyAllow
	case "DENY":
		p.Action = PolicyDeny
	default:
		fail(ReasonUnsupportedField, "spec.action %s is not supported (ALLOW or DENY)", in.Spec.Action)
	}
	if in.Spec.Selector != nil && len(in.Spec.TargetRefs) > 0 {
		fail(ReasonInvalidPolicy, "spec.selector and spec.targetRefs are both set; use one")
	}
	for i, r := range in.Spec.Rules {
		path := fmt.Sprintf("spec.rules[%d]", i)
		var rule Rule
		for j, f := range r.From {
			src, err := resolveSource(f.Source, pods, fmt.Sprintf("%s.from[%d].source", path, j))
			if err != nil && !(err.empty && len(in.Unsupported) > 0) { // empty but for unsupported fields
				errs = append(errs, *err)
			}
			rule.From = append(rule.From, src)
		}
		for j, t := range r.To {
			op, err := resolveOperation(t.Operation, fmt.Sprintf("%s.to[%d].operation", path, j))
			if err != nil && !(err.empty && len(in.Unsupported) > 0) {
				errs = append(errs, *err)
			}
			rule.To = append(rule.To, op)
		}
		for j, w := range r.When {
			c, err := resolveCondition(w, fmt.Sprintf("%s.when[%d]", path, j))
			if err != nil {
				errs = append(errs, *err)
			}
			rule.When = append(rule.When, c)
		}
		p.Rules = append(p.Rules, rule)
	}
	if len(errs) > 0 {
		return &Policy{Name: p.Name, Action: PolicyDeny, Rejected: true}, errs
	}
	return p, nil
}

// resolveSource turns a source's fields into peer address sets. An empty list is the
// same as an absent field, as in Istio.
func resolveSource(in PolicySource, pods []Pod, path string) (Source, *policyError) {
	var out Source
	principal := func(p Pod) string { return p.Principal() }
	namespace := func(p Pod) string { return p.Namespace }
	for _, f := range []struct {
		dst      **Peers
		values   []string
		field    string
		identity func(Pod) string // nil: the values are addresses or CIDRs
	}{
		{&out.Principals, in.Principals, "principals", principal},
		{&out.NotPrincipals, in.NotPrincipals, "notPrincipals", principal},
		{&out.Namespaces, in.Namespaces, "namespaces", namespace},
		{&out.NotNamespaces, in.NotNamespaces, "notNamespaces", namespace},
		{&out.IPBlocks, in.IPBlocks, "ipBlocks", nil},
		{&out.NotIPBlocks, in.NotIPBlocks, "notIpBlocks", nil},
	} {
		if len(f.values) == 0 {
			continue
		}
		peers := &Peers{}
		for _, v := range f.values {
			if f.identity == nil {
				pfx, err := parseBlock(v)
				if err != nil {
					return out, &policyError{reason: ReasonInvalidPolicy, msg: fmt.Sprintf("%s.%s: %q is not an IP address or CIDR", path, f.field, v)}
				}
				peers.Prefixes = appendUnique(peers.Prefixes, pfx)
				continue
			}
			if err := checkPattern(v); err != nil {
				return out, &policyError{reason: ReasonInvalidPolicy, msg: fmt.Sprintf("%s.%s: %q %v", path, f.field, v, err)}
			}
			for _, pod := range pods {
				if matchPattern(v, f.identity(pod)) {
					for _, ip := range pod.IPs {
						peers.Prefixes = appendUnique(peers.Prefixes, netip.PrefixFrom(ip, ip.BitLen()))
					}
				}
			}
		}
		*f.dst = peers
	}
	if out == (Source{}) {
		return out, &policyError{reason: ReasonInvalidPolicy, msg: path + " is empty; a source needs at least one field", empty: true}
	}
	return out, nil
}

func parseBlock(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	ip, err := netip.ParseAddr(s)
	return netip.PrefixFrom(ip, ip.BitLen()), err
}

func resolveOperation(in PolicyOperation, path string) (Operation, *policyError) {
	out := Operation{Hosts: in.Hosts, NotHosts: in.NotHosts, Methods: in.Methods, NotMethods: in.NotMethods,
		Paths: in.Paths, NotPaths: in.NotPaths}
	for _, f := range []struct {
		field  string
		values []string
	}{{"hosts", in.Hosts}, {"notHosts", in.NotHosts}, {"paths", in.Paths}, {"notPaths", in.NotPaths},
		{"methods", in.Methods}, {"notMethods", in.NotMethods}} {
		for _, v := range f.values {
			if err := checkPattern(v); err != nil {
				return out, &policyError{reason: ReasonUnsupportedField, msg: fmt.Sprintf("%s.%s: %q %v", path, f.field, v, err)}
			}
		}
	}
	for _, f := range []struct {
		field  string
		values []string
		dst    *[]uint16
	}{{"ports", in.Ports, &out.Ports}, {"notPorts", in.NotPorts, &out.NotPorts}} {
		for _, v := range f.values {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return out, &policyError{reason: ReasonInvalidPolicy, msg: fmt.Sprintf("%s.%s: %q is not a port number", path, f.field, v)}
			}
			*f.dst = append(*f.dst, uint16(n))
		}
	}
	if len(in.Hosts)+len(in.NotHosts)+len(in.Ports)+len(in.NotPorts)+len(in.Methods)+len(in.NotMethods)+
		len(in.Paths)+len(in.NotPaths) == 0 {
		return out, &policyError{reason: ReasonInvalidPolicy, msg: path + " is empty; an operation needs at least one field", empty: true}
	}
	return out, nil
}

func resolveCondition(in PolicyCondition, path string) (Condition, *policyError) {
	header, ok := strings.CutPrefix(in.Key, "request.headers[")
	if !ok || !strings.HasSuffix(header, "]") || len(header) < 2 {
		return Condition{}, &policyError{reason: ReasonUnsupportedField, msg: fmt.Sprintf(
			"%s.key %q is not supported; sockmesh supports request.headers[NAME]", path, in.Key)}
	}
	c := Condition{Header: strings.ToLower(strings.TrimSuffix(header, "]")), Values: in.Values, NotValues: in.NotValues}
	if len(c.Values)+len(c.NotValues) == 0 {
		return c, &policyError{reason: ReasonInvalidPolicy, msg: path + " has neither values nor notValues"}
	}
	for _, v := range append(slices.Clone(c.Values), c.NotValues...) {
		if err := checkPattern(v); err != nil {
			return c, &policyError{reason: ReasonUnsupportedField, msg: fmt.Sprintf("%s: %q %v", path, v, err)}
		}
	}
	return c, nil
}

// checkPattern accepts Istio's string patterns: exact, "prefix*", "*suffix" or "*".
func checkPattern(v string) error {
	if v == "" {
		return fmt.Errorf("is empty")
	}
	if v == "*" {
		return nil
	}
	if strings.Contains(strings.TrimSuffix(strings.TrimPrefix(v, "*"), "*"), "*") ||
		(strings.HasPrefix(v, "*") && strings.HasSuffix(v, "*")) {
		return fmt.Errorf("has a wildcard inside; only exact, prefix* and *suffix are supported")
	}
	if strings.Contains(v, "{") {
		return fmt.Errorf("uses a path template, which is not supported")
	}
	return nil
}

// matchPattern matches an Istio string pattern; it is used only to resolve peer
// identities into pod addresses (requests are matched by the proxy).
func matchPattern(pattern, s string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(s, strings.TrimSuffix(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(s, strings.TrimPrefix(pattern, "*"))
	}
	return pattern == s
}

func appendUnique(ps []netip.Prefix, p netip.Prefix) []netip.Prefix {
	if slices.Contains(ps, p) {
		return ps
	}
	return append(ps, p)
}

// policyTargets lists the services a policy applies to: its targetRefs; else the
// services backed by pods its selector matches; else every service of its namespace
// (of every namespace, for the root namespace). A target that cannot be read makes the
// policy apply namespace-wide, so a rejected policy still fails closed.
func policyTargets(in *AuthorizationPolicy, byName map[ServiceName][]*Service, pods []Pod) ([]ServiceName, []policyError) {
	var errs []policyError
	inScope := func(n ServiceName) bool { return inPolicyScope(in.Namespace, n.Namespace) }
	all := func() []ServiceName { return namespaceServices(in.Namespace, byName) }
	var out []ServiceName
	switch {
	case len(in.Spec.TargetRefs) > 0:
		for i, ref := range in.Spec.TargetRefs {
			if ref.Kind != "Service" || (ref.Group != "" && ref.Group != "core") ||
				(ref.Namespace != "" && ref.Namespace != in.Namespace) {
				errs = append(errs, policyError{reason: ReasonUnsupportedField, msg: fmt.Sprintf(
					"spec.targetRefs[%d]: %s %q in group %q: only Services of the policy's namespace can be targeted; "+
						"applying the policy to every service of namespace %s", i, ref.Kind, ref.Name, ref.Group, in.Namespace)})
				out = append(out, all()...)
				continue
			}
			n := ServiceName{in.Namespace, ref.Name}
			if _, ok := byName[n]; !ok {
				errs = append(errs, policyError{reason: ReasonUnknownService, msg: fmt.Sprintf(
					"spec.targetRefs[%d] names Service %s, which does not exist (or is not load-balanced); "+
						"the policy applies to it once it does", i, n)})
				continue
			}
			out = append(out, n)
		}
	case in.Spec.Selector != nil:
		addrs := map[netip.Addr]bool{}
		for _, p := range pods {
			if (in.Namespace == RootNamespace || p.Namespace == in.Namespace) && selects(in.Spec.Selector.MatchLabels, p.Labels) {
				for _, ip := range p.IPs {
					addrs[ip] = true
				}
			}
		}
		for n, svcs := range byName {
			if inScope(n) && slices.ContainsFunc(svcs, func(s *Service) bool {
				return slices.ContainsFunc(s.Backends, func(b Backend) bool { return addrs[b.Addr] })
			}) {
				out = append(out, n)
			}
		}
	default:
		out = all()
	}
	slices.SortFunc(out, func(a, b ServiceName) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(out), errs
}

// inPolicyScope says whether a policy in namespace ns can apply to something in target:
// its own namespace, or every namespace for the root namespace.
func inPolicyScope(ns, target string) bool { return ns == RootNamespace || ns == target }

// namespaceServices lists the services a namespace-wide policy in ns applies to.
func namespaceServices(ns string, byName map[ServiceName][]*Service) []ServiceName {
	var out []ServiceName
	for n := range byName {
		if inPolicyScope(ns, n.Namespace) {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b ServiceName) int { return strings.Compare(a.String(), b.String()) })
	return out
}

func selects(match, labels map[string]string) bool {
	for k, v := range match {
		if labels[k] != v {
			return false
		}
	}
	return true
}
