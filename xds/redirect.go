package xds

import (
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Names of the redirect listener and the cluster for destinations it has no chain for.
const (
	RedirectListenerName = "sockmesh_redirect" // + "_ipv4" / "_ipv6"
	PassthroughCluster   = "sockmesh_passthrough"
)

// Proxy describes the node's Envoy for the redirect listeners.
type Proxy struct {
	Listen []netip.AddrPort // where the datapath sends L7 connections, one per family
	Mark   uint32           // SO_MARK on Envoy's upstream sockets, so they are not redirected back
}

// l7Chain is one L7 service destination: connections to VIP:port go to the cluster.
type l7Chain struct {
	vip     netip.Addr
	port    uint16
	cluster string
}

// buildRedirectListener accepts what the datapath redirected, recovers the original
// destination (original_dst listener filter, answered by sockmesh's getsockopt), and
// picks a filter chain by that destination: one per L7 service frontend, and a
// passthrough to the original destination for anything else.
func buildRedirectListener(listen netip.AddrPort, chains []l7Chain) *listenerv3.Listener {
	name := RedirectListenerName + "_ipv4"
	if listen.Addr().Is6() {
		name = RedirectListenerName + "_ipv6"
	}
	l := &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(listen.Addr().String(), listen.Port()),
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       "envoy.filters.listener.original_dst",
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdstv3.OriginalDst{})},
		}},
		DefaultFilterChain: tcpProxyChain("passthrough", PassthroughCluster, nil),
	}
	for _, c := range chains {
		if c.vip.Is4() != listen.Addr().Is4() {
			continue
		}
		match := &listenerv3.FilterChainMatch{
			DestinationPort: wrapperspb.UInt32(uint32(c.port)),
			PrefixRanges: []*corev3.CidrRange{{AddressPrefix: c.vip.String(),
				PrefixLen: wrapperspb.UInt32(uint32(c.vip.BitLen()))}},
		}
		l.FilterChains = append(l.FilterChains, tcpProxyChain(netip.AddrPortFrom(c.vip, c.port).String(), c.cluster, match))
	}
	return l
}

// tcpProxyChain forwards the connection's bytes to a cluster. (HTTP services get an
// HTTP connection manager with per-route policy when AuthorizationPolicy lands.)
func tcpProxyChain(name, cluster string, match *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: match,
		Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
				StatPrefix:       name,
				ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
			})},
		}},
	}
}

// buildPassthroughCluster connects to the connection's original destination, with
// the Envoy mark so the datapath load-balances it instead of redirecting it again.
func buildPassthroughCluster(px Proxy) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		UpstreamBindConfig:   markedBind(px.Mark),
	}
}

// markedBind sets SO_MARK on upstream sockets before they connect.
func markedBind(mark uint32) *corev3.BindConfig {
	if mark == 0 {
		return nil
	}
	const solSocket, soMark = 1, 36
	return &corev3.BindConfig{
		SourceAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}},
		SocketOptions: []*corev3.SocketOption{{
			Level: solSocket, Name: soMark, Value: &corev3.SocketOption_IntValue{IntValue: int64(mark)},
			State: corev3.SocketOption_STATE_PREBIND,
		}},
	}
}

// l7Chains lists the frontends of L7 services (TCP) with their clusters.
func l7Chains(snap *model.Snapshot) []l7Chain {
	var out []l7Chain
	for _, svc := range snap.SortedServices() {
		if !svc.L7 || svc.Frontend.Protocol != model.TCP {
			continue
		}
		p := servicePort{name: svc.Name, portName: svc.PortName, port: svc.Frontend.Port, protocol: svc.Frontend.Protocol}
		out = append(out, l7Chain{vip: svc.Frontend.Addr, port: svc.Frontend.Port, cluster: p.clusterName()})
	}
	return out
}

// proxyResources are the redirect listeners and the passthrough cluster.
func proxyResources(px *Proxy, snap *model.Snapshot) (listeners, clusters []types.Resource) {
	if px == nil || len(px.Listen) == 0 {
		return nil, nil
	}
	chains := l7Chains(snap)
	for _, ap := range px.Listen {
		listeners = append(listeners, buildRedirectListener(ap, chains))
	}
	return listeners, []types.Resource{buildPassthroughCluster(*px)}
}
