package xds

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// dialADS opens a client connection of its own to the server's socket.
func dialADS(t testing.TB, sock string, opts ...grpc.DialOption) discoveryv3.AggregatedDiscoveryServiceClient {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient("unix://"+sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

// waitFor polls cond until it holds, failing the test after a generous deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// openUnread opens an ADS stream, asks for every cluster and never reads.
func openUnread(t testing.TB, ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	stream, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}) // fails if refused already
	return stream
}

// openUnreadDelta opens a delta ADS stream, asks for every cluster and never reads.
func openUnreadDelta(t testing.TB, ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	stream, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	return stream
}

// The cap counts state-of-the-world and delta streams together.
func TestStreamsOverTheLimitAreRefused(t *testing.T) {
	const limit, extra = 4, 3
	ts := startServerWith(t, scaled(3, 0), Limits{MaxStreams: limit})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admittedCtx, closeFirst := context.WithCancel(ctx)
	openUnread(t, admittedCtx, ts.ads())
	openUnreadDelta(t, ctx, ts.ads())
	for range limit - 2 {
		openUnread(t, ctx, ts.ads())
	}
	waitFor(t, "the first streams to open", func() bool { return ts.streams.Load() == limit })

	for i := range extra {
		var err error
		if i == 0 {
			_, err = openUnreadDelta(t, ctx, ts.ads()).Recv()
		} else {
			_, err = openUnread(t, ctx, ts.ads()).Recv()
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), strconv.Itoa(limit)) {
			t.Fatalf("stream %d over a limit of %d: got %v; want ResourceExhausted naming the limit", limit+i+1, limit, err)
		}
	}
	if n := ts.refused.Load(); n != extra {
		t.Fatalf("%d streams counted as refused, want %d", n, extra)
	}
	if n := ts.streams.Load(); n != limit {
		t.Fatalf("%d streams open, want %d: refused streams must not count", n, limit)
	}

	// A stream that ends frees its place.
	closeFirst()
	waitFor(t, "the closed stream to be let go", func() bool { return ts.streams.Load() == limit-1 })
	stream := openUnread(t, ctx, ts.ads())
	if resp, err := stream.Recv(); err != nil || len(resp.Resources) != 3 {
		t.Fatalf("a stream opened after one closed: %v, %v; want the 3 clusters", resp, err)
	}
}

// A client that stops reading while the responses are large: the server's sends to it
// block on flow control. It is closed; a client on another connection is not.
func TestClientThatStopsReadingIsClosedAndOthersKeepUpdates(t *testing.T) {
	const services = 3000       // responses well over the windows and write quota that absorb them
	const timeout = time.Second // ample for the reading client to acknowledge
	ts := startServerWith(t, scaled(services, 0), Limits{SendTimeout: timeout})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Fixed windows: grpc-go would otherwise grow them and buffer what the server sends.
	slow := openUnread(t, ctx, dialADS(t, ts.sock, grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16)))
	_ = slow.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})

	good, err := ts.ads().StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recvClusters := func(want int) {
		t.Helper()
		_ = good.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
		for {
			resp, err := good.Recv()
			if err != nil {
				t.Fatalf("the reading client, waiting for %d clusters: %v", want, err)
			}
			// Acknowledge, as Envoy does, so the next version is sent.
			_ = good.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
			if len(resp.Resources) == want {
				return
			}
		}
	}
	recvClusters(services)
	waitFor(t, "both clients' streams to open", func() bool { return ts.opened.Load() == 2 })

	if _, err := ts.Update(ctx, scaled(services+1, 0)); err != nil {
		t.Fatal(err)
	}
	recvClusters(services + 1)
	waitFor(t, "the unread stream's connection to be closed", func() bool { return ts.slowClosed.Load() >= 1 })
	waitFor(t, "the closed stream to end", func() bool { return ts.streams.Load() == 1 })
	for { // what the client had buffered, then the broken connection
		if _, err := slow.Recv(); err != nil {
			break
		}
	}

	// The server is unharmed, and a client that acknowledges what it reads is left
	// alone however long it stays: it gets the next change as well.
	time.Sleep(2 * timeout)
	if _, err := ts.Update(ctx, scaled(services+2, 0)); err != nil {
		t.Fatal(err)
	}
	recvClusters(services + 2)
	if n := ts.slowClosed.Load(); n != 1 {
		t.Fatalf("%d connections closed as slow, want the one", n)
	}
}

