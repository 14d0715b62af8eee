package tests

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// The agent runs as ServiceAccount sockmesh-system/sockmesh bound to exactly the
// ClusterRole of manifests/rbac.yaml, and serves a Service through its ClusterIP.
func TestAgentRunsWithExactlyTheManifestClusterRole(t *testing.T) {
	api := harness.StartAPIServer(t)
	role, binding := manifestRBAC(t)
	kubeconfig := agentKubeconfig(t, api, role, binding)
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	createWeb(t, api.Client, webSlice(env, "backend-1", "backend-2"))

	a := env.StartAgent(t, "", "--source", "kubernetes", "--kubeconfig", kubeconfig)
	env.WaitPinned(t, "web programmed", hasBackend(web4, env.Host("backend-2").IPv4))
	res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 10)
	if len(res.Errors) > 0 || len(res.TCP) != 10 {
		t.Fatalf("through the ClusterIP: %d connections, errors %v", len(res.TCP), res.Errors)
	}
	if log := a.Log(); strings.Contains(log, "forbidden") || strings.Contains(log, "may not") {
		t.Errorf("the agent logged a permission problem with the manifest's ClusterRole:\n%s", log)
	}
}

// Bound to the manifest's ClusterRole minus list and watch on pods, the agent exits
// promptly, naming exactly those two permissions and the manifest that grants them.
func TestAgentWithoutAPermissionNamesIt(t *testing.T) {
	api := harness.StartAPIServer(t)
	role, binding := manifestRBAC(t)
	role = withoutListWatch(role, "", "pods")
	kubeconfig := agentKubeconfig(t, api, role, binding)
	env := harness.NewEnv(t)

	a := env.LaunchAgent(t, "", "--source", "kubernetes", "--kubeconfig", kubeconfig)
	exited, err := a.Exited(30 * time.Second)
	if !exited {
		t.Fatalf("the agent still runs 30s after start without list/watch pods:\n%s", a.Log())
	}
	if err == nil {
		t.Errorf("the agent exited with status 0 without list/watch pods")
	}
	log := a.Log()
	t.Logf("the agent exited (%v), its last line: %s", err, lastLine(log))
	want := `may not list pods, watch pods; the ClusterRole in ` + source.RBACManifest + ` grants`
	if !strings.Contains(log, want) || !strings.Contains(log, "system:serviceaccount:sockmesh-system:sockmesh") {
		t.Errorf("the agent's log does not say %q (and who was denied):\n%s", want, log)
	}
}

// An EndpointSlice the API server accepts but sockmesh rejects in part (a backend
// weight over the maximum) gets a Warning Event regarding it, posted by the agent with
// the manifest's permissions, with the reason in CamelCase; a later batch that still has
// the error does not post it again.
func TestRejectedObjectGetsAnEvent(t *testing.T) {
	api := harness.StartAPIServer(t)
	role, binding := manifestRBAC(t)
	kubeconfig := agentKubeconfig(t, api, role, binding)
	env := harness.NewEnv(t, "backend-1")
	env.StartBackends(t, "backend-1")
	ctx := context.Background()
	bad := webSlice(env, "backend-1")
	bad.Annotations = map[string]string{model.BackendWeightsAnnotation: `{"` + env.Host("backend-1").IPv4.String() + `": 5000}`}
	createWeb(t, api.Client, bad)
	created, err := api.Client.DiscoveryV1().EndpointSlices("demo").Get(ctx, bad.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	const node = "rbac-test-node"
	env.StartAgent(t, "", "--source", "kubernetes", "--kubeconfig", kubeconfig, "--node-name", node)
	env.WaitPinned(t, "web programmed (weights ignored)", hasBackend(web4, env.Host("backend-1").IPv4))
	ev := waitForEvent(t, api.Client, "demo", "EndpointSlice", bad.Name)
	if ev.Type != corev1.EventTypeWarning || ev.Reason != "InvalidAnnotation" || !strings.Contains(ev.Message, "5000") ||
		ev.ReportingController != source.EventReportingController || ev.ReportingInstance != node {
		t.Errorf("event: type %s reason %s message %q by %s/%s", ev.Type, ev.Reason, ev.Message, ev.ReportingController, ev.ReportingInstance)
	}
	if ref := ev.InvolvedObject; ref.APIVersion != "discovery.k8s.io/v1" || ref.UID != created.UID {
		t.Errorf("event regarding %+v; want discovery.k8s.io/v1 with UID %s", ref, created.UID)
	}

	// Another batch (a second Service) with the slice's error still there.
	other := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "demo"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.11", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, err := api.Client.CoreV1().Services("demo").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.WaitPinned(t, "the second Service programmed", func(s []lbmap.ListedService) bool {
		_, ok := harness.Frontend(s, "10.96.0.11:80/TCP")
		return ok
	})
	time.Sleep(500 * time.Millisecond) // an event posted again would be written by now
	events := eventsRegarding(t, api.Client, "demo", "EndpointSlice", bad.Name)
	if len(events) != 1 || events[0].Count != 1 {
		t.Errorf("after another batch: %+v; want the one event, posted once", events)
	}
}

