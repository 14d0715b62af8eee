package source

import (
	"slices"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

const policyFile = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
spec: {serviceAccountName: client, containers: [{name: c, image: x}]}
status: {podIP: 10.1.0.7}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {methods: [GET], paths: [/api/*]}}]
    when: [{key: "request.headers[x-team]", values: [blue]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: web}]
  provider: {name: ext-authz}
  rules:
  - from: [{source: {requestPrincipals: ["*"], namespaces: [shop]}}]
`

func TestFileReadsPodsAndPoliciesAndNamesUnsupportedFields(t *testing.T) {
	d := decodeOK(t, policyFile)
	if len(d.Pods) != 1 || len(d.Policies) != 2 {
		t.Fatalf("decoded %d pods, %d policies", len(d.Pods), len(d.Policies))
	}
	if u := d.Policies[0].Unsupported; len(u) != 0 {
		t.Fatalf("a policy within the subset has unsupported fields %v", u)
	}
	want := []string{"spec.provider", "spec.rules[0].from[0].source.requestPrincipals"}
	if u := d.Policies[1].Unsupported; !slices.Equal(u, want) {
		t.Fatalf("unsupported fields %v, want %v", u, want)
	}
	var s Store
	s.Replace(*d)
	snap := s.Snapshot()
	ps := snap.Policies[model.ServiceName{Namespace: "shop", Name: "web"}]
	if len(ps) != 2 || ps[0].Rejected || !ps[1].Rejected {
		t.Fatalf("policies of shop/web: %+v", ps)
	}
	if p := ps[0].Rules[0].From[0].Principals; p == nil || len(p.Prefixes) != 1 || p.Prefixes[0].String() != "10.1.0.7/32" {
		t.Fatalf("principal resolved to %+v, want the client pod's address", p)
	}
	var msgs []string
	for _, e := range snap.Errors {
		msgs = append(msgs, e.Error())
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0], "AuthorizationPolicy shop/jwt-only: spec.provider is not supported") ||
		!strings.Contains(msgs[1], "requestPrincipals is not supported") {
		t.Fatalf("errors %q", msgs)
	}
	for _, svc := range snap.Services {
		if !svc.L7 {
			t.Fatalf("%s is not L7 though a policy targets it", svc.DisplayName())
		}
	}
}
