package xds

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Names of the two RBAC filters every L7 chain carries, in this order: any matching
// DENY rule denies, then, if the service has ALLOW policies, a request must match one.
const (
	rbacDenyFilter  = "sockmesh.rbac.deny"
	rbacAllowFilter = "sockmesh.rbac.allow"
)

// rbacFilters are the two RBAC filters in the order they run.
var rbacFilters = []struct {
	name   string
	action model.PolicyAction
}{{rbacDenyFilter, model.PolicyDeny}, {rbacAllowFilter, model.PolicyAllow}}

// protocolView says which request attributes the enforcing filter can see.
type protocolView uint8

const (
	viewHTTP protocolView = iota // HTTP connection manager: every field
	viewTCP                      // network filter: peers and ports only
)

// rbacTarget is one service port the RBAC filters protect, with its policies.
type rbacTarget struct {
	policies []*model.Policy
	port     uint16   // the service port: the original destination Envoy sees
	targets  []uint16 // the endpoints' ports, which Istio policies name (workload ports)
}

// destPort is the destination port Envoy sees for a port a policy names: the service
// port for the service port itself and for its endpoints' target ports, so a policy
// written for the workload's port matches what the client dialled (a DENY on port 8080
// must not miss connections made to service port 80 → 8080).
func (t rbacTarget) destPort(p uint16) uint16 {
	if slices.Contains(t.targets, p) {
		return t.port
	}
	return p
}

// buildRBAC translates a service's policies of one action into Envoy RBAC rules, or
// nil when there are none (no enforcement by that filter). Rejected policies become a
// deny-everything rule: a policy sockmesh cannot read fails closed.
func buildRBAC(t rbacTarget, action model.PolicyAction, view protocolView) *rbacv3.RBAC {
	rules := map[string]*rbacv3.Policy{}
	present := false
	for _, p := range t.policies {
		if p.Rejected {
			if action == model.PolicyDeny {
				present = true
				rules[p.Name.String()+"[rejected]"] = &rbacv3.Policy{
					Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{anyPrincipal()}}
			}
			continue
		}
		if p.Action != action {
			continue
		}
		// An ALLOW policy with no rule (or none that applies) still switches the service
		// to "must match an ALLOW rule": Istio's allow-nothing.
		present = true
		for i, r := range p.Rules {
			if rp, ok := rulePolicy(r, action, view, t); ok {
				rules[fmt.Sprintf("%s[%d]", p.Name, i)] = rp
			}
		}
	}
	if !present {
		return nil
	}
	out := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: rules}
	if action == model.PolicyDeny {
		out.Action = rbacv3.RBAC_DENY
	}
	return out
}

// rulePolicy is one rule as an RBAC policy: principals from "from", permissions from
// "to" and "when". On a TCP view, an ALLOW rule that needs HTTP attributes can never
// match and is dropped, while a DENY rule loses its HTTP conditions and so denies more
// (Istio's conservative choice in both cases). ok is false for a dropped rule.
func rulePolicy(r model.Rule, action model.PolicyAction, view protocolView, t rbacTarget) (*rbacv3.Policy, bool) {
	var perms []*rbacv3.Permission
	if r.To != nil {
		var ops []*rbacv3.Permission
		for _, op := range r.To {
			if view == viewTCP && op.HTTPOnly() {
				if action == model.PolicyAllow {
					continue
				}
				op = model.Operation{Ports: op.Ports, NotPorts: op.NotPorts}
			}
			ops = append(ops, operationPermission(op, t))
		}
		if len(ops) == 0 {
			return nil, false
		}
		perms = append(perms, orPermissions(ops))
	}
	if len(r.When) > 0 && view == viewTCP {
		if action == model.PolicyAllow {
			return nil, false
		}
	} else {
		for _, c := range r.When {
			perms = append(perms, conditionPermission(c))
		}
	}
	var ids []*rbacv3.Principal
	for _, s := range r.From {
		ids = append(ids, sourcePrincipal(s))
	}
	principal := anyPrincipal()
	if len(ids) > 0 {
		principal = orPrincipals(ids)
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{andPermissions(perms)}, Principals: []*rbacv3.Principal{principal}}, true
}

