// Package envoy owns what the node's Envoy starts with: the bootstrap that connects it
// to the agent's ADS socket (node id = node name, admin on loopback).
package envoy

import (
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sockmesh/sockmesh/xds"
)

// xdsCluster is the static cluster Envoy reaches the agent through.
const xdsCluster = "sockmesh_xds"

// Options shape the bootstrap.
type Options struct {
	NodeName  string // Envoy's node id: the agent serves its node's snapshot
	XDSListen string // the agent's --xds-listen: unix:PATH or tcp:HOST:PORT
	AdminPort uint32 // admin interface, on 127.0.0.1
}

// Bootstrap builds Envoy's bootstrap: ADS (gRPC, HTTP/2) to the agent for listeners
// and clusters, admin on loopback only.
func Bootstrap(o Options) (*bootstrapv3.Bootstrap, error) {
	if o.NodeName == "" {
		return nil, fmt.Errorf("--node-name is required: it is Envoy's node id")
	}
	addr, err := agentAddress(o.XDSListen)
	if err != nil {
		return nil, err
	}
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: o.NodeName, Cluster: "sockmesh"},
		Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: o.AdminPort}}}}},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: xdsCluster}}}},
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{{
			Name:                          xdsCluster,
			ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout:                durationpb.New(time.Second),
			TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: xdsCluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}}}},
			}}},
		}}},
	}, nil
}

// JSON renders the bootstrap as Envoy reads it (-c bootstrap.json).
func JSON(b *bootstrapv3.Bootstrap) ([]byte, error) {
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
}

func agentAddress(listen string) (*corev3.Address, error) {
	network, address, err := xds.ParseListen(listen)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: address}}}, nil
	}
	host, port, _ := net.SplitHostPort(address) // ParseListen checked it
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("--xds-listen %q: bad port", listen)
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}, nil
}
