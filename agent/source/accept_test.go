package source

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

// replaceDocs decodes docs into the store, failing on a file-level error.
func replaceDocs(t *testing.T, s *Store, docs ...string) {
	t.Helper()
	d := DecodeAll([]byte(strings.Join(docs, "---\n")))
	if len(d.Errors) > 0 {
		t.Fatalf("file-level errors: %v", d.Errors)
	}
	s.Replace(d)
}

// errorKeys renders errors as "Kind ns/name reason", sorted.
func errorKeys(errs []model.ObjectError) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Kind+" "+e.Namespace+"/"+e.Name+" "+e.Reason)
	}
	slices.Sort(out)
	return out
}

func wantErrors(t *testing.T, snap *model.Snapshot, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := errorKeys(snap.Errors); !slices.Equal(got, want) {
		t.Errorf("errors:\n got %v\nwant %v\n(%v)", got, want, snap.Errors)
	}
}

// Defect 6: a typo in a kind must not delete the object it was meant as.
func TestTypoInKindKeepsTheObjectOfThatName(t *testing.T) {
	var s Store
	replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"), sliceYAML("web-1", "web", "10.0.1.1"))
	typo := strings.Replace(serviceYAML("web", "10.96.0.10"), "kind: Service", "kind: Servcie", 1)
	replaceDocs(t, &s, typo, sliceYAML("web-1", "web", "10.0.1.1"))
	snap := s.Snapshot()
	if got := backendsOf(snap, frontend); got != "[10.0.1.1:8080]" {
		t.Errorf("after kind: Servcie, web serves %s", got)
	}
	wantErrors(t, snap, "Servcie default/web unknown_kind")
	if msg := snap.Errors[0].Error(); !strings.Contains(msg, `"Servcie"`) || !strings.Contains(msg, "keeping the last good Service") {
		t.Errorf("error %q should name the kind and say what is kept", msg)
	}
	// Removing the object for real does delete it.
	replaceDocs(t, &s, sliceYAML("web-1", "web", "10.0.1.1"))
	if got := backendsOf(s.Snapshot(), frontend); got != "absent" {
		t.Errorf("web deleted from the file still serves %s", got)
	}
}

// Defect 6: an EndpointSlice at an apiVersion sockmesh does not read keeps its backends,
// and says why.
func TestUnsupportedAPIVersionKeepsTheLastGoodVersion(t *testing.T) {
	var s Store
	replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"), sliceYAML("web-1", "web", "10.0.1.1"))
	old := strings.Replace(sliceYAML("web-1", "web", "10.0.1.2"), "discovery.k8s.io/v1", "discovery.k8s.io/v1beta1", 1)
	replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"), old)
	snap := s.Snapshot()
	if got := backendsOf(snap, frontend); got != "[10.0.1.1:8080]" {
		t.Errorf("backends = %s, want the last good version's", got)
	}
	wantErrors(t, snap, "EndpointSlice default/web-1 unsupported_api_version")
	if msg := snap.Errors[0].Message; !strings.Contains(msg, "discovery.k8s.io/v1beta1") || !strings.HasSuffix(msg, keepingSuffix) {
		t.Errorf("message %q", msg)
	}
}

