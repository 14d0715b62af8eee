package model

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// policyWorld is two namespaces: web and api in "shop" (web backed by pod web-0), db in
// "data", and client pods with service accounts.
func policyWorld(policies ...*AuthorizationPolicy) *Snapshot {
	svc := func(ns, name, ip string) *corev1.Service {
		s := service(name, []string{ip}, sport("http", 80, corev1.ProtocolTCP))
		s.Namespace = ns
		return s
	}
	web := epSlice("web-1", "web", discoveryv1.AddressTypeIPv4, tcp(eport("http", 8080, "")), ep("10.1.0.5"))
	web.Namespace = "shop"
	pod := func(ns, name, sa, ip string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec: corev1.PodSpec{ServiceAccountName: sa}, Status: corev1.PodStatus{PodIP: ip}}
	}
	return BuildAll(Input{
		Services:       []*corev1.Service{svc("shop", "web", "10.96.0.1"), svc("shop", "api", "10.96.0.2"), svc("data", "db", "10.96.0.3")},
		EndpointSlices: []*discoveryv1.EndpointSlice{web},
		Pods: []*corev1.Pod{
			pod("shop", "web-0", "web", "10.1.0.5", map[string]string{"app": "web"}),
			pod("shop", "client-0", "client", "10.1.0.7", nil),
			pod("shop", "client-1", "client", "10.1.0.8", nil),
			pod("data", "batch-0", "", "10.2.0.9", nil),
		},
		Policies: policies,
	})
}

