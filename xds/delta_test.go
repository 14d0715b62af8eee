package xds

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sockmesh/sockmesh/agent/model"
)

// deltaClient is a delta ADS client that keeps what it was sent, per type, and ACKs
// every response.
type deltaClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discoveryv3.DeltaDiscoveryResponse
	held   map[string]map[string]string // type URL → name → version
	got    int                          // resources received
	// names, when set, are the names the client subscribes to: what the server
	// sends of others is ignored, as Envoy does. A response the server sent before
	// it read an unsubscribe can still name the resource.
	names map[string]bool
}

func newDeltaClient(t *testing.T, ts *testServer) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := ts.ads().DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: stream, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 16), held: map[string]map[string]string{}}
	go func() {
		defer close(c.resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *deltaClient) send(r *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	r.Node = &corev3.Node{Id: "test", UserAgentName: "envoy"}
	if err := c.stream.Send(r); err != nil {
		c.t.Fatal(err)
	}
}

// next applies the next response and ACKs it.
func (c *deltaClient) next(why func() string) {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatalf("stream closed while waiting: %s", why())
		}
		held := c.held[r.TypeUrl]
		if held == nil {
			held = map[string]string{}
			c.held[r.TypeUrl] = held
		}
		for _, res := range r.Resources {
			if c.names != nil && !c.names[res.Name] {
				continue
			}
			m, err := res.Resource.UnmarshalNew()
			if err != nil || cachev3.GetResourceName(m) != res.Name {
				c.t.Fatalf("resource %q of %s does not decode to itself: %v", res.Name, r.TypeUrl, err)
			}
			held[res.Name] = res.Version
			c.got++
		}
		for _, name := range r.RemovedResources {
			if c.names != nil && !c.names[name] {
				continue
			}
			if _, ok := held[name]; !ok {
				c.t.Fatalf("%s: removal of %q, which the client was never sent", r.TypeUrl, name)
			}
			delete(held, name)
		}
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	case <-time.After(10 * time.Second):
		c.t.Fatalf("no response in 10 s: %s", why())
	}
}

// settle reads responses until the client holds want for each of its types.
func (c *deltaClient) settle(want map[string]map[string]string) {
	c.t.Helper()
	for {
		var diff []string
		for typeURL, w := range want {
			if !maps.Equal(w, c.held[typeURL]) && !(len(w) == 0 && len(c.held[typeURL]) == 0) {
				diff = append(diff, fmt.Sprintf("%s: holds %d, want %d", typeURL, len(c.held[typeURL]), len(w)))
			}
		}
		if diff == nil {
			return
		}
		c.next(func() string { return fmt.Sprint(diff) })
	}
}

// servedVersions are the versions the server serves Envoy, of the given types and,
// when names is not nil, of those names alone.
func servedVersions(ts *testServer, names map[string]bool, typeURLs ...string) map[string]map[string]string {
	envoy, _ := ts.Served()
	out := map[string]map[string]string{}
	for _, t := range typeURLs {
		out[t] = map[string]string{}
		for name, v := range envoy.GetVersionMap(t) {
			if names == nil || names[name] {
				out[t][name] = v
			}
		}
	}
	return out
}

// varied is n services whose endpoint counts follow k: a new k changes many of them,
// and a new n adds or removes services (clusters, listeners).
func varied(n, k int) *model.Snapshot {
	s := model.NewSnapshot()
	for i := range n {
		svc := &model.Service{Name: model.ServiceName{Namespace: "ns", Name: "svc" + svcSuffix(i)}, PortName: "http",
			Frontend: model.Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: model.TCP}}
		for j := range 1 + (i*k+k)%4 {
			svc.Backends = append(svc.Backends, model.Backend{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j + 1)}), Port: 8080, Weight: 1, Ready: true, Serving: true})
		}
		s.Services[svc.Frontend] = svc
	}
	return s
}

func clusterNameOf(i int) string {
	return servicePort{name: model.ServiceName{Namespace: "ns", Name: "svc" + svcSuffix(i)}, portName: "http", port: 80, protocol: model.TCP}.clusterName()
}

