package xds

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// buildAPIListener is the listener a proxyless gRPC client asks for when it dials
// xds:///host:port: an HTTP connection manager with its routes inline (go-control-plane's
// consistency check does not follow RDS references out of API listeners).
func buildAPIListener(p servicePort) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     p.authority(),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: buildRouteConfig(p)},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	return &listenerv3.Listener{
		Name:        p.authority(),
		ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(hcm)},
	}
}

// mustAny wraps a message we built ourselves; marshalling it cannot fail. It is
// deterministic (map entries sorted), so equal configs give equal bytes: the
// resources' versions are hashes of those bytes, and a random order would push
// unchanged resources.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(err)
	}
	return a
}
