package xds

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
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
