package tests

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// The basic path of --source kubernetes, on a real kube-apiserver and etcd: a Service and
// an EndpointSlice created with client-go are reached through the ClusterIP from a test
// namespace; an update and a delete are followed.
func TestKubernetesSourceServesAServiceThroughTheClusterIP(t *testing.T) {
	api, env := webOnAPIServer(t)
	ctx := context.Background()
	c := api.Client

	env.StartAgent(t, "", "--source", "kubernetes", "--kubeconfig", api.Kubeconfig)
	client := env.Host("client")
	res := env.Run(t, client, "tcp", tcpTo(vip4), 40)
	if seen := backendsSeen(res); len(res.Errors) > 0 || seen["backend-1"] == 0 || seen["backend-2"] == 0 {
		t.Fatalf("through the ClusterIP: %v, errors %v", seen, res.Errors)
	}

	if _, err := c.DiscoveryV1().EndpointSlices("demo").Update(ctx, webSlice(env, "backend-2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.WaitPinned(t, "backend-1 removed", not(hasBackend(web4, env.Host("backend-1").IPv4)))
	if seen := backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 20)); seen["backend-1"] > 0 {
		t.Errorf("after the update: %v", seen)
	}

	if err := c.CoreV1().Services("demo").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	env.WaitPinned(t, "the service deleted", func(s []lbmap.ListedService) bool {
		_, there := harness.Frontend(s, web4)
		return !there // default/kubernetes stays: the API server's own Service
	})
}

// webOnAPIServer is a real API server holding demo/web over backend-1 and backend-2 of
// a fresh env: the start of the tests of the kubernetes source.
func webOnAPIServer(t *testing.T) (*harness.APIServer, *harness.Env) {
	api := harness.StartAPIServer(t)
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	createWeb(t, api.Client, webSlice(env, "backend-1", "backend-2"))
	return api, env
}

// webSlice is web's IPv4 EndpointSlice over the named backends.
func webSlice(env *harness.Env, backends ...string) *discoveryv1.EndpointSlice {
	port, name := int32(netlab.BackendTCPPort), "http"
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	for _, b := range backends {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{env.Host(b).IPv4.String()}})
	}
	return s
}

// createWeb creates namespace demo, Service demo/web on vip4 and the given slice.
func createWeb(t *testing.T, c kubernetes.Interface, slice *discoveryv1.EndpointSlice) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"},
		Spec: corev1.ServiceSpec{ClusterIP: vip4.String(), Ports: []corev1.ServicePort{{Name: "http", Port: int32(netlab.ServiceHTTPPort)}}}}
	if _, err := c.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DiscoveryV1().EndpointSlices("demo").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
