package xds

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sockmesh/sockmesh/agent/model"
)

// BenchmarkSnapshot10kServices: a full, consistent snapshot of 10,000 services with
// 10 endpoints each (100,000 endpoints), from the model.
func BenchmarkSnapshot10kServices(b *testing.B) {
	m := scaled(10000, 8) // 2 endpoints each, 10 for the first: keep it cheap to build
	for _, svc := range m.Services {
		for len(svc.Backends) < 10 {
			nb := svc.Backends[0]
			nb.Port = uint16(9000 + len(svc.Backends))
			svc.Backends = append(svc.Backends, nb)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := NewSnapshot("1", m); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/snapshot")
}

// BenchmarkEndpointChangeDeltaVsSotW: one endpoint added among 10,000 services; bytes a
// delta client receives against the full EDS response a state-of-the-world client
// gets, and the time from Update (model in, snapshot built and set) to the delta
// client's receive, over 50 changes: median and slowest.
func BenchmarkEndpointChangeDeltaVsSotW(b *testing.B) {
	base, changed := scaled(10000, 0), scaled(10000, 1)
	ts := startServer(b, base)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := ts.ads().DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType})
	first, err := stream.Recv()
	if err != nil {
		b.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: first.Nonce})
	var took []time.Duration
	var deltaBytes int
	for i := 0; i < max(b.N, 50); i++ {
		m := changed
		if i%2 == 1 {
			m = base
		}
		start := time.Now()
		if _, err := ts.Update(context.Background(), m); err != nil {
			b.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
		deltaBytes = proto.Size(resp)
		_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.Nonce})
	}
	// What SotW sends for the same change: every ClusterLoadAssignment again.
	sotw := &discoveryv3.DiscoveryResponse{TypeUrl: resourcev3.EndpointType}
	for _, r := range Resources(changed)[resourcev3.EndpointType] {
		a, _ := anypb.New(r.(proto.Message))
		sotw.Resources = append(sotw.Resources, a)
	}
	slices.Sort(took)
	b.ReportMetric(float64(deltaBytes), "delta-bytes")
	b.ReportMetric(float64(proto.Size(sotw)), "sotw-bytes")
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "update-to-client-p50-ms")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "update-to-client-max-ms")
}

// BenchmarkEndpointChangeSnapshots: the snapshots for one endpoint change among 10,000
// services, built incrementally (the agent's path) against a full rebuild and
// consistency check of the same model (the baseline), in the same run.
func BenchmarkEndpointChangeSnapshots(b *testing.B) {
	base, changed := scaled(10000, 0), scaled(10000, 1)
	inc := &builder{}
	if _, _, _, err := inc.snapshots("0", base); err != nil {
		b.Fatal(err)
	}
	var incremental, full time.Duration
	n := max(b.N, 10)
	for i := 0; i < n; i++ {
		m := changed
		if i%2 == 1 {
			m = base
		}
		start := time.Now()
		if _, _, _, err := inc.snapshots(fmt.Sprint(i+1), m); err != nil {
			b.Fatal(err)
		}
		incremental += time.Since(start)
		start = time.Now()
		if _, _, _, err := (&builder{}).snapshots(fmt.Sprint(i+1), m); err != nil {
			b.Fatal(err)
		}
		full += time.Since(start)
	}
	b.ReportMetric(float64(incremental.Microseconds())/float64(n)/1000, "incremental-ms")
	b.ReportMetric(float64(full.Microseconds())/float64(n)/1000, "full-ms")
}

// BenchmarkDeltaOneChangeScale: one endpoint change, scoped as the Kubernetes source
// makes it, from the model update to a delta client on CDS and EDS, p50 and p99 of 200,
// at 1k, 10k and 30k services × 10 endpoints. Through the agent's server (its own
// delta cache) and, as the baseline in the same run, through go-control-plane's
// snapshot cache fed the same builder's snapshots.
func BenchmarkDeltaOneChangeScale(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			ours := deltaChangeLatencies(b, n, func(m *model.Snapshot) (string, func(*model.Snapshot)) {
				ts := startServer(b, m)
				return ts.sock, func(m *model.Snapshot) {
					if _, err := ts.Update(context.Background(), m); err != nil {
						b.Fatal(err)
					}
				}
			})
			baseline := deltaChangeLatencies(b, n, startSnapshotCacheServer(b))
			for _, q := range []struct {
				name string
				at   float64
			}{{"p50", 0.5}, {"p99", 0.99}} {
				b.ReportMetric(msOf(quantileOf(ours, q.at)), "ours-"+q.name+"-ms")
				b.ReportMetric(msOf(quantileOf(baseline, q.at)), "go-control-plane-"+q.name+"-ms")
			}
			b.ReportMetric(float64(quantileOf(baseline, 0.99))/float64(quantileOf(ours, 0.99)), "p99-speedup-x")
		})
	}
}

