package xds

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// buildRouteConfig sends every request for the service's authority to its cluster.
func buildRouteConfig(p servicePort) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: p.authority(),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    p.authority(),
			Domains: []string{p.authority(), p.host()},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: p.clusterName()},
				}},
			}},
		}},
	}
}

// buildInboundRouteConfig routes what the node's Envoy accepted for one L7 service port
// (the filter chain already chose it by original destination, so any Host is fine) to
// the port's cluster, with the service's policies as per-route RBAC: a policy change
// is an RDS update, which keeps open connections.
func buildInboundRouteConfig(p servicePort, target rbacTarget) *routev3.RouteConfiguration {
	route := &routev3.Route{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: p.clusterName()},
		}},
	}
	for _, f := range rbacFilters {
		if rules := buildRBAC(target, f.action, viewHTTP); rules != nil {
			if route.TypedPerFilterConfig == nil {
				route.TypedPerFilterConfig = map[string]*anypb.Any{}
			}
			route.TypedPerFilterConfig[f.name] = mustAny(&httprbacv3.RBACPerRoute{Rbac: &httprbacv3.RBAC{Rules: rules}})
		}
	}
	return &routev3.RouteConfiguration{
		Name:         p.inboundRouteName(),
		VirtualHosts: []*routev3.VirtualHost{{Name: p.authority(), Domains: []string{"*"}, Routes: []*routev3.Route{route}}},
	}
}