// TestDeltaClientsMirrorTheServedSnapshots makes endpoint changes (patched snapshots)
// and service changes (replaced ones) at random, with a wildcard client on three types
// and a client that subscribes and unsubscribes names: after each, both hold exactly
// what is served, as versions, and were sent removals only of what they held.
func TestDeltaClientsMirrorTheServedSnapshots(t *testing.T) {
	ts := startServer(t, varied(30, 0))
	all := newDeltaClient(t, ts)
	types := []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType}
	for _, typeURL := range types {
		all.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL})
	}
	some := newDeltaClient(t, ts)
	subscribed := map[string]bool{}
	some.names = subscribed
	for i := range 5 {
		subscribed[clusterNameOf(i)] = true
	}
	some.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: slices.Collect(maps.Keys(subscribed))})
	all.settle(servedVersions(ts, nil, types...))
	some.settle(servedVersions(ts, subscribed, resourcev3.EndpointType))

	rng := rand.New(rand.NewPCG(1, 2))
	n, k := 30, 0
	for step := range 60 {
		switch rng.IntN(3) {
		case 0: // services come and go: a new snapshot
			n = 20 + rng.IntN(3)*10
		default: // endpoints only: the snapshot is patched
			k = rng.IntN(5)
		}
		if _, err := ts.Update(context.Background(), varied(n, k)); err != nil {
			t.Fatal(err)
		}
		all.settle(servedVersions(ts, nil, types...))
		some.settle(servedVersions(ts, subscribed, resourcev3.EndpointType))
		if step%3 == 0 { // the second client changes what it watches
			add, drop := clusterNameOf(rng.IntN(45)), clusterNameOf(rng.IntN(45))
			subscribed[add] = true
			req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{add}}
			if drop != add {
				delete(subscribed, drop)
				req.ResourceNamesUnsubscribe = []string{drop}
			}
			some.send(req)
			// An unsubscribed name is forgotten by the client, with no removal.
			delete(some.held[resourcev3.EndpointType], drop)
			some.settle(servedVersions(ts, subscribed, resourcev3.EndpointType))
		}
	}
	t.Logf("wildcard client got %d resources, named client %d, over 60 updates", all.got, some.got)
}

// TestDeltaChangeCostsItsOwnResources: one endpoint change compares the changed
// resource alone, at 50 services and at 3,000 alike, on the update and on the watch
// the ACK opens. go-control-plane's snapshot cache compared every resource of the type
// on both.
func TestDeltaChangeCostsItsOwnResources(t *testing.T) {
	compared := func(n int) int {
		ts := startServer(t, scaled(n, 0))
		c := newDeltaClient(t, ts)
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType})
		c.settle(servedVersions(ts, nil, resourcev3.ClusterType, resourcev3.EndpointType))
		ts.envoyDelta.mu.Lock()
		before := ts.envoyDelta.compared
		ts.envoyDelta.mu.Unlock()
		for i := range 4 {
			if _, err := ts.Update(context.Background(), scaled(n, (i+1)%2)); err != nil {
				t.Fatal(err)
			}
			got := c.got
			c.settle(servedVersions(ts, nil, resourcev3.ClusterType, resourcev3.EndpointType))
			if c.got-got != 1 {
				t.Fatalf("%d services: one endpoint change sent %d resources, want 1", n, c.got-got)
			}
		}
		ts.envoyDelta.mu.Lock()
		defer ts.envoyDelta.mu.Unlock()
		return ts.envoyDelta.compared - before
	}
	small, large := compared(50), compared(3000)
	if small != large || large > 4 {
		t.Fatalf("4 endpoint changes compared %d resources at 50 services and %d at 3,000; want the same, at most one per change", small, large)
	}
}

// TestDeltaReconnectWithInitialVersionsGetsOnlyTheDifference: a client that comes
// back stating what it holds is sent what changed meanwhile, and removals of what
// is gone, not everything again.
func TestDeltaReconnectWithInitialVersionsGetsOnlyTheDifference(t *testing.T) {
	ts := startServer(t, scaled(20, 0))
	first := newDeltaClient(t, ts)
	first.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType})
	first.settle(servedVersions(ts, nil, resourcev3.EndpointType))
	held := maps.Clone(first.held[resourcev3.EndpointType])
	held["gone-cluster"] = "v0" // a cluster the server no longer has
	if _, err := ts.Update(context.Background(), scaled(20, 1)); err != nil {
		t.Fatal(err)
	}
	again := newDeltaClient(t, ts)
	again.held[resourcev3.EndpointType] = maps.Clone(held)
	again.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, InitialResourceVersions: held})
	again.settle(servedVersions(ts, nil, resourcev3.EndpointType))
	if again.got != 1 {
		t.Fatalf("a client holding all but one change was sent %d resources, want 1", again.got)
	}
}

// TestDeltaStreamStateIsForgottenOnClose: the delta cache holds a stream's state
// while it is open and drops it when it closes.
func TestDeltaStreamStateIsForgottenOnClose(t *testing.T) {
	ts := startServer(t, scaled(10, 0))
	streams := func() int {
		ts.envoyDelta.mu.Lock()
		defer ts.envoyDelta.mu.Unlock()
		return len(ts.envoyDelta.streams)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := ts.ads().DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "x"}, TypeUrl: resourcev3.EndpointType})
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := streams(); n != 1 {
		t.Fatalf("the delta cache holds %d streams with one open, want 1", n)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for streams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the delta cache still holds %d streams 10 s after the only one closed", streams())
		}
		time.Sleep(10 * time.Millisecond)
	}
	n := 0
	ts.deltaStreamOf.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d request ids left behind by a closed stream", n)
	}
}