const shopWeb = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
`

func policyDoc(apiVersion, kind, name, spec string) string {
	return "apiVersion: " + apiVersion + "\nkind: " + kind + "\nmetadata: {name: " + name + ", namespace: shop}\nspec: " + spec + "\n"
}

// policiesOf renders the policies that apply to shop/web.
func policiesOf(snap *model.Snapshot) []string {
	var out []string
	for _, p := range snap.Policies[model.ServiceName{Namespace: "shop", Name: "web"}] {
		s := p.Name.String() + " " + p.Action.String()
		if p.Rejected {
			s += " rejected"
		}
		out = append(out, s)
	}
	return out
}

// Defect 6: a DENY policy sockmesh cannot read must fail closed, never open.
func TestUnreadablePolicyLikeObjectsFailClosed(t *testing.T) {
	for _, tt := range []struct{ name, doc string }{
		{"v1alpha1", policyDoc("security.istio.io/v1alpha1", "AuthorizationPolicy", "deny-all", "{action: DENY}")},
		{"kind misspelt", policyDoc("security.istio.io/v1", "AuthorisationPolicy", "deny-all", "{action: DENY}")},
		{"type error", policyDoc("security.istio.io/v1", "AuthorizationPolicy", "deny-all", `{action: DENY, rules: [{from: [{source: {ipBlocks: "10.0.0.1"}}]}]}`)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s Store
			replaceDocs(t, &s, shopWeb, tt.doc)
			snap := s.Snapshot()
			got := policiesOf(snap)
			if len(got) != 1 || !strings.HasSuffix(got[0], "DENY rejected") {
				t.Fatalf("policies of shop/web = %v, want one rejected (deny-all) stand-in", got)
			}
			for _, svc := range snap.Services {
				if !svc.L7 {
					t.Errorf("%s is not L7: nothing would deny", svc.DisplayName())
				}
			}
			if len(snap.Errors) != 1 || !strings.Contains(snap.Errors[0].Message, "fail closed") {
				t.Errorf("errors %v: want one saying it fails closed", snap.Errors)
			}
		})
	}
}

// Defect 7: a policy with a type error fails alone; the other policies in the file are
// applied, and one removed from the file is removed.
func TestOneBadPolicyFailsAlone(t *testing.T) {
	var s Store
	allow := policyDoc("security.istio.io/v1", "AuthorizationPolicy", "allow-old", "{targetRefs: [{kind: Service, name: web}], action: ALLOW, rules: [{}]}")
	replaceDocs(t, &s, shopWeb, allow)
	if got := policiesOf(s.Snapshot()); !slices.Equal(got, []string{"shop/allow-old ALLOW"}) {
		t.Fatalf("first version: %v", got)
	}
	bad := policyDoc("security.istio.io/v1", "AuthorizationPolicy", "bad-type", `{targetRefs: [{kind: Service, name: web}], rules: [{from: [{source: {ipBlocks: "10.0.0.1"}}]}]}`)
	deny := policyDoc("security.istio.io/v1", "AuthorizationPolicy", "deny-new", "{targetRefs: [{kind: Service, name: web}], action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}")
	replaceDocs(t, &s, shopWeb, bad, deny)
	snap := s.Snapshot()
	want := []string{"shop/bad-type DENY rejected", "shop/deny-new DENY"}
	if got := policiesOf(snap); !slices.Equal(got, want) {
		t.Errorf("policies = %v, want %v (allow-old removed, deny-new enforced, bad-type failing closed)", got, want)
	}
	wantErrors(t, snap, "AuthorizationPolicy shop/bad-type malformed_object")
}

// Defect 8: validation runs once, so a rejected Service's slice is not also "unknown".
func TestRejectedServiceIsNotReportedAgainThroughItsSlices(t *testing.T) {
	var s Store
	replaceDocs(t, &s, strings.Replace(serviceYAML("web", "10.96.0.10"), "port: 80", "port: 70000", 1),
		sliceYAML("web-1", "web", "10.0.1.1"))
	wantErrors(t, s.Snapshot(), "Service default/web invalid_port")
}

// Rejected objects leave the others intact, each reported once.
func TestRejectedObjectsLeaveTheOthersIntact(t *testing.T) {
	var s Store
	replaceDocs(t, &s,
		serviceYAML("web", "10.96.0.10"), sliceYAML("web-1", "web", "10.0.1.1"),
		serviceYAML("bad-ip", "10.96.0"),
		strings.Replace(serviceYAML("bad-port", "10.96.0.21"), "port: 80", "port: 70000", 1),
		strings.Replace(sliceYAML("orphan", "web", "10.0.1.2"), "    kubernetes.io/service-name: web\n", "    other: x\n", 1),
		strings.Replace(sliceYAML("web-bad-port", "web", "10.0.1.3"), "port: 8080", "port: 0", 1),
		serviceYAML("web", "10.96.0.10"),
	)
	snap := s.Snapshot()
	if got := backendsOf(snap, frontend); got != "[10.0.1.1:8080]" || len(snap.Services) != 1 {
		t.Errorf("services %d, web backends %s", len(snap.Services), got)
	}
	wantErrors(t, snap, "Service default/bad-ip invalid_cluster_ip", "Service default/bad-port invalid_port",
		"EndpointSlice default/orphan missing_service_label", "EndpointSlice default/web-bad-port invalid_port",
		"Service default/web duplicate_object")
}

// Defect 10: names the API server refuses are refused, which also keeps xDS names
// (NAME.NAMESPACE.svc.cluster.local) one-to-one.
func TestNamesFollowTheAPIServerRules(t *testing.T) {
	svc := func(ns, name, ip string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: '" + name + "', namespace: '" + ns + "'}\nspec: {clusterIP: " + ip + ", ports: [{port: 80}]}\n"
	}
	var s Store
	replaceDocs(t, &s,
		svc("default", "Web", "10.96.0.1"),
		svc("default", strings.Repeat("a", 300), "10.96.0.2"),
		svc("default", "a/b", "10.96.0.3"),
		svc("c", "a.b", "10.96.0.4"),
		svc("b.c", "a", "10.96.0.5"),
		svc("default", "ok", "10.96.0.6"),
	)
	snap := s.Snapshot()
	if len(snap.Services) != 1 {
		t.Errorf("%d services programmed, want only default/ok", len(snap.Services))
	}
	wantErrors(t, snap, "Service default/Web invalid_name", "Service default/"+strings.Repeat("a", 300)+" invalid_name",
		"Service default/a/b invalid_name", "Service c/a.b invalid_name", "Service b.c/a invalid_name")
	for _, e := range snap.Errors {
		if len(e.Message) > 400 {
			t.Errorf("message of %d bytes: a long name must be clipped", len(e.Message))
		}
	}
}

// Defect 4: a newcomer repeating a held clusterIP:port is the one rejected, and named,
// also when the holder is known only from what a previous agent programmed.
func TestContestedFrontendStaysWithItsHolder(t *testing.T) {
	aaa := strings.Replace(serviceYAML("aaa", "10.96.0.10"), "name: http", "name: other", 1)
	check := func(t *testing.T, s *Store) {
		t.Helper()
		snap := s.Snapshot()
		if svc := snap.Services[model.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP}]; svc == nil || svc.Name.Name != "web" {
			t.Fatalf("frontend held by %+v, want default/web", svc)
		}
		wantErrors(t, snap, "Service default/aaa duplicate_frontend")
		if msg := snap.Errors[0].Message; !strings.Contains(msg, "held by Service default/web") {
			t.Errorf("message %q should name the holder", msg)
		}
	}
	t.Run("running", func(t *testing.T) {
		var s Store
		replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"))
		s.Snapshot()
		replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"), aaa)
		check(t, &s)
	})
	t.Run("restart", func(t *testing.T) {
		var s Store
		s.SeedHolders(map[model.Frontend]model.ServiceName{
			{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP}: {Namespace: "default", Name: "web"}})
		replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"), aaa)
		check(t, &s)
	})
	t.Run("holder gone", func(t *testing.T) {
		var s Store
		replaceDocs(t, &s, serviceYAML("web", "10.96.0.10"), aaa)
		s.Snapshot()
		replaceDocs(t, &s, aaa)
		if snap := s.Snapshot(); len(snap.Services) != 1 || len(snap.Errors) != 0 {
			t.Errorf("once web is gone aaa should hold the frontend: %d services, errors %v", len(snap.Services), snap.Errors)
		}
	})
}

// A Service meant for another proxy is neither programmed, nor validated, nor does it
// make its slices "unknown".
func TestAnotherProxysServiceIsNotOurs(t *testing.T) {
	var s Store
	other := strings.Replace(serviceYAML("web", "10.96.0.999"), "metadata:\n  name: web\n",
		"metadata:\n  name: web\n  labels: {service.kubernetes.io/service-proxy-name: other}\n", 1)
	replaceDocs(t, &s, other, sliceYAML("web-1", "web", "10.0.1.1"))
	snap := s.Snapshot()
	if len(snap.Services) != 0 {
		t.Errorf("another proxy's Service was programmed: %d frontends", len(snap.Services))
	}
	wantErrors(t, snap)
}
