package xds

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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
