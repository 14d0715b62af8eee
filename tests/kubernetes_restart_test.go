package tests

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An API server restart mid-test: traffic keeps flowing during the outage, the agent's
// relist after it rewrites no map entry, and a change made after the server is back is
// applied.
func TestAPIServerRestartDisturbsNothing(t *testing.T) {
	api, env := webOnAPIServer(t)
	ctx := context.Background()
	c := api.Client
	a := env.StartAgent(t, "", "--source", "kubernetes", "--kubeconfig", api.Kubeconfig)
	env.WaitPinned(t, "web programmed", hasBackend(web4, env.Host("backend-2").IPv4))
	client := env.Host("client")
	updates, deletes := mapOps(t, a, "update"), mapOps(t, a, "delete")
	reconciled := a.Metric(t, "sockmesh_reconcile_duration_seconds", nil)
	before := pinnedJSON(t, env)

	api.Stop()
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 50); len(res.Errors) > 0 || len(res.TCP) != 50 {
		t.Fatalf("connects with the API server down: %d ok, errors %v", len(res.TCP), res.Errors)
	}
	api.Restart(t)

	// Once the server is back the informers resume (a relist re-delivers every object
	// unchanged, which costs no pass). A Service meant for another proxy then makes one
	// pass that changes nothing: events arrive in order, so when its reconcile is done,
	// whatever the relist delivered was handled, and must have written nothing.
	probe := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "not-ours", Namespace: "demo",
		Labels: map[string]string{"service.kubernetes.io/service-proxy-name": "another-proxy"}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.7.7", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, err := c.CoreV1().Services("demo").Create(ctx, probe, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for a.Metric(t, "sockmesh_reconcile_duration_seconds", nil) == reconciled {
		if time.Now().After(deadline) {
			t.Fatal("the agent never reconciled the probe Service after the API server came back")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if u, d := mapOps(t, a, "update"), mapOps(t, a, "delete"); u != updates || d != deletes {
		t.Errorf("across the restart (and its relist) the agent wrote %v and deleted %v map entries; want none", u-updates, d-deletes)
	}
	if after := pinnedJSON(t, env); after != before {
		t.Errorf("maps changed across the API server restart:\nbefore %s\nafter  %s", before, after)
	}

	if _, err := c.DiscoveryV1().EndpointSlices("demo").Update(ctx, webSlice(env, "backend-2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.WaitPinned(t, "a change after the restart applied", not(hasBackend(web4, env.Host("backend-1").IPv4)))
}
