package source

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

// serviceYAML and sliceYAML write the objects the tests need, one port named "http".
func serviceYAML(name, ip string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
spec:
  clusterIP: %s
  ports:
  - name: http
    port: 80
`, name, ip)
}

func sliceYAML(name, svc string, addrs ...string) string {
	var eps strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&eps, "- addresses: [%q]\n", a)
	}
	return fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %s
  labels:
    kubernetes.io/service-name: %s
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
%s`, name, svc, eps.String())
}

func TestDecode(t *testing.T) {
	input := strings.Join([]string{
		"# services for the demo\n",
		serviceYAML("web", "10.96.0.10"),
		"# only a comment\n",
		"\n  \n",
		sliceYAML("web-1", "web", "10.0.1.1"),
		`apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {items: "not a list"}
`,
		`apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: api, namespace: prod}
  spec: {clusterIP: 10.96.0.11, ports: [{port: 443}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: api}
- apiVersion: discovery.k8s.io/v1beta1
  kind: EndpointSlice
  metadata: {name: old}
`,
		"~\n",
	}, "---\n")
	input = "---\n" + strings.ReplaceAll(input, "---\n", "--- \r\n")

	d := DecodeAll([]byte(input))
	if len(d.Errors) > 0 {
		t.Fatalf("errors: %v", d.Errors)
	}
	var got []string
	for _, s := range d.Services {
		got = append(got, "Service "+s.Namespace+"/"+s.Name)
	}
	for _, s := range d.Slices {
		got = append(got, "EndpointSlice "+s.Namespace+"/"+s.Name)
	}
	want := []string{"Service default/web", "Service prod/api", "EndpointSlice default/web-1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("objects = %v, want %v", got, want)
	}
	wantIgnored := map[string]int{"v1/ConfigMap": 1, "apps/v1/Deployment": 1}
	if !reflect.DeepEqual(d.Ignored, wantIgnored) {
		t.Errorf("ignored = %v, want %v", d.Ignored, wantIgnored)
	}
	if len(d.Rejected) != 1 || d.Rejected[0].Kind != "EndpointSlice" || d.Rejected[0].Name != "old" ||
		d.Rejected[0].Err.Reason != ReasonUnsupportedAPIVersion || !d.Rejected[0].Ours {
		t.Errorf("rejected = %+v, want the v1beta1 EndpointSlice", d.Rejected)
	}
	if ip := d.Services[0].Spec.ClusterIP; ip != "10.96.0.10" {
		t.Errorf("clusterIP = %q", ip)
	}
	if n := len(d.Slices[0].Endpoints); n != 1 {
		t.Errorf("endpoints = %d, want 1", n)
	}
}

// A file that cannot be fully read yields no objects at all: taken as the whole truth,
// a partial read would delete the services it missed.
func TestDecodeRefusesWholeFile(t *testing.T) {
	good := serviceYAML("web", "10.96.0.10")
	tests := []struct {
		name       string
		input      string
		wantReason string
		wantInMsg  string
	}{
		{"syntax error", good + "---\n" + good + "---\nkind: Service\n  bad: [indent\n", ReasonMalformedYAML, "document 3 (line 21): yaml: line 22: "},
		{"tab indentation", good + "---\napiVersion: v1\nkind: Service\nmetadata:\n\tname: x\n", ReasonMalformedYAML, "document 2"},
		{"duplicate key", good + "---\napiVersion: v1\napiVersion: v1\nkind: Service\n", ReasonMalformedYAML, "document 2"},
		{"not a mapping", good + "---\n- just\n- a list\n", ReasonMalformedObject, "document 2 (line 11) is not a Kubernetes object"},
		{"no kind", good + "---\napiVersion: v1\nmetadata: {name: web2}\n", ReasonMalformedObject, "no apiVersion or no kind"},
		{"no name", good + "---\napiVersion: v1\nkind: Service\nmetadata: {nme: web2}\n", ReasonMalformedObject, "has no metadata.name"},
		{"metadata not a mapping", good + "---\napiVersion: v1\nkind: Service\nmetadata: web2\n", ReasonMalformedObject, "document 2 (line 11) is not a Kubernetes object"},
		{"bad list item", "apiVersion: v1\nkind: List\nitems:\n- 42\n", ReasonMalformedObject, "document 1 (line 1) items[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			services, slices, errs := Decode([]byte(tt.input))
			if len(services) != 0 || len(slices) != 0 {
				t.Errorf("got %d services, %d slices; want none", len(services), len(slices))
			}
			if len(errs) != 1 {
				t.Fatalf("errors = %v, want one", errs)
			}
			e := errs[0]
			if e.Kind != KindFile || e.Reason != tt.wantReason || !strings.Contains(e.Message, tt.wantInMsg) || strings.Contains(e.Message, "\n") {
				t.Errorf("error = %+v, want kind %s, reason %s, one line containing %q", e, KindFile, tt.wantReason, tt.wantInMsg)
			}
		})
	}
}

func TestDecodeEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "---\n", "# nothing\n---\n---\n"} {
		d := DecodeAll([]byte(in))
		if len(d.Services)+len(d.Slices)+len(d.Errors)+len(d.Ignored) != 0 {
			t.Errorf("Decode(%q) = %+v, want nothing", in, d)
		}
	}
}

// decodeOK is a test helper for valid input.
func decodeOK(t *testing.T, docs ...string) *Decoded {
	t.Helper()
	d := DecodeAll([]byte(strings.Join(docs, "---\n")))
	if len(d.Errors) > 0 {
		t.Fatalf("decode: %v", d.Errors)
	}
	return &d
}

// hasError reports whether errs holds an error of that kind, name and reason.
func hasError(errs []model.ObjectError, kind, name, reason string) bool {
	for _, e := range errs {
		if e.Kind == kind && e.Name == name && e.Reason == reason {
			return true
		}
	}
	return false
}

func TestDecoderReusesUnchangedDocumentsOnly(t *testing.T) {
	svc := func(name, ip string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: " + name + "}\nspec: {clusterIP: " + ip + ", ports: [{port: 80}]}\n"
	}
	var c Decoder
	first := c.Decode([]byte(svc("a", "10.96.0.1") + "---\n" + svc("b", "10.96.0.2")))
	second := c.Decode([]byte(svc("a", "10.96.0.1") + "---\n" + svc("b", "10.96.0.3")))
	if len(first.Services) != 2 || len(second.Services) != 2 {
		t.Fatalf("decoded %d then %d services", len(first.Services), len(second.Services))
	}
	if first.Services[0] != second.Services[0] {
		t.Error("an unchanged document was decoded again")
	}
	if first.Services[1] == second.Services[1] || second.Services[1].Spec.ClusterIP != "10.96.0.3" {
		t.Errorf("the edited document was not decoded again: %+v", second.Services[1].Spec)
	}
	// A broken file yields nothing, and the cache does not hide the error next time.
	for i := 0; i < 2; i++ {
		if d := c.Decode([]byte(svc("a", "10.96.0.1") + "---\nkind: [\n")); len(d.Errors) != 1 || len(d.Services) != 0 {
			t.Fatalf("round %d: broken file decoded to %+v", i, d)
		}
	}
}

// An object whose identity can be read fails alone, whatever else is wrong with it:
// the rest of the file is used.
func TestDecodeRejectsObjectsAlone(t *testing.T) {
	good := serviceYAML("web", "10.96.0.10")
	in := strings.Join([]string{
		good,
		strings.Replace(serviceYAML("api", "10.96.0.11"), "port: 80", "port: eighty", 1),
		"apiVersion: v1\nkind: Servcie\nmetadata: {name: web2, namespace: shop}\n",
		"apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all}\nspec: {action: DENY}\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: deny-typo}\nspec: {action: DENY}\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad-type}\nspec: {rules: [{from: [{source: {ipBlocks: \"10.0.0.1\"}}]}]}\n",
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n",
	}, "---\n")
	d := DecodeAll([]byte(in))
	if len(d.Errors) > 0 || len(d.Services) != 1 || d.Services[0].Name != "web" {
		t.Fatalf("errors %v, services %d: want web decoded and no file error", d.Errors, len(d.Services))
	}
	type row struct {
		kind, ns, name, reason string
		ours, policyLike       bool
	}
	var got []row
	for _, r := range d.Rejected {
		got = append(got, row{r.Kind, r.Namespace, r.Name, r.Err.Reason, r.Ours, r.PolicyLike})
		if r.Err.Kind != r.Kind || r.Err.Name != r.Name || !strings.Contains(r.Err.Message, "document ") {
			t.Errorf("error %+v does not name its object and document", r.Err)
		}
	}
	want := []row{
		{"Service", "default", "api", ReasonMalformedObject, true, false},
		{"Servcie", "shop", "web2", ReasonUnknownKind, false, false},
		{"AuthorizationPolicy", "default", "deny-all", ReasonUnsupportedAPIVersion, true, true},
		{"AuthorisationPolicy", "default", "deny-typo", ReasonUnknownKind, false, true},
		{"AuthorizationPolicy", "default", "bad-type", ReasonMalformedObject, true, true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rejected:\n got %v\nwant %v", got, want)
	}
	if d.Ignored["networking.k8s.io/v1/NetworkPolicy"] != 1 {
		t.Errorf("ignored = %v, want the NetworkPolicy counted", d.Ignored)
	}
}