// startSnapshotCacheServer serves delta ADS from go-control-plane's snapshot cache,
// the way the agent did before its own delta cache: the builder's snapshots, patched
// in place under a lock the cache's watches read under.
func startSnapshotCacheServer(b *testing.B) func(*model.Snapshot) (string, func(*model.Snapshot)) {
	return func(m *model.Snapshot) (string, func(*model.Snapshot)) {
		var lock sync.RWMutex
		bl := &builder{patching: &lock}
		cache := cachev3.NewSnapshotCache(true, clientKind{}, nil)
		version := 0
		push := func(m *model.Snapshot) {
			version++
			envoy, _, _, err := bl.snapshots(strconv.Itoa(version), m)
			if err != nil {
				b.Fatal(err)
			}
			if err := cache.SetSnapshot(context.Background(), envoyClients, envoy); err != nil {
				b.Fatal(err)
			}
		}
		push(m)
		g := grpc.NewServer()
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), rlockedCache{&lock, cache}, nil))
		sock := filepath.Join(b.TempDir(), "gcp.sock")
		ln, err := Listen("unix:" + sock)
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = g.Serve(ln) }()
		b.Cleanup(g.Stop)
		return sock, push
	}
}

// rlockedCache reads the snapshot cache's snapshots under a read lock.
type rlockedCache struct {
	lock *sync.RWMutex
	cachev3.Cache
}

func (c rlockedCache) CreateDeltaWatch(r *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	c.lock.RLock()
	defer c.lock.RUnlock()
	return c.Cache.CreateDeltaWatch(r, sub, out)
}

// deltaChangeLatencies starts a server on n services with start, subscribes a delta
// client to every cluster and endpoint resource, and times 200 scoped endpoint
// changes from the push to the client's receive of the changed endpoints.
func deltaChangeLatencies(b *testing.B, n int, start func(*model.Snapshot) (string, func(*model.Snapshot))) []time.Duration {
	m := model.NewSnapshot()
	for i := range n { // named by number: scaled's names repeat past 17,576
		svc := &model.Service{Name: model.ServiceName{Namespace: "ns", Name: "svc" + strconv.Itoa(i)}, PortName: "http",
			Frontend: model.Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: model.TCP}}
		for j := range 10 {
			svc.Backends = append(svc.Backends, model.Backend{Addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
				Port: uint16(9000 + j), Weight: 1, Ready: true, Serving: true})
		}
		m.Services[svc.Frontend] = svc
	}
	sock, push := start(m)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	node := &corev3.Node{Id: "bench", UserAgentName: "envoy"}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			b.Fatal(err)
		}
	}
	got := make(chan []string, 16) // names of each EDS response
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(got)
				return
			}
			if r.TypeUrl == resourcev3.EndpointType {
				var names []string
				for _, res := range r.Resources {
					names = append(names, res.Name)
				}
				got <- names
			}
			_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		}
	}()
	if names := <-got; len(names) != n {
		b.Fatalf("initial EDS response has %d resources, want %d", len(names), n)
	}
	var frontends []model.Frontend
	for fe := range m.Services {
		frontends = append(frontends, fe)
	}
	slices.SortFunc(frontends, model.CompareFrontends)
	var took []time.Duration
	for k := range 200 {
		fe := frontends[(k*7919)%n]
		svc := *m.Services[fe]
		svc.Backends = slices.Clone(svc.Backends)
		svc.Backends[0].Port = uint16(20000 + k) // never the port it had
		m.Services[fe] = &svc
		m.Changed = map[model.Frontend]bool{fe: true}
		want := servicePort{name: svc.Name, portName: svc.PortName, port: fe.Port, protocol: fe.Protocol}.clusterName()
		began := time.Now()
		push(m)
		for seen := false; !seen; {
			select {
			case names, ok := <-got:
				if !ok {
					b.Fatal("the delta stream closed")
				}
				seen = slices.Contains(names, want)
			case <-time.After(time.Minute):
				b.Fatalf("change %d of %s never reached the client", k, want)
			}
		}
		took = append(took, time.Since(began))
	}
	return took
}

func quantileOf(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
