package xds

import (
	"fmt"
	"sort"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Resources builds every xDS resource for the model, by type URL. TCP service ports
// only: gRPC and HTTP run over TCP.
func Resources(snap *model.Snapshot) map[resourcev3.Type][]types.Resource {
	ports := map[servicePort][]model.Backend{}
	for _, svc := range snap.Services {
		if svc.Frontend.Protocol != model.TCP {
			continue
		}
		p := servicePort{name: svc.Name, portName: svc.PortName, port: svc.Frontend.Port, protocol: svc.Frontend.Protocol}
		ports[p] = append(ports[p], svc.Selected()...) // both IP families' endpoints
	}
	keys := make([]servicePort, 0, len(ports))
	for p := range ports {
		keys = append(keys, p)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].authority() < keys[j].authority() })

	out := map[resourcev3.Type][]types.Resource{}
	for _, p := range keys {
		// Stable order, so an unchanged model gives identical resources (no pushes).
		sort.Slice(ports[p], func(i, j int) bool { return ports[p][i].AddrPort().Compare(ports[p][j].AddrPort()) < 0 })
		out[resourcev3.ClusterType] = append(out[resourcev3.ClusterType], buildCluster(p.clusterName()))
		out[resourcev3.EndpointType] = append(out[resourcev3.EndpointType], buildLoadAssignment(p.clusterName(), ports[p]))
		out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], buildAPIListener(p))
	}
	return out
}

// NewSnapshot builds a consistent snapshot of the model at version: every cluster has
// its endpoints and every listener its routes, or it is an error.
func NewSnapshot(version string, snap *model.Snapshot) (*cachev3.Snapshot, error) {
	s, err := cachev3.NewSnapshot(version, Resources(snap))
	if err != nil {
		return nil, err
	}
	if err := s.Consistent(); err != nil {
		return nil, fmt.Errorf("xds snapshot %s is not consistent: %w", version, err)
	}
	return s, nil
}
