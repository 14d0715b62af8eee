package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sockmesh/sockmesh/agent/model"
)

// buildLoadAssignment lists the endpoints that take new connections (the same KEP-1669
// selection as the datapath), with their weights.
func buildLoadAssignment(cluster string, backends []model.Backend) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, b := range backends {
		status := corev3.HealthStatus_HEALTHY
		if !b.Ready {
			status = corev3.HealthStatus_DRAINING // serving while terminating
		}
		lb := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(b.Addr.String(), b.Port),
			}},
			HealthStatus: status,
		}
		// Unset is weight 1 to Envoy and grpc-go alike; leaving it out of the common
		// case saves a message per endpoint (100k of them at 10k services).
		if b.Weight > 1 {
			lb.LoadBalancingWeight = wrapperspb.UInt32(uint32(b.Weight))
		}
		lbs = append(lbs, lb)
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	if len(lbs) > 0 {
		// One locality, named even though empty: grpc-go rejects an EDS update whose
		// locality is unset.
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{Locality: &corev3.Locality{}, LbEndpoints: lbs, LoadBalancingWeight: wrapperspb.UInt32(1)}}
	}
	return cla
}

func socketAddress(ip string, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}
