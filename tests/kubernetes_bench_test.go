package tests

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// BenchmarkKubernetesOneChange: one endpoint change written to the real API server, to
// the new backend in the kernel map and to a delta xDS client (an Envoy-like ADS
// stream subscribed to every ClusterLoadAssignment), at 1,000, 10,000 and 30,000
// Services × 10 endpoints: p50 and p99 over 200 changes each. The baseline of the same
// run is the smallest scale: the goal is the same latency at every scale (O(change)).
func BenchmarkKubernetesOneChange(b *testing.B) {
	harness.RequirePrivileged(b)
	api := harness.StartAPIServer(b)
	env := harness.NewEnv(b)
	cfg := *api.Config
	cfg.QPS, cfg.Burst = -1, 0 // the setup writes 60,000 objects
	client, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "scale"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	scales := []int{1000, 10000, 30000}
	if testing.Short() {
		scales = []int{1000, 3000}
	}
	created := 0
	grow := func(n int) {
		createServices(b, client, created, n)
		created = n
	}
	grow(scales[0])
	a := env.StartAgent(b, "", "--source", "kubernetes", "--kubeconfig", api.Kubeconfig, "--max-backends", "524288")
	maps, err := bpf.OpenPinned(env.BPFFS)
	if err != nil {
		b.Fatal(err)
	}
	defer maps.Close()
	eds := startEDSWatch(b, env.XDSSocket())
	for _, n := range scales {
		grow(n)
		a.WaitMetric(b, "sockmesh_services", nil, float64(n+1), 5*time.Minute) // and default/kubernetes
		a.WaitIdle(b, 500*time.Millisecond, time.Minute)
		eds.waitFor(b, clusterOf(n-1), benchBackend(n-1, 9), 2*time.Minute)
		toMap, toXDS := oneChangeLatencies(b, client, maps, eds, n)
		for _, q := range []struct {
			name string
			at   float64
		}{{"p50", 0.50}, {"p99", 0.99}} {
			b.ReportMetric(msOf(quantile(toMap, q.at)), fmt.Sprintf("svc%d-to-map-%s-ms", n, q.name))
			b.ReportMetric(msOf(quantile(toXDS, q.at)), fmt.Sprintf("svc%d-to-xds-%s-ms", n, q.name))
		}
		b.Logf("%d services: API write → map p50 %v p99 %v max %v; → delta xDS p50 %v p99 %v max %v", n,
			quantile(toMap, .5), quantile(toMap, .99), slices.Max(toMap), quantile(toXDS, .5), quantile(toXDS, .99), slices.Max(toXDS))
	}
	b.ReportMetric(a.Metric(b, "process_resident_memory_bytes", nil)/(1<<20), fmt.Sprintf("rss-svc%d-MB", scales[len(scales)-1]))
	b.ReportMetric(a.Metric(b, "process_cpu_seconds_total", nil), "agent-cpu-s")
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// benchVIP is Service i's cluster IP, inside harness.ServiceClusterIPRange (10.96.0.x is
// left to the default/kubernetes Service), unless createServices had to take another.
func benchVIP(i int) netip.Addr {
	if v, ok := benchVIPs.Load(i); ok {
		return v.(netip.Addr)
	}
	return netip.AddrFrom4([4]byte{10, 96, byte(1 + i>>8), byte(i)})
}

var benchVIPs sync.Map // i → the cluster IP the API server allocated instead

// benchBackend is endpoint j of Service i; the changes use j = 10, 11, ... .
func benchBackend(i, j int) netip.Addr {
	k := i*64 + j
	return netip.AddrFrom4([4]byte{10, 128 + byte(k>>16), byte(k >> 8), byte(k)})
}

func clusterOf(i int) string { return fmt.Sprintf("outbound|80||svc-%d.scale.svc.cluster.local", i) }

func benchSlice(i int, endpoints []netip.Addr) *discoveryv1.EndpointSlice {
	port, name := int32(8080), "http"
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Namespace: "scale", Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	for _, a := range endpoints {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a.String()}})
	}
	return s
}