// operationPermission matches every set field of the operation.
func operationPermission(op model.Operation, t rbacTarget) *rbacv3.Permission {
	var all []*rbacv3.Permission
	field := func(ps []*rbacv3.Permission, negate bool) {
		if len(ps) == 0 {
			return
		}
		p := orPermissions(ps)
		if negate {
			p = &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
		}
		all = append(all, p)
	}
	host := func(v string) *rbacv3.Permission { return headerPermission(":authority", v, true) }
	method := func(v string) *rbacv3.Permission { return headerPermission(":method", v, false) }
	path := func(v string) *rbacv3.Permission {
		if v == "*" {
			return anyPermission()
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: stringMatch(v, false)}}}}
	}
	field(each(op.Hosts, host), false)
	field(each(op.NotHosts, host), true)
	port := func(p uint16) *rbacv3.Permission { return portPermission(t.destPort(p)) }
	field(each(op.Ports, port), false)
	field(each(op.NotPorts, port), true)
	field(each(op.Methods, method), false)
	field(each(op.NotMethods, method), true)
	field(each(op.Paths, path), false)
	field(each(op.NotPaths, path), true)
	return andPermissions(all)
}

func each[T any](values []T, f func(T) *rbacv3.Permission) []*rbacv3.Permission {
	out := make([]*rbacv3.Permission, len(values))
	for i, v := range values {
		out[i] = f(v)
	}
	return out
}

// conditionPermission matches a request header against a "when" entry. A header sent
// more than once is seen as its values joined by commas, so a value matches any one
// element of that list: otherwise repeating a header would slip past a DENY rule.
func conditionPermission(c model.Condition) *rbacv3.Permission {
	one := func(v string) *rbacv3.Permission { return headerListPermission(c.Header, v) }
	var all []*rbacv3.Permission
	if len(c.Values) > 0 {
		all = append(all, orPermissions(each(c.Values, one)))
	}
	if len(c.NotValues) > 0 {
		all = append(all, &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: orPermissions(each(c.NotValues, one))}})
	}
	return andPermissions(all)
}

// sourcePrincipal matches a peer against every set field of the source. Identities
// were resolved to pod addresses; the peer is the connection's own address.
func sourcePrincipal(s model.Source) *rbacv3.Principal {
	var all []*rbacv3.Principal
	for _, f := range []struct {
		peers  *model.Peers
		negate bool
	}{
		{s.Principals, false}, {s.NotPrincipals, true},
		{s.Namespaces, false}, {s.NotNamespaces, true},
		{s.IPBlocks, false}, {s.NotIPBlocks, true},
	} {
		if f.peers == nil {
			continue
		}
		var p *rbacv3.Principal
		if len(f.peers.Prefixes) == 0 {
			p = nonePrincipal() // no pod has that identity: no peer matches
		} else {
			ids := make([]*rbacv3.Principal, len(f.peers.Prefixes))
			for i, pfx := range f.peers.Prefixes {
				ids[i] = &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr(pfx)}}
			}
			p = orPrincipals(ids)
		}
		if f.negate {
			p = &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
		}
		all = append(all, p)
	}
	if len(all) == 0 {
		return anyPrincipal()
	}
	if len(all) == 1 {
		return all[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: all}}}
}

// headerListPermission matches a pattern against any element of a comma-joined header.
func headerListPermission(name, pattern string) *rbacv3.Permission {
	if pattern == "*" {
		return headerPermission(name, pattern, false)
	}
	var elem string
	switch {
	case strings.HasSuffix(pattern, "*"):
		elem = regexp.QuoteMeta(strings.TrimSuffix(pattern, "*")) + ".*"
	case strings.HasPrefix(pattern, "*"):
		elem = ".*" + regexp.QuoteMeta(strings.TrimPrefix(pattern, "*"))
	default:
		elem = regexp.QuoteMeta(pattern)
	}
	h := &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
			SafeRegex: &matcherv3.RegexMatcher{Regex: "^(.*,)?" + elem + "(,.*)?$"}}}}}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}
}

func headerPermission(name, pattern string, ignoreCase bool) *rbacv3.Permission {
	h := &routev3.HeaderMatcher{Name: name}
	if pattern == "*" {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	} else {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatch(pattern, ignoreCase)}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}
}

// stringMatch turns an Istio pattern (exact, "prefix*", "*suffix"; not "*") into a
// matcher.
func stringMatch(pattern string, ignoreCase bool) *matcherv3.StringMatcher {
	m := &matcherv3.StringMatcher{IgnoreCase: ignoreCase}
	switch {
	case strings.HasSuffix(pattern, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(pattern, "*")}
	case strings.HasPrefix(pattern, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: strings.TrimPrefix(pattern, "*")}
	default:
		m.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: pattern}
	}
	return m
}

// portPermission matches the connection's destination port: with the original
// destination restored, the service port the client dialled.
func portPermission(port uint16) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(port)}}
}

func cidr(p netip.Prefix) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}
func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}
func nonePrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: anyPrincipal()}}
}

func orPermissions(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func andPermissions(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return anyPermission()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func orPrincipals(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}
