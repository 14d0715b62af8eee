package xds

import (
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
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

// l7Chain is one L7 service destination: connections to VIP:port go to the cluster,
// through an HTTP connection manager with the port's routes (RDS), or a TCP proxy.
type l7Chain struct {
	vip      netip.Addr
	port     uint16
	cluster  string
	protocol model.AppProtocol
	route    string     // RDS route configuration, for HTTP ports
	rbac     rbacTarget // enforced by network RBAC, for TCP ports
	refused  bool       // the port is not served (another has its xDS names)
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
		DefaultFilterChain: tcpProxyChain("passthrough", PassthroughCluster, nil, rbacTarget{}),
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
		name := netip.AddrPortFrom(c.vip, c.port).String()
		switch {
		case c.refused:
			l.FilterChains = append(l.FilterChains, refusingChain(name, match))
		case c.protocol == model.AppOpaque:
			l.FilterChains = append(l.FilterChains, tcpProxyChain(name, c.cluster, match, c.rbac))
		default:
			l.FilterChains = append(l.FilterChains, httpChain(name, c.route, c.protocol, match))
		}
	}
	return l
}

// tcpProxyChain forwards the connection's bytes to a cluster, after the network RBAC
// filters of the service's policies, if any. (A policy change rewrites the chain and
// so drains its connections; HTTP chains take policies over RDS instead.)
func tcpProxyChain(name, cluster string, match *listenerv3.FilterChainMatch, target rbacTarget) *listenerv3.FilterChain {
	chain := &listenerv3.FilterChain{Name: name, FilterChainMatch: match}
	for _, f := range rbacFilters {
		if rules := buildRBAC(target, f.action, viewTCP); rules != nil {
			chain.Filters = append(chain.Filters, &listenerv3.Filter{
				Name: "envoy.filters.network.rbac",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&netrbacv3.RBAC{
					StatPrefix: f.name, Rules: rules})},
			})
		}
	}
	chain.Filters = append(chain.Filters, &listenerv3.Filter{
		Name: "envoy.filters.network.tcp_proxy",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
			StatPrefix:       name,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		})},
	})
	return chain
}

// refusingChain closes every connection to a destination whose port is not served
// (its xDS names are another service's, which it must not reach): an RBAC filter that
// allows nothing. Passing them through to the original destination would skip the
// service's policies.
func refusingChain(name string, match *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
	chain := tcpProxyChain(name, PassthroughCluster, match, rbacTarget{})
	refuse := &listenerv3.Filter{
		Name: "envoy.filters.network.rbac",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&netrbacv3.RBAC{
			StatPrefix: "sockmesh.refused", Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}})},
	}
	chain.Filters = append([]*listenerv3.Filter{refuse}, chain.Filters...)
	return chain
}

// httpChain parses requests (HTTP/1.1 and h2c, or HTTP/2 only) and routes them with the
// port's RDS route configuration, which carries the per-route RBAC. The chain holds the
// two RBAC filters with no rules of their own, so policy changes never touch it.
func httpChain(name, route string, protocol model.AppProtocol, match *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
	codec := hcmv3.HttpConnectionManager_AUTO
	if protocol == model.AppHTTP2 {
		codec = hcmv3.HttpConnectionManager_HTTP2
	}
	hcm := &hcmv3.HttpConnectionManager{
		CodecType:  codec,
		StatPrefix: name,
		// Paths are normalized before RBAC sees them ("/a/../private", "//private",
		// "%2Fprivate" are "/private"), or a DENY on a path could be walked around.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: route}},
	}
	for _, f := range rbacFilters {
		hcm.HttpFilters = append(hcm.HttpFilters, &hcmv3.HttpFilter{Name: f.name,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&httprbacv3.RBAC{})}})
	}
	hcm.HttpFilters = append(hcm.HttpFilters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}})
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: match,
		Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
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
		ConnectTimeout:       sharedConnectTimeout,
		UpstreamBindConfig:   markedBind(px.Mark),
	}
}

// l7Chains lists the frontends of L7 services (TCP) with their clusters, and the route
// configurations of their HTTP ports, one per service port; the frontends of ports
// that are not served get refusing chains.
func l7Chains(snap *model.Snapshot, served func(servicePort) bool) ([]l7Chain, []types.Resource) {
	var chains []l7Chain
	var routes []types.Resource
	done := map[servicePort]bool{}
	var l7 []*model.Service // sorted after filtering: few of many services are L7
	for _, svc := range snap.Services {
		if svc.L7 && proxied(svc) {
			l7 = append(l7, svc)
		}
	}
	slices.SortFunc(l7, func(a, b *model.Service) int { return model.CompareFrontends(a.Frontend, b.Frontend) })
	// A port's endpoints' target ports, across its frontends (both IP families).
	targets := map[servicePort][]uint16{}
	for _, svc := range l7 {
		p := servicePort{name: svc.Name, portName: svc.PortName, port: svc.Frontend.Port, protocol: svc.Frontend.Protocol}
		for _, b := range svc.Backends {
			if !slices.Contains(targets[p], b.Port) {
				targets[p] = append(targets[p], b.Port)
			}
		}
	}
	for _, svc := range l7 {
		p := servicePort{name: svc.Name, portName: svc.PortName, port: svc.Frontend.Port, protocol: svc.Frontend.Protocol}
		if !served(p) {
			chains = append(chains, l7Chain{vip: svc.Frontend.Addr, port: svc.Frontend.Port, refused: true})
			continue
		}
		rbac := rbacTarget{policies: snap.Policies[svc.Name], port: p.port, targets: targets[p]}
		slices.Sort(rbac.targets)
		c := l7Chain{vip: svc.Frontend.Addr, port: svc.Frontend.Port, cluster: p.clusterName(), protocol: svc.AppProtocol}
		if svc.AppProtocol == model.AppOpaque {
			c.rbac = rbac
		} else {
			c.route = p.inboundRouteName()
			if !done[p] {
				done[p] = true
				routes = append(routes, buildInboundRouteConfig(p, rbac))
			}
		}
		chains = append(chains, c)
	}
	return chains, routes
}

// proxyResources are the redirect listeners, their route configurations and the
// passthrough cluster, for the service ports served.
func proxyResources(px *Proxy, snap *model.Snapshot, served func(servicePort) bool) (listeners, routes, clusters []types.Resource) {
	if px == nil || len(px.Listen) == 0 {
		return nil, nil, nil
	}
	chains, routes := l7Chains(snap, served)
	for _, ap := range px.Listen {
		listeners = append(listeners, buildRedirectListener(ap, chains))
	}
	return listeners, routes, []types.Resource{buildPassthroughCluster(*px)}
}
