package tests

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sockmesh/sockmesh/agent/model"
)

// scaleVIP is the ClusterIP of filler service i (10.100.0.0/16 holds the 30k we need).
func scaleVIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}) }

// scaleBackend is endpoint j of filler service i: never dialled, only programmed.
func scaleBackend(i, j int) netip.Addr {
	k := i*16 + j
	return netip.AddrFrom4([4]byte{10, 201 + byte(k>>16), byte(k >> 8), byte(k)})
}

// fillerYAML renders n single-port services with per endpoints each.
func fillerYAML(n, per int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: fill-%d, namespace: scale}\nspec:\n  clusterIP: %s\n  ports: [{name: http, port: 80}]\n", i, scaleVIP(i))
		fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: fill-%d\n  namespace: scale\n  labels: {kubernetes.io/service-name: fill-%d}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n", i, i)
		for j := 0; j < per; j++ {
			fmt.Fprintf(&b, "- addresses: [\"%s\"]\n", scaleBackend(i, j))
		}
	}
	return b.String()
}

// fillerSnapshot is the model fillerYAML decodes to, built directly for in-process
// benchmarks of the map writer.
func fillerSnapshot(n, per int) *model.Snapshot {
	s := model.NewSnapshot()
	for i := 0; i < n; i++ {
		svc := &model.Service{
			Name:     model.ServiceName{Namespace: "scale", Name: fmt.Sprintf("fill-%d", i)},
			PortName: "http",
			Frontend: model.Frontend{Addr: scaleVIP(i), Port: 80, Protocol: model.TCP},
		}
		for j := 0; j < per; j++ {
			svc.Backends = append(svc.Backends, model.Backend{Addr: scaleBackend(i, j), Port: 8080, Weight: 1, Ready: true, Serving: true})
		}
		s.Services[svc.Frontend] = svc
	}
	return s
}
