package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/sockmesh/sockmesh/tests/harness"
)

// TestRealAPIServerServesServicesAndSlices checks the harness's real kube-apiserver: it
// stores and watches Services and EndpointSlices, keeps them across a restart, and
// authenticates static and ServiceAccount tokens with RBAC deciding what they may do.
func TestRealAPIServerServesServicesAndSlices(t *testing.T) {
	api := harness.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns = "smoke"

	mustCreate(t, "namespace", func() error {
		_, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, "service web", func() error {
		_, err := api.Client.CoreV1().Services(ns).Create(ctx, smokeService("web", "10.96.0.10"), metav1.CreateOptions{})
		return err
	})
	var slice *discoveryv1.EndpointSlice
	mustCreate(t, "endpointslice web-1", func() (err error) {
		slice, err = api.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, smokeSlice("web", "10.0.0.1"), metav1.CreateOptions{})
		return err
	})
	checkSmokeObjects(ctx, t, api.Client, ns, "10.0.0.1")

	// A watch from the slice's resourceVersion sees the update.
	w, err := api.Client.DiscoveryV1().EndpointSlices(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: slice.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	slice.Endpoints = append(slice.Endpoints, smokeEndpoint("10.0.0.2"))
	if _, err := api.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSliceEvent(t, w, 2)

	// A static token added now counts after the restart; RBAC knows the user but allows
	// nothing.
	aliceToken := api.AddToken(t, "alice", "testers")
	api.Restart(t)
	checkSmokeObjects(ctx, t, api.Client, ns, "10.0.0.1", "10.0.0.2")
	mustCreate(t, "service web2 after restart", func() error {
		_, err := api.Client.CoreV1().Services(ns).Create(ctx, smokeService("web2", "10.96.0.11"), metav1.CreateOptions{})
		return err
	})
	alice := kubernetes.NewForConfigOrDie(api.ConfigFor(aliceToken))
	_, err = alice.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `"alice"`) {
		t.Fatalf("alice listing services: want Forbidden for user alice, got %v", err)
	}

	// A ServiceAccount token: forbidden until a ClusterRoleBinding grants list.
	agent := kubernetes.NewForConfigOrDie(api.ConfigFor(api.ServiceAccountToken(t, ns, "agent")))
	if _, err := agent.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("unbound ServiceAccount listing services: want Forbidden, got %v", err)
	}
	bindServiceReader(ctx, t, api.Client, ns, "agent")
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := agent.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			if len(list.Items) != 2 {
				t.Fatalf("ServiceAccount sees %d services, want 2", len(list.Items))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bound ServiceAccount listing services: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustCreate(t *testing.T, what string, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatalf("create %s: %v", what, err)
	}
}

func smokeService(name, clusterIP string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP,
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
}

func smokeSlice(service string, ips ...string) *discoveryv1.EndpointSlice {
	name, port, proto := "http", int32(80), corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:   service + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, smokeEndpoint(ip))
	}
	return s
}

func smokeEndpoint(ip string) discoveryv1.Endpoint {
	ready := true
	return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
}

// checkSmokeObjects reads back Service web and its slice and checks what was written.
func checkSmokeObjects(ctx context.Context, t *testing.T, c kubernetes.Interface, ns string, ips ...string) {
	t.Helper()
	svc, err := c.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != "10.96.0.10" || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 {
		t.Fatalf("service web read back as clusterIP %s ports %v", svc.Spec.ClusterIP, svc.Spec.Ports)
	}
	slice, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ep := range slice.Endpoints {
		got = append(got, ep.Addresses...)
	}
	if strings.Join(got, ",") != strings.Join(ips, ",") {
		t.Fatalf("endpointslice web-1 read back with addresses %v, want %v", got, ips)
	}
}

// waitSliceEvent waits for a Modified event of a slice with n endpoints.
func waitSliceEvent(t *testing.T, w watch.Interface, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch closed before the update arrived")
			}
			if s, isSlice := ev.Object.(*discoveryv1.EndpointSlice); isSlice && ev.Type == watch.Modified && len(s.Endpoints) == n {
				return
			}
		case <-timeout:
			t.Fatalf("no Modified event with %d endpoints within 10s", n)
		}
	}
}

// bindServiceReader lets ServiceAccount ns/sa get, list and watch Services cluster-wide.
func bindServiceReader(ctx context.Context, t *testing.T, c kubernetes.Interface, ns, sa string) {
	t.Helper()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "smoke-service-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}}},
	}
	mustCreate(t, "clusterrole", func() error {
		_, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
		return err
	})
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "smoke-service-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}
	mustCreate(t, "clusterrolebinding", func() error {
		_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
		return err
	})
}