func policy(ns, name string, spec AuthorizationPolicySpec) *AuthorizationPolicy {
	return &AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func targeted(s *Snapshot) map[string][]string {
	out := map[string][]string{}
	for n, ps := range s.Policies {
		for _, p := range ps {
			out[n.String()] = append(out[n.String()], p.Name.String())
		}
	}
	return out
}

func TestPolicyTargetsAndMakesL7(t *testing.T) {
	for _, tt := range []struct {
		name   string
		policy *AuthorizationPolicy
		want   []string // services the policy applies to
	}{
		{"targetRefs", policy("shop", "p", AuthorizationPolicySpec{TargetRefs: []PolicyTargetRef{{Kind: "Service", Name: "api"}}}), []string{"shop/api"}},
		{"selector on backend pods", policy("shop", "p", AuthorizationPolicySpec{Selector: &WorkloadSelector{MatchLabels: map[string]string{"app": "web"}}}), []string{"shop/web"}},
		{"selector matching no backend", policy("shop", "p", AuthorizationPolicySpec{Selector: &WorkloadSelector{MatchLabels: map[string]string{"app": "none"}}}), nil},
		{"namespace-wide", policy("shop", "p", AuthorizationPolicySpec{}), []string{"shop/api", "shop/web"}},
		{"root namespace is mesh-wide", policy(RootNamespace, "p", AuthorizationPolicySpec{}), []string{"data/db", "shop/api", "shop/web"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			snap := policyWorld(tt.policy)
			var got []string
			for n := range targeted(snap) {
				got = append(got, n)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("policy applies to %v, want %v", got, tt.want)
			}
			for _, svc := range snap.Services {
				if want := slices.Contains(tt.want, svc.Name.String()); svc.L7 != want {
					t.Errorf("%s: L7 = %v, want %v", svc.Name, svc.L7, want)
				}
			}
			if len(snap.Errors) != 0 {
				t.Fatalf("errors: %v", snap.Errors)
			}
		})
	}
}

func TestPolicyPeersResolveToPodAddresses(t *testing.T) {
	p := policy("shop", "p", AuthorizationPolicySpec{
		TargetRefs: []PolicyTargetRef{{Kind: "Service", Name: "web"}},
		Rules: []PolicyRule{{From: []PolicyFrom{
			{Source: PolicySource{Principals: []string{"cluster.local/ns/shop/sa/client"}}},
			{Source: PolicySource{Namespaces: []string{"data"}, NotIPBlocks: []string{"10.2.0.0/16"}}},
			{Source: PolicySource{Principals: []string{"cluster.local/ns/nowhere/sa/*"}}},
			{Source: PolicySource{IPBlocks: []string{"192.0.2.1"}}},
		}, To: []PolicyTo{{Operation: PolicyOperation{Ports: []string{"80"}, Paths: []string{"/api/*"}}}}}},
	})
	snap := policyWorld(p)
	got := snap.Policies[ServiceName{"shop", "web"}]
	if len(got) != 1 || got[0].Rejected || len(snap.Errors) != 0 {
		t.Fatalf("policies %+v, errors %v", got, snap.Errors)
	}
	from := got[0].Rules[0].From
	pfx := func(p *Peers) string {
		if p == nil {
			return "unset"
		}
		var s []string
		for _, x := range p.Prefixes {
			s = append(s, x.String())
		}
		return "[" + strings.Join(s, " ") + "]"
	}
	for i, c := range []struct{ got, want string }{
		{pfx(from[0].Principals), "[10.1.0.7/32 10.1.0.8/32]"},
		{pfx(from[1].Namespaces), "[10.2.0.9/32]"},
		{pfx(from[1].NotIPBlocks), "[10.2.0.0/16]"},
		{pfx(from[1].Principals), "unset"},
		{pfx(from[2].Principals), "[]"}, // an identity no pod has matches no peer
		{pfx(from[3].IPBlocks), "[192.0.2.1/32]"},
	} {
		if c.got != c.want {
			t.Errorf("check %d: %s, want %s", i, c.got, c.want)
		}
	}
	if op := got[0].Rules[0].To[0]; !slices.Equal(op.Ports, []uint16{80}) || !op.HTTPOnly() {
		t.Errorf("operation %+v", op)
	}
}

func TestBadPolicyIsRejectedNamedAndFailsClosed(t *testing.T) {
	target := []PolicyTargetRef{{Kind: "Service", Name: "web"}}
	for _, tt := range []struct {
		name    string
		policy  *AuthorizationPolicy
		reason  string
		message string
	}{
		{"unsupported field", func() *AuthorizationPolicy {
			p := policy("shop", "p", AuthorizationPolicySpec{TargetRefs: target})
			p.Unsupported = []string{"spec.rules[0].from[0].source.requestPrincipals"}
			return p
		}(), ReasonUnsupportedField, "spec.rules[0].from[0].source.requestPrincipals is not supported"},
		{"CUSTOM action", policy("shop", "p", AuthorizationPolicySpec{TargetRefs: target, Action: "CUSTOM"}),
			ReasonUnsupportedField, "spec.action CUSTOM is not supported"},
		{"when key", policy("shop", "p", AuthorizationPolicySpec{TargetRefs: target, Rules: []PolicyRule{{When: []PolicyCondition{{Key: "source.ip", Values: []string{"1.2.3.4"}}}}}}),
			ReasonUnsupportedField, `spec.rules[0].when[0].key "source.ip" is not supported`},
		{"inner wildcard", policy("shop", "p", AuthorizationPolicySpec{TargetRefs: target, Rules: []PolicyRule{{To: []PolicyTo{{Operation: PolicyOperation{Paths: []string{"/a/*/b"}}}}}}}),
			ReasonUnsupportedField, `spec.rules[0].to[0].operation.paths: "/a/*/b" has a wildcard inside`},
		{"bad CIDR", policy("shop", "p", AuthorizationPolicySpec{TargetRefs: target, Rules: []PolicyRule{{From: []PolicyFrom{{Source: PolicySource{IPBlocks: []string{"10.0.0.0/33"}}}}}}}),
			ReasonInvalidPolicy, `spec.rules[0].from[0].source.ipBlocks: "10.0.0.0/33" is not an IP address or CIDR`},
		{"bad port", policy("shop", "p", AuthorizationPolicySpec{TargetRefs: target, Rules: []PolicyRule{{To: []PolicyTo{{Operation: PolicyOperation{Ports: []string{"http"}}}}}}}),
			ReasonInvalidPolicy, `spec.rules[0].to[0].operation.ports: "http" is not a port number`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			good := policy("shop", "other", AuthorizationPolicySpec{TargetRefs: []PolicyTargetRef{{Kind: "Service", Name: "api"}}, Rules: []PolicyRule{{}}})
			snap := policyWorld(tt.policy, good)
			if len(snap.Errors) != 1 {
				t.Fatalf("errors %v, want one", snap.Errors)
			}
			e := snap.Errors[0]
			if e.Kind != KindAuthorizationPolicy || e.Name != "p" || e.Reason != tt.reason || !strings.Contains(e.Error(), tt.message) {
				t.Fatalf("error %q (%s), want %s naming %q", e.Error(), e.Reason, tt.reason, tt.message)
			}
			ps := snap.Policies[ServiceName{"shop", "web"}]
			if len(ps) != 1 || !ps[0].Rejected {
				t.Fatalf("web's policies %+v: want the rejected one, failing closed", ps)
			}
			if api := snap.Policies[ServiceName{"shop", "api"}]; len(api) != 1 || api[0].Rejected {
				t.Fatalf("api's policies %+v: the good policy must be untouched", api)
			}
			for _, svc := range snap.Services {
				if svc.Name.Namespace == "shop" && !svc.L7 {
					t.Errorf("%s is not L7: a rejected policy must still send it through the proxy", svc.Name)
				}
			}
		})
	}
}