// Clients that read nothing while the responses are small: every send completes
// (grpc-go queues a whole response while the stream has write quota), nothing else is
// sent, and the responses would sit queued for good. They are closed all the same,
// state-of-the-world and delta; a delta client that acknowledges stays.
func TestClientThatReadsNothingIsClosedWithoutAnUpdate(t *testing.T) {
	const timeout = time.Second // ample for the reading client to acknowledge
	ts := startServerWith(t, scaled(3, 0), Limits{SendTimeout: timeout})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	good, err := ts.ads().DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = good.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	resp, err := good.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = good.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.Nonce})

	sotw := openUnread(t, ctx, dialADS(t, ts.sock))
	delta := openUnreadDelta(t, ctx, dialADS(t, ts.sock))
	waitFor(t, "the unread streams' connections to be closed", func() bool { return ts.slowClosed.Load() == 2 })
	waitFor(t, "the closed streams to end", func() bool { return ts.opened.Load() == 3 && ts.streams.Load() == 1 })
	for _, recv := range []func() error{
		func() error { _, err := sotw.Recv(); return err },
		func() error { _, err := delta.Recv(); return err },
	} {
		for recv() == nil { // what the client had buffered, then the broken connection
		}
	}

	time.Sleep(2 * timeout)
	if _, err := ts.Update(ctx, scaled(4, 0)); err != nil {
		t.Fatal(err)
	}
	if resp, err := good.Recv(); err != nil || len(resp.Resources) != 1 {
		t.Fatalf("the acknowledging delta client, after a change: %v, %v; want the one new cluster", resp, err)
	}
	if n := ts.slowClosed.Load(); n != 2 {
		t.Fatalf("%d connections closed as slow, want 2", n)
	}
}

// stalledClientsEnv tells the test binary, run again as a child, to be the stalled
// clients of BenchmarkStalledStreams: "SOCKET,N".
const stalledClientsEnv = "SOCKMESH_XDS_STALLED_CLIENTS"

// TestStalledClientProcess is the child of BenchmarkStalledStreams: it opens N ADS
// streams, one connection each, and asks each for every cluster and listener; the
// benchmark then stops it, the way a hung process stops reading. Fixed windows keep
// grpc-go from growing them to buffer responses here. It does nothing in a normal run.
func TestStalledClientProcess(t *testing.T) {
	arg := os.Getenv(stalledClientsEnv)
	if arg == "" {
		t.Skip("run by BenchmarkStalledStreams")
	}
	sock, count, _ := strings.Cut(arg, ",")
	n, err := strconv.Atoi(count)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "stalled"}
	for range n {
		ads := dialADS(t, sock, grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
		stream, err := ads.StreamAggregatedResources(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType})
	}
	fmt.Println("streams open")
	select {} // until killed
}

// BenchmarkStalledStreams: what 500 ADS streams that never read cost the server (a
// model of 1,000 services; the clients are another process, stopped once its streams
// are open), under DefaultLimits' stream cap: heap in use and RSS growth while they
// are open, and once SendTimeout has closed them.
func BenchmarkStalledStreams(b *testing.B) {
	const clients = 500
	limits := Limits{SendTimeout: 10 * time.Second} // the default cap; a shorter wait
	ts := startServerWith(b, scaled(1000, 0), limits)
	debug.FreeOSMemory()
	heap0, rss0 := memoryInUse(b)

	child := exec.Command(os.Args[0], "-test.run=^TestStalledClientProcess$")
	child.Env = append(os.Environ(), stalledClientsEnv+"="+ts.sock+","+strconv.Itoa(clients))
	out, err := child.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	child.Stderr = os.Stderr
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // gone with the benchmark, however it ends
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.Contains(line, "streams open") {
		b.Fatalf("stalled clients: %q, %v", line, err)
	}
	waitFor(b, "the streams to be open or refused", func() bool { return ts.opened.Load()+ts.refused.Load() == clients })
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		b.Fatal(err)
	}
	opened := time.Now()
	growth := func() (heap, rss float64) {
		debug.FreeOSMemory()
		h, r := memoryInUse(b)
		return float64(h-heap0) / 1e6, float64(r-rss0) / 1e6
	}
	time.Sleep(3 * time.Second) // the server encodes and queues the responses
	heap, rss := growth()
	b.ReportMetric(float64(ts.streams.Load()), "streams-open")
	b.ReportMetric(heap, "heap-MB")
	b.ReportMetric(rss, "rss-MB")

	time.Sleep(time.Until(opened.Add(limits.SendTimeout + 3*time.Second)))
	heap, rss = growth()
	b.ReportMetric(float64(ts.slowClosed.Load()), "closed-slow")
	b.ReportMetric(heap, "heap-after-timeout-MB")
	b.ReportMetric(rss, "rss-after-timeout-MB")
}

// memoryInUse is the heap in use and the resident set of this process, in bytes.
func memoryInUse(b *testing.B) (heap, rss int64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			rss = kb << 10
		}
	}
	return int64(ms.HeapInuse), rss
}