// createServices creates Services from..to-1 with 10 endpoints each, 4 writers at once.
func createServices(b *testing.B, c kubernetes.Interface, from, to int) {
	ctx := context.Background()
	work := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Namespace: "scale"},
					Spec: corev1.ServiceSpec{ClusterIP: benchVIP(i).String(), Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
				if err := retryCreate(func() error {
					_, err := c.CoreV1().Services("scale").Create(ctx, svc, metav1.CreateOptions{})
					if err != nil && strings.Contains(err.Error(), "already allocated") {
						// A create the loaded etcd timed out on kept its IP: take another.
						svc.Spec.ClusterIP = ""
					}
					return err
				}); err != nil {
					errs <- err
					return
				}
				if svc.Spec.ClusterIP == "" {
					got, err := c.CoreV1().Services("scale").Get(ctx, svc.Name, metav1.GetOptions{})
					if err != nil {
						errs <- err
						return
					}
					benchVIPs.Store(i, netip.MustParseAddr(got.Spec.ClusterIP))
				}
				var eps []netip.Addr
				for j := range 10 {
					eps = append(eps, benchBackend(i, j))
				}
				if err := retryCreate(func() error {
					_, err := c.DiscoveryV1().EndpointSlices("scale").Create(ctx, benchSlice(i, eps), metav1.CreateOptions{})
					return err
				}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		select {
		case work <- i:
		case err := <-errs:
			b.Fatal(err)
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

// retryCreate retries a create that the loaded etcd timed out on (a retry of one that
// did land finds it there).
func retryCreate(create func() error) error {
	var err error
	for attempt := range 10 {
		if err = create(); err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	return err
}

// oneChangeLatencies makes 200 changes, each replacing endpoint 0 of one Service with a
// new address, and times each from the API write to the new address in the kernel's
// backend map and in the delta xDS client.
func oneChangeLatencies(b *testing.B, c kubernetes.Interface, maps *bpf.Maps, eds *edsWatch, n int) (toMap, toXDS []time.Duration) {
	ctx := context.Background()
	const changes = 200
	for k := range changes {
		i := (k * 7919) % n // spread over the Services
		sl, err := c.DiscoveryV1().EndpointSlices("scale").Get(ctx, fmt.Sprintf("svc-%d", i), metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// A new address for endpoint 0: never the one it has (an earlier scale's change
		// may have left this very variant), or the write would change nothing.
		variant := 10 + k%50
		if len(sl.Endpoints) > 0 && slices.Contains(sl.Endpoints[0].Addresses, benchBackend(i, variant).String()) {
			variant = 10 + (k+1)%50
		}
		eps := []netip.Addr{benchBackend(i, variant)}
		for j := 1; j < 10; j++ {
			eps = append(eps, benchBackend(i, j))
		}
		want := eps[0]
		sl.Endpoints = benchSlice(i, eps).Endpoints
		xdsSeen := eds.expect(clusterOf(i), want)
		start := time.Now()
		if _, err := c.DiscoveryV1().EndpointSlices("scale").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		fe := netip.AddrPortFrom(benchVIP(i), 80)
		for !backendsHold(b, maps, fe, want) {
			if time.Since(start) > time.Minute {
				b.Fatalf("change %d (svc-%d → %s) never reached the map", k, i, want)
			}
			time.Sleep(200 * time.Microsecond)
		}
		toMap = append(toMap, time.Since(start))
		select {
		case at := <-xdsSeen:
			toXDS = append(toXDS, at.Sub(start))
		case <-time.After(time.Minute):
			b.Fatalf("change %d (svc-%d → %s) never reached the xDS client", k, i, want)
		}
	}
	return toMap, toXDS
}

// backendsHold says whether the frontend's slots lead to a backend with addr, read
// straight from the pinned maps: the service, its slots, their backends.
func backendsHold(b *testing.B, maps *bpf.Maps, fe netip.AddrPort, addr netip.Addr) bool {
	vip, fam := bpf.AddrFrom(fe.Addr())
	var sv bpf.SvcValue
	if err := maps.SmServices.Lookup(bpf.SvcKey{Vip: vip, Port: bpf.PortToNet(fe.Port()), Proto: 6, Family: fam}, &sv); err != nil {
		return false
	}
	want, _ := bpf.AddrFrom(addr)
	for slot := uint32(1); slot <= sv.Count; slot++ { // slots count from 1, as sock_lb.c picks them
		var id uint32
		if err := maps.SmSlots.Lookup(bpf.SlotKey{SvcId: sv.Id, Slot: slot}, &id); err != nil {
			continue
		}
		var bv bpf.BackendValue
		if err := maps.SmBackends.Lookup(id, &bv); err == nil && bv.Addr == want {
			return true
		}
	}
	return false
}

// edsWatch is a delta ADS client subscribed to every ClusterLoadAssignment; it reports
// when one holds an expected address.
type edsWatch struct {
	mu      sync.Mutex
	current map[string][]netip.Addr
	waiters map[string]chan time.Time // cluster|addr → when it was seen
}

func startEDSWatch(b *testing.B, sock string) *edsWatch {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	node := &corev3.Node{Id: "bench-envoy", UserAgentName: "envoy"}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType}); err != nil {
		b.Fatal(err)
	}
	w := &edsWatch{current: map[string][]netip.Addr{}, waiters: map[string]chan time.Time{}}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			at := time.Now()
			w.mu.Lock()
			for _, r := range resp.Resources {
				var cla endpointv3.ClusterLoadAssignment
				if err := r.Resource.UnmarshalTo(&cla); err != nil {
					continue
				}
				var addrs []netip.Addr
				for _, le := range cla.Endpoints {
					for _, e := range le.LbEndpoints {
						if a, err := netip.ParseAddr(e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()); err == nil {
							addrs = append(addrs, a)
						}
					}
				}
				w.current[cla.ClusterName] = addrs
				for _, a := range addrs {
					if ch, ok := w.waiters[cla.ClusterName+"|"+a.String()]; ok {
						ch <- at
						delete(w.waiters, cla.ClusterName+"|"+a.String())
					}
				}
			}
			w.mu.Unlock()
			_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.Nonce})
		}
	}()
	return w
}

// expect returns a channel that gets the time the cluster first holds addr from now on.
func (w *edsWatch) expect(cluster string, addr netip.Addr) <-chan time.Time {
	ch := make(chan time.Time, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiters[cluster+"|"+addr.String()] = ch
	return ch
}

// waitFor waits until the cluster holds addr.
func (w *edsWatch) waitFor(b *testing.B, cluster string, addr netip.Addr, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		ok := slices.Contains(w.current[cluster], addr)
		w.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatalf("the delta xDS client never saw %s in %s", addr, cluster)
}