func TestPolicyForUnknownServiceIsNamed(t *testing.T) {
	p := policy("shop", "p", AuthorizationPolicySpec{TargetRefs: []PolicyTargetRef{{Kind: "Service", Name: "gone"}, {Kind: "Service", Name: "web"}}})
	snap := policyWorld(p)
	if len(snap.Errors) != 1 || snap.Errors[0].Reason != ReasonUnknownService || !strings.Contains(snap.Errors[0].Error(), "shop/gone") {
		t.Fatalf("errors %v, want one unknown_service naming shop/gone", snap.Errors)
	}
	if got := targeted(snap); len(got) != 1 || len(got["shop/web"]) != 1 {
		t.Fatalf("targets %v, want shop/web only", got)
	}
}

func TestUnreadableTargetFailsClosedNamespaceWide(t *testing.T) {
	p := policy("shop", "p", AuthorizationPolicySpec{TargetRefs: []PolicyTargetRef{{Kind: "Gateway", Group: "gateway.networking.k8s.io", Name: "gw"}}})
	snap := policyWorld(p)
	if len(snap.Errors) != 1 || snap.Errors[0].Reason != ReasonUnsupportedField {
		t.Fatalf("errors %v", snap.Errors)
	}
	if got := targeted(snap); len(got) != 2 || got["data/db"] != nil {
		t.Fatalf("targets %v, want every service of shop", got)
	}
	if ps := snap.Policies[ServiceName{"shop", "web"}]; !ps[0].Rejected {
		t.Fatalf("policy %+v is not rejected", ps[0])
	}
}

func TestEmptyPolicyListsAreUnset(t *testing.T) {
	p := policy("shop", "p", AuthorizationPolicySpec{
		TargetRefs: []PolicyTargetRef{{Kind: "Service", Name: "web"}},
		Rules:      []PolicyRule{{From: []PolicyFrom{{Source: PolicySource{Principals: []string{}, Namespaces: []string{"data"}}}}}},
	})
	snap := policyWorld(p)
	src := snap.Policies[ServiceName{"shop", "web"}][0].Rules[0].From[0]
	if src.Principals != nil || src.Namespaces == nil {
		t.Fatalf("principals: [] resolved to %+v (want unset, as in Istio), namespaces to %+v", src.Principals, src.Namespaces)
	}
	only := policy("shop", "q", AuthorizationPolicySpec{
		TargetRefs: []PolicyTargetRef{{Kind: "Service", Name: "web"}},
		Rules:      []PolicyRule{{From: []PolicyFrom{{Source: PolicySource{IPBlocks: []string{}}}}}},
	})
	if snap := policyWorld(only); len(snap.Errors) != 1 || !strings.Contains(snap.Errors[0].Error(), "source is empty") {
		t.Fatalf("a source with only empty lists: errors %v, want it named as empty", snap.Errors)
	}
}
