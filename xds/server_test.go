package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/sockmesh/sockmesh/agent/model"
)

type testServer struct {
	*Server
	streams, nacks, refused, slowClosed atomic.Int64
	opened                              atomic.Int64 // streams ever opened
	sock                                string
	conn                                *grpc.ClientConn
}

func startServer(t testing.TB, m *model.Snapshot) *testServer {
	t.Helper()
	return startServerWith(t, m, Limits{})
}

func startServerWith(t testing.TB, m *model.Snapshot, limits Limits) *testServer {
	t.Helper()
	ts := &testServer{}
	ts.Server = NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)), Stats{
		Streams: func(d int) {
			ts.streams.Add(int64(d))
			if d > 0 {
				ts.opened.Add(1)
			}
		},
		Nacks:             func() { ts.nacks.Add(1) },
		StreamsRefused:    func() { ts.refused.Add(1) },
		SlowStreamsClosed: func() { ts.slowClosed.Add(1) },
	}, nil, limits)
	sock := filepath.Join(t.TempDir(), "x.sock")
	ts.sock = sock
	ln, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = ts.Serve(ln) }()
	t.Cleanup(ts.Stop)
	if _, err := ts.Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	ts.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.conn.Close() })
	return ts
}

func (ts *testServer) ads() discoveryv3.AggregatedDiscoveryServiceClient {
	return discoveryv3.NewAggregatedDiscoveryServiceClient(ts.conn)
}

// scaled is n single-port services with two endpoints each.
func scaled(n int, extra int) *model.Snapshot {
	s := model.NewSnapshot()
	for i := 0; i < n; i++ {
		svc := &model.Service{Name: model.ServiceName{Namespace: "ns", Name: "svc" + svcSuffix(i)}, PortName: "http",
			Frontend: model.Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: model.TCP}}
		for j := 0; j < 2+extra*boolInt(i == 0); j++ {
			svc.Backends = append(svc.Backends, model.Backend{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j + 1)}), Port: 8080, Weight: 1, Ready: true, Serving: true})
		}
		s.Services[svc.Frontend] = svc
	}
	return s
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func svcSuffix(i int) string {
	return string(rune('a'+i%26)) + string(rune('a'+(i/26)%26)) + string(rune('a'+(i/676)%26))
}

func TestDeltaSendsOnlyTheChangedEndpoints(t *testing.T) {
	ts := startServer(t, scaled(100, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := ts.ads().DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Subscribe to every endpoint resource (wildcard) and read the initial state.
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Resources) != 100 {
		t.Fatalf("initial delta response has %d resources, want 100", len(first.Resources))
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: first.Nonce})

	// One endpoint added to one service.
	if _, err := ts.Update(context.Background(), scaled(100, 1)); err != nil {
		t.Fatal(err)
	}
	next, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(next.Resources) != 1 || len(next.RemovedResources) != 0 {
		t.Fatalf("one endpoint change sent %d resources and %d removals; want just the one cluster's endpoints", len(next.Resources), len(next.RemovedResources))
	}
	var cla endpointv3.ClusterLoadAssignment
	if err := next.Resources[0].Resource.UnmarshalTo(&cla); err != nil || len(cla.Endpoints[0].LbEndpoints) != 3 {
		t.Fatalf("changed resource %v (%v): want 3 endpoints", cla.ClusterName, err)
	}
	size := proto.Size(next)
	t.Logf("delta update for one endpoint: %d bytes on the wire (initial state: %d bytes)", size, proto.Size(first))
	if size > 2048 {
		t.Fatalf("delta update of %d bytes, want under 2 KB", size)
	}
}

func TestSotWNackIsCountedAndOtherClientsKeepBeingServed(t *testing.T) {
	ts := startServer(t, scaled(3, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A client that disconnects mid-stream.
	gone, goneCancel := context.WithCancel(ctx)
	quitter, err := ts.ads().StreamAggregatedResources(gone)
	if err != nil {
		t.Fatal(err)
	}
	_ = quitter.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	if _, err := quitter.Recv(); err != nil {
		t.Fatal(err)
	}
	goneCancel()

	stream, err := ts.ads().StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.Resources) != 3 {
		t.Fatalf("CDS: %v, %v", resp, err)
	}
	// Reject it, the way Envoy does when a resource fails its checks.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.Nonce,
		ErrorDetail: &statuspb.Status{Code: 3, Message: "injected rejection"}}); err != nil {
		t.Fatal(err)
	}
	// Once the NACK is in, the rejected version is not sent again (a proxy would reject it
	// again, in a loop): the next thing this client gets is the next model version.
	for deadline := time.Now().Add(5 * time.Second); ts.nacks.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the server act on the NACK before the change
	// The stream lives on: a new model version still reaches this client.
	if _, err := ts.Update(context.Background(), scaled(4, 0)); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil || len(resp.Resources) != 4 {
		t.Fatalf("after a NACK and a model change: %v, %v", resp, err)
	}
	if n := ts.nacks.Load(); n != 1 {
		t.Fatalf("%d NACKs counted, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ts.streams.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := ts.streams.Load(); n != 1 {
		t.Fatalf("%d open streams after one client left, want 1", n)
	}
}

