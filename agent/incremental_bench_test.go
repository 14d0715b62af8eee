package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/xds"
)

// BenchmarkOneChange: one EndpointSlice edit among n Services × 10 endpoints, through
// the store, the model, the LB writer (fake maps) and the xDS server, on the
// incremental path and, as the baseline in the same run, on the full path (Replace,
// Snapshot, full passes) that every change took before.
func BenchmarkOneChange(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			d := benchObjects(n)
			for _, path := range benchPaths() {
				var st source.Store
				st.Replace(d)
				fakes := lbmaptest.NewTables(1<<17, 1<<20)
				w, err := lbmap.NewWriter(fakes.Tables(), nopObserver{})
				if err != nil {
					b.Fatal(err)
				}
				x := xds.NewServer(nil, xds.Stats{}, nil, xds.Limits{})
				reconcile := func(s *model.Snapshot) {
					if _, err := w.Apply(s); err != nil {
						b.Fatal(err)
					}
					if _, err := x.Update(b.Context(), s); err != nil {
						b.Fatal(err)
					}
				}
				reconcile(st.Snapshot())
				const changes = 50
				start := time.Now()
				for k := range changes {
					i := (k * 7919) % n
					sl := benchEndpointSlice(i, 10+k)
					d.Slices[i] = sl
					name := model.ServiceName{Namespace: "scale", Name: fmt.Sprintf("svc-%d", i)}
					if path == "incremental" {
						st.UpdateServices([]source.ServiceState{{Name: name, Service: d.Services[i], Slices: []*discoveryv1.EndpointSlice{sl}}})
						reconcile(st.SnapshotChanged(map[model.ServiceName]bool{name: true}))
					} else {
						st.Replace(d)
						reconcile(st.Snapshot())
					}
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/changes, path+"-ms/change")
			}
		})
	}
}

func benchObjects(n int) source.Decoded {
	var d source.Decoded
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(1 + i>>8), byte(i)}).String()
		d.Services = append(d.Services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "scale", Name: fmt.Sprintf("svc-%d", i)},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}})
		d.Slices = append(d.Slices, benchEndpointSlice(i, 0))
	}
	return d
}

// benchEndpointSlice is Service i's slice of 10 endpoints, the first one variant v.
func benchEndpointSlice(i, v int) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "scale", Name: fmt.Sprintf("svc-%d", i), Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for j := range 10 {
		k := i*64 + j
		if j == 0 {
			k = i*64 + 10 + v%50
		}
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{netip.AddrFrom4([4]byte{10, 128 + byte(k>>16), byte(k >> 8), byte(k)}).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	return s
}

func benchPaths() []string {
	if os.Getenv("SOCKMESH_BENCH_INCREMENTAL_ONLY") != "" {
		return []string{"incremental"}
	}
	return []string{"incremental", "full"}
}
