// Package xds turns the agent's model into Envoy resources (one builder per resource
// type: clusters, endpoints, listeners, routes, RBAC), keeps them as snapshots in
// go-control-plane's caches (one view for the node's Envoy, one for proxyless gRPC
// clients) and serves them over ADS, state-of-the-world and delta. It owns the
// translation of AuthorizationPolicies into Envoy RBAC and the incremental update of
// snapshots when only endpoints change.
package xds

import (
	"fmt"

	"github.com/sockmesh/sockmesh/agent/model"
)

// servicePort names one port of a Kubernetes Service across its IP families: the unit
// xDS resources are built for (a model.Service is one frontend of it).
type servicePort struct {
	name     model.ServiceName
	portName string
	port     uint16
	protocol model.Protocol
}

// host is the Service's cluster DNS name.
func (p servicePort) host() string {
	return fmt.Sprintf("%s.%s.svc.cluster.local", p.name.Name, p.name.Namespace)
}

// authority is what clients dial: "host:port", also the listener and route names, so a
// grpc-go client with target xds:///host:port finds its listener by that name.
func (p servicePort) authority() string { return fmt.Sprintf("%s:%d", p.host(), p.port) }

// clusterName follows Istio's outbound cluster naming.
func (p servicePort) clusterName() string {
	return fmt.Sprintf("outbound|%d||%s", p.port, p.host())
}

// InboundRoutePrefix starts the names of the node Envoy's route configurations for L7
// service ports (the proxyless snapshot leaves them out).
const InboundRoutePrefix = "sockmesh_l7|"

// inboundRouteName names the node Envoy's route configuration for the port.
func (p servicePort) inboundRouteName() string { return InboundRoutePrefix + p.authority() }