// A proxyless gRPC client subscribes to the one listener and cluster it dials, not to
// every resource; it must be answered however many services there are.
func TestProxylessClientAskingForOneOfManyIsAnswered(t *testing.T) {
	ts := startServer(t, scaled(3, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := ts.ads().StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const name = "svcbaa.ns.svc.cluster.local:80"
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n", UserAgentName: "gRPC Go"},
		TypeUrl: resourcev3.ListenerType, ResourceNames: []string{name}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("no answer to a request for one listener of three: %v", err)
	}
	if len(resp.Resources) != 1 {
		t.Fatalf("%d listeners sent, want the one asked for", len(resp.Resources))
	}
}

func TestDeltaNackIsCountedAndTheStreamLives(t *testing.T) {
	ts := startServer(t, scaled(3, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := ts.ads().DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType})
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: first.Nonce,
		ErrorDetail: &statuspb.Status{Code: 3, Message: "injected rejection"}})
	for deadline := time.Now().Add(5 * time.Second); ts.nacks.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := ts.nacks.Load(); n != 1 {
		t.Fatalf("%d NACKs counted, want 1", n)
	}
	// The stream lives on and the next change still arrives, alone.
	if _, err := ts.Update(context.Background(), scaled(3, 1)); err != nil {
		t.Fatal(err)
	}
	next, err := stream.Recv()
	if err != nil || len(next.Resources) != 1 {
		t.Fatalf("after a delta NACK and a change: %v, %v; want the one changed resource", next, err)
	}
}

// Endpoint changes patch the served snapshots in place while streams open: every new
// stream's first response must be one whole version, the endpoints that version had
// (run with -race, it also checks the patch and the cache's reads are synchronized).
func TestNewStreamsSeeWholeVersionsWhileEndpointsArePatched(t *testing.T) {
	ts := startServer(t, scaled(50, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var want sync.Map // EDS version → how many endpoints svc0 has in it
	want.Store("1", 2)
	const updates = 60
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= updates; i++ {
			extra := i % 4
			want.Store(strconv.Itoa(i+1), 2+extra) // startServer's Update was version 1
			if _, err := ts.Update(ctx, scaled(50, extra)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	svc0 := servicePort{name: model.ServiceName{Namespace: "ns", Name: "svc" + svcSuffix(0)}, portName: "http", port: 80, protocol: model.TCP}.clusterName()
	check := func() (string, error) {
		stream, err := ts.ads().DeltaAggregatedResources(ctx)
		if err != nil {
			return "", err
		}
		defer stream.CloseSend()
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType}); err != nil {
			return "", err
		}
		first, err := stream.Recv()
		if err != nil {
			return "", err
		}
		if len(first.Resources) != 50 {
			return "", fmt.Errorf("version %s: first response has %d resources, want 50", first.SystemVersionInfo, len(first.Resources))
		}
		n, ok := want.Load(first.SystemVersionInfo)
		if !ok {
			return "", fmt.Errorf("first response at version %q, which no update made", first.SystemVersionInfo)
		}
		for _, r := range first.Resources {
			if r.Name != svc0 {
				continue
			}
			var cla endpointv3.ClusterLoadAssignment
			if err := r.Resource.UnmarshalTo(&cla); err != nil {
				return "", err
			}
			if got := len(cla.Endpoints[0].LbEndpoints); got != n.(int) {
				return "", fmt.Errorf("version %s serves %d endpoints for %s, want that version's %d", first.SystemVersionInfo, got, svc0, n)
			}
			return first.SystemVersionInfo, nil
		}
		return "", fmt.Errorf("version %s: no resource for %s", first.SystemVersionInfo, svc0)
	}
	seen := map[string]bool{}
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		v, err := check()
		if err != nil {
			t.Fatal(err)
		}
		seen[v] = true
	}
	if v, err := check(); err != nil || v != strconv.Itoa(updates+1) {
		t.Fatalf("after the updates a new stream gets version %q (%v), want the last, %d", v, err, updates+1)
	}
	t.Logf("new streams saw %d distinct versions during %d updates", len(seen), updates)
}
