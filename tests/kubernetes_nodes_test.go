package tests

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// threeNode is one simulated node: its own env (netns, cgroup, pin dir), its agent, and
// one demo backend per node port in its backend-1 host.
type threeNode struct {
	name     string
	env      *harness.Env
	agent    *harness.Agent
	port     int                     // this node's endpoint port in its EndpointSlice
	backends map[int]*netlab.Backend // by TCP port: every node's port listens in every env
}

// Three nodes on one real API server. Each env is an isolated topology, so every env's
// backend-1 has the same address (10.200.0.11): identical address:port endpoints would be
// deduplicated across slices by the model and could not tell the nodes apart. So each
// node's endpoint has its own port (node-a 8081, node-b 8082, node-c 8083), and every env
// listens on all three ports: if an agent picked another node's endpoint, that env's
// listener on the foreign port would accept the connection and the check below would see it.
//
// One Service (internalTrafficPolicy Local) with one EndpointSlice per node; each agent
// must program only its own node's endpoint and its client must reach only that one.
// Restarting node-b's agent must leave node-a's and node-c's maps and map op counters
// untouched, keep node-b's datapath serving while it is down, and write nothing on restart.
func TestThreeNodesLocalEndpointsAndARestartDisturbsNobody(t *testing.T) {
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	c := api.Client

	names := []string{"node-a", "node-b", "node-c"}
	ports := []int{8081, 8082, 8083}
	nodes := make([]*threeNode, len(names))
	for i, n := range names {
		env := harness.NewEnv(t, "backend-1")
		nd := &threeNode{name: n, env: env, port: ports[i], backends: map[int]*netlab.Backend{}}
		for j, p := range ports {
			b, err := netlab.StartBackend(env.Host("backend-1"), p, 5301+j)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			nd.backends[p] = b
		}
		nodes[i] = nd
	}

	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	local := corev1.ServiceInternalTrafficPolicyLocal
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"},
		Spec: corev1.ServiceSpec{ClusterIP: vip4.String(), InternalTrafficPolicy: &local,
			Ports: []corev1.ServicePort{{Name: "http", Port: int32(netlab.ServiceHTTPPort)}}}}
	if _, err := c.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		port, pname, node := int32(nd.port), "http", nd.name
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-" + nd.name, Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{nd.env.Host("backend-1").IPv4.String()}, NodeName: &node}},
		}
		if _, err := c.DiscoveryV1().EndpointSlices("demo").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	start := func(nd *threeNode) *harness.Agent {
		return nd.env.StartAgent(t, "", "--source", "kubernetes", "--kubeconfig", api.Kubeconfig, "--node-name", nd.name)
	}
	for _, nd := range nodes {
		nd.agent = start(nd)
	}

	// onlyOwn: the frontend has exactly this node's endpoint.
	onlyOwn := func(nd *threeNode) {
		t.Helper()
		want := netip.AddrPortFrom(nd.env.Host("backend-1").IPv4, uint16(nd.port))
		nd.env.WaitPinned(t, nd.name+"'s endpoint programmed", hasBackend(web4, want.Addr()))
		s, ok := harness.Frontend(nd.env.PinnedServices(t), web4)
		if !ok || len(s.Backends) != 1 || s.Backends[0].Address != want {
			t.Fatalf("%s: pinned %s = %+v, want exactly the backend %s", nd.name, web4, s, want)
		}
	}
	// traffic: n connects from the node's client all succeed and land only on its own port.
	traffic := func(nd *threeNode, n int, what string) {
		t.Helper()
		before := map[int]int64{}
		for p, b := range nd.backends {
			before[p] = b.AcceptCount()
		}
		res := nd.env.Run(t, nd.env.Host("client"), "tcp", tcpTo(vip4), n)
		if len(res.Errors) > 0 || len(res.TCP) != n {
			t.Fatalf("%s %s: %d/%d ok, errors %v", nd.name, what, len(res.TCP), n, res.Errors)
		}
		got := map[int]int64{}
		for p, b := range nd.backends {
			got[p] = b.AcceptCount() - before[p]
		}
		for p, d := range got {
			if (p == nd.port && d != int64(n)) || (p != nd.port && d != 0) {
				t.Fatalf("%s %s: accepts by port %v, want all %d on its own port %d", nd.name, what, got, n, nd.port)
			}
		}
	}
	for _, nd := range nodes {
		onlyOwn(nd)
		traffic(nd, 20, "with three agents up")
	}

	// Restart node-b's agent.
	a, b, cc := nodes[0], nodes[1], nodes[2]
	type snap struct {
		pinned         string
		update, delete float64
	}
	take := func(nd *threeNode) snap {
		return snap{pinnedJSON(t, nd.env), mapOps(t, nd.agent, "update"), mapOps(t, nd.agent, "delete")}
	}
	if mapOps(t, b.agent, "update") == 0 {
		t.Fatal("node-b's cold start wrote no map entries: the restart check would prove nothing")
	}
	beforeA, beforeB, beforeC := take(a), take(b), take(cc)

	b.agent.Stop(t)
	traffic(b, 20, "with its agent down")
	if got := pinnedJSON(t, b.env); got != beforeB.pinned {
		t.Fatalf("node-b's maps changed when its agent stopped:\nbefore %s\nafter  %s", beforeB.pinned, got)
	}
	b.agent = start(b)
	if u, d := mapOps(t, b.agent, "update"), mapOps(t, b.agent, "delete"); u != 0 || d != 0 {
		t.Errorf("node-b's restarted agent wrote %v and deleted %v map entries; want 0 and 0", u, d)
	}
	time.Sleep(2 * time.Second) // room for any watch event the restart might cause on the others
	if got := pinnedJSON(t, b.env); got != beforeB.pinned {
		t.Errorf("node-b's maps changed across its restart:\nbefore %s\nafter  %s", beforeB.pinned, got)
	}
	for _, x := range []struct {
		nd     *threeNode
		before snap
	}{{a, beforeA}, {cc, beforeC}} {
		if after := take(x.nd); after != x.before {
			t.Errorf("%s disturbed by node-b's restart:\nbefore %s\nafter  %s", x.nd.name, fmtSnap(x.before.pinned, x.before.update, x.before.delete), fmtSnap(after.pinned, after.update, after.delete))
		}
	}
	for _, nd := range nodes {
		onlyOwn(nd)
		traffic(nd, 20, "after node-b's restart")
	}
}

func fmtSnap(pinned string, update, delete float64) string {
	return fmt.Sprintf("updates %v deletes %v maps %s", update, delete, pinned)
}
