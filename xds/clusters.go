package xds

import (
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sockmesh/sockmesh/agent/model"
)

// connectTimeout bounds Envoy's upstream connects.
const connectTimeout = time.Second

// buildCluster is an EDS cluster whose endpoints come over the same ADS stream. Its
// upstream protocol follows the port's: HTTP/2 for gRPC and h2c ports, the client's
// own protocol for HTTP ports (HTTP/1.1 stays HTTP/1.1, h2c stays h2c). With a mark,
// Envoy's upstream sockets carry it, so the datapath knows them as Envoy's (never
// redirected back to it); proxyless gRPC clients ignore the bind config.
func buildCluster(name string, app model.AppProtocol, mark uint32) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     sharedEDSConfig,
		ConnectTimeout:       sharedConnectTimeout,
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		UpstreamBindConfig:   markedBind(mark),
	}
	var opts *httpv3.HttpProtocolOptions
	switch app {
	case model.AppHTTP2:
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}}
	case model.AppHTTP:
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}
	}
	if opts != nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(opts)}
	}
	return c
}

// Parts every cluster has alike, built once and shared (10k clusters would hold 10k
// copies). Resources are never changed once built, only marshalled, which only reads
// them, so sharing is safe.
var (
	sharedEDSConfig      = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()}
	sharedConnectTimeout = durationpb.New(connectTimeout)
	markedBinds          sync.Map // mark → *corev3.BindConfig
)

// markedBind sets SO_MARK on upstream sockets before they connect; one shared
// config per mark (a node agent has one).
func markedBind(mark uint32) *corev3.BindConfig {
	if mark == 0 {
		return nil
	}
	if bc, ok := markedBinds.Load(mark); ok {
		return bc.(*corev3.BindConfig)
	}
	const solSocket, soMark = 1, 36
	bc, _ := markedBinds.LoadOrStore(mark, &corev3.BindConfig{
		SourceAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}},
		SocketOptions: []*corev3.SocketOption{{
			Level: solSocket, Name: soMark, Value: &corev3.SocketOption_IntValue{IntValue: int64(mark)},
			State: corev3.SocketOption_STATE_PREBIND,
		}},
	})
	return bc.(*corev3.BindConfig)
}

// adsSource points a resource at the ADS stream it came from.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}
