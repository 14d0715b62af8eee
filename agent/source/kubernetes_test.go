package source

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sockmesh/sockmesh/agent/model"
)

// A unit test on client-go's fake clientset: the informers feed the Store, every change
// becomes an Update, and nothing is delivered before the first lists. The same path runs
// against a real API server in tests/.
func TestKubernetesSourceFollowsTheAPI(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		slice("web-1", "10.0.1.1"),
	)
	grant(client, nil)
	servePolicies(client)
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{AuthorizationPolicies: "AuthorizationPolicyList"},
		&unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "deny-all", "namespace": "default"},
			"spec":     map[string]any{"action": "DENY", "rules": []any{map[string]any{}}},
		}})
	var mu sync.Mutex
	var updates []Update
	k := &Kubernetes{Client: client, Dynamic: dyn, MinSync: 10 * time.Millisecond,
		OnUpdate: func(u Update) { mu.Lock(); updates = append(updates, u); mu.Unlock() }}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- k.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	latest := func() Update {
		mu.Lock()
		defer mu.Unlock()
		if len(updates) == 0 {
			return Update{}
		}
		return updates[len(updates)-1]
	}
	waitFor := func(what string, cond func(*model.Snapshot) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if u := latest(); u.Snapshot != nil && cond(u.Snapshot) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s; last update %+v", what, latest())
	}
	waitFor("the first list", func(s *model.Snapshot) bool {
		ps := s.Policies[model.ServiceName{Namespace: "default", Name: "web"}]
		return backendsOf(s, frontend) == "[10.0.1.1:8080]" && len(ps) == 1 && ps[0].Action == model.PolicyDeny
	})
	mu.Lock()
	if first := updates[0]; first.Snapshot != nil || first.NoInput == "" {
		t.Errorf("first update %+v: want no input until the lists are in", first)
	}
	mu.Unlock()

	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("web-1", "10.0.1.2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the slice update", func(s *model.Snapshot) bool { return backendsOf(s, frontend) == "[10.0.1.2:8080]" })
	if err := client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the delete", func(s *model.Snapshot) bool { return backendsOf(s, frontend) == "absent" })
}

func slice(name, addr string) *discoveryv1.EndpointSlice {
	port, portName := int32(8080), "http"
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}}},
	}
}