// manifestRBAC reads the ClusterRole and ClusterRoleBinding of manifests/rbac.yaml.
func manifestRBAC(t *testing.T) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	t.Helper()
	raw, err := os.ReadFile("../" + source.RBACManifest)
	if err != nil {
		t.Fatal(err)
	}
	var role *rbacv1.ClusterRole
	var binding *rbacv1.ClusterRoleBinding
	for _, doc := range bytes.Split(raw, []byte("\n---")) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", source.RBACManifest, err)
		}
		switch meta.Kind {
		case "ClusterRole":
			role = &rbacv1.ClusterRole{}
			err = yaml.UnmarshalStrict(doc, role)
		case "ClusterRoleBinding":
			binding = &rbacv1.ClusterRoleBinding{}
			err = yaml.UnmarshalStrict(doc, binding)
		}
		if err != nil {
			t.Fatalf("%s: %s: %v", source.RBACManifest, meta.Kind, err)
		}
	}
	if role == nil || binding == nil || binding.RoleRef.Name != role.Name {
		t.Fatalf("%s: want a ClusterRole and a ClusterRoleBinding to it", source.RBACManifest)
	}
	return role, binding
}

// withoutListWatch is role with list and watch taken away from group/resource (other
// verbs on it, and every other rule, are kept).
func withoutListWatch(role *rbacv1.ClusterRole, group, resource string) *rbacv1.ClusterRole {
	out := role.DeepCopy()
	out.Rules = nil
	for _, r := range role.Rules {
		if !slices.Contains(r.APIGroups, group) || !slices.Contains(r.Resources, resource) {
			out.Rules = append(out.Rules, r)
			continue
		}
		rest := r.DeepCopy()
		rest.Resources = slices.DeleteFunc(slices.Clone(r.Resources), func(s string) bool { return s == resource })
		if len(rest.Resources) > 0 {
			out.Rules = append(out.Rules, *rest)
		}
		kept := slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return v == "list" || v == "watch" })
		if len(kept) > 0 {
			out.Rules = append(out.Rules, rbacv1.PolicyRule{APIGroups: []string{group}, Resources: []string{resource}, Verbs: kept})
		}
	}
	return out
}

// agentKubeconfig creates namespace sockmesh-system, role and binding (whose subject is
// the agent's ServiceAccount), and returns a kubeconfig with that ServiceAccount's token.
func agentKubeconfig(t *testing.T, api *harness.APIServer, role *rbacv1.ClusterRole, binding *rbacv1.ClusterRoleBinding) string {
	t.Helper()
	ctx := context.Background()
	c := api.Client
	if len(binding.Subjects) != 1 || binding.Subjects[0].Kind != rbacv1.ServiceAccountKind {
		t.Fatalf("binding %s: want one ServiceAccount subject, got %+v", binding.Name, binding.Subjects)
	}
	sa := binding.Subjects[0]
	mustCreate(t, "namespace "+sa.Namespace, func() error {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: sa.Namespace}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, "clusterrole "+role.Name, func() error {
		_, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, "clusterrolebinding "+binding.Name, func() error {
		_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
		return err
	})
	return api.WriteKubeconfig(t, sa.Name, api.ServiceAccountToken(t, sa.Namespace, sa.Name))
}

// eventsRegarding lists the core/v1 Events in namespace about kind/name.
func eventsRegarding(t *testing.T, c kubernetes.Interface, namespace, kind, name string) []corev1.Event {
	t.Helper()
	list, err := c.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// waitForEvent polls for up to 20 s until an Event about kind/name exists, and returns
// the first.
func waitForEvent(t *testing.T, c kubernetes.Interface, namespace, kind, name string) corev1.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if events := eventsRegarding(t, c, namespace, kind, name); len(events) > 0 {
			return events[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event regarding %s %s/%s within 20s", kind, namespace, name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lastLine is the last non-empty line of a log.
func lastLine(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	return lines[len(lines)-1]
}
