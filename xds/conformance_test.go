package xds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
)

// The AuthorizationPolicy conformance table. Each case is Istio YAML, resolved by the
// model, translated by the builders into the node Envoy's route configuration and HTTP
// connection manager, and then enforced by an RBAC engine that is not ours: grpc-go's
// xDS server, which applies the RBAC HTTP filters and their per-route overrides from
// LDS/RDS (gRFC A41). The expected allow/deny of every request is Istio's documented
// semantics. The only change to the generated config is the one a gRPC server needs:
// the route's action becomes non-forwarding, since the server is the destination.

// The world of the table: the orders service in shop, and peers on loopback addresses.
const (
	clientIP = "127.0.0.7"  // pod shop/client-0, service account "client"
	otherIP  = "127.0.0.8"  // pod shop/other-0, service account "other"
	batchIP  = "127.0.0.9"  // pod data/batch-0, service account "default"
	strayIP  = "127.0.0.10" // no pod
)

const conformancePods = `apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
spec: {serviceAccountName: client, containers: [{name: c, image: x}]}
status: {podIP: ` + clientIP + `}
---
apiVersion: v1
kind: Pod
metadata: {name: other-0, namespace: shop}
spec: {serviceAccountName: other, containers: [{name: c, image: x}]}
status: {podIP: ` + otherIP + `}
---
apiVersion: v1
kind: Pod
metadata: {name: batch-0, namespace: data}
spec: {containers: [{name: c, image: x}]}
status: {podIP: ` + batchIP + `}
`

// request is one RPC: who sends it, to which method, with which authority and headers.
type request struct {
	from      string
	method    string // gRPC full method, the HTTP path
	authority string // "" for the default
	headers   map[string]string
	repeated  map[string][]string // headers sent more than once
	allow     bool
}

func req(from, method string, allow bool) request {
	return request{from: from, method: method, allow: allow}
}

const (
	get    = "/shop.Orders/Get"
	remove = "/shop.Orders/Delete"
	admin  = "/shop.Admin/Reset"
)

// policyCase is a set of policies on orders and the requests that check them.
type policyCase struct {
	name     string
	policies []string // AuthorizationPolicy specs, each targeting orders
	requests []request
}

func conformanceCases(port uint16) []policyCase {
	p := fmt.Sprint(port)
	return []policyCase{
		{"no policy allows everything", nil, []request{
			req(clientIP, get, true), req(strayIP, admin, true)}},
		{"ALLOW from a principal", []string{`
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]`}, []request{
			req(clientIP, get, true), req(otherIP, get, false), req(batchIP, get, false), req(strayIP, get, false)}},
		{"ALLOW principal prefix and suffix", []string{`
  rules: [{from: [{source: {principals: ["cluster.local/ns/data/*", "*/sa/other"]}}]}]`}, []request{
			req(batchIP, get, true), req(otherIP, get, true), req(clientIP, get, false)}},
		{"ALLOW with no rules allows nothing", []string{`
  action: ALLOW`}, []request{
			req(clientIP, get, false), req(strayIP, admin, false)}},
		{"ALLOW with an empty rule allows everything", []string{`
  rules: [{}]`}, []request{
			req(clientIP, get, true), req(strayIP, admin, true)}},
		{"DENY with no rules denies nothing", []string{`
  action: DENY`}, []request{
			req(clientIP, get, true)}},
		{"DENY a path", []string{`
  action: DENY
  rules: [{to: [{operation: {paths: [` + remove + `]}}]}]`}, []request{
			req(clientIP, get, true), req(clientIP, remove, false), req(strayIP, remove, false)}},
		{"DENY wins over ALLOW", []string{`
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]`, `
  action: DENY
  rules: [{to: [{operation: {paths: [` + remove + `]}}]}]`}, []request{
			req(clientIP, get, true), req(clientIP, remove, false), req(otherIP, get, false)}},
		{"two ALLOW policies: matching either is enough", []string{`
  rules: [{from: [{source: {namespaces: [data]}}]}]`, `
  rules: [{to: [{operation: {paths: [` + get + `]}}]}]`}, []request{
			req(batchIP, admin, true), req(strayIP, get, true), req(strayIP, admin, false)}},
		{"ALLOW namespaces", []string{`
  rules: [{from: [{source: {namespaces: [shop]}}]}]`}, []request{
			req(clientIP, get, true), req(otherIP, get, true), req(batchIP, get, false), req(strayIP, get, false)}},
		{"ALLOW notNamespaces: peers without a namespace match too", []string{`
  rules: [{from: [{source: {notNamespaces: [shop]}}]}]`}, []request{
			req(batchIP, get, true), req(strayIP, get, true), req(clientIP, get, false)}},
		{"ALLOW notPrincipals", []string{`
  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/shop/sa/client]}}]}]`}, []request{
			req(otherIP, get, true), req(clientIP, get, false)}},
		{"ALLOW ipBlocks and notIpBlocks", []string{`
  rules: [{from: [{source: {ipBlocks: [127.0.0.0/29, ` + batchIP + `], notIpBlocks: [` + clientIP + `]}}]}]`}, []request{
			req(batchIP, get, true), req(clientIP, get, false), req(otherIP, get, false)}},
		{"fields of a source are ANDed, sources ORed", []string{`
  rules:
  - from:
    - source: {namespaces: [shop], notPrincipals: [cluster.local/ns/shop/sa/client]}
    - source: {ipBlocks: [` + batchIP + `]}`}, []request{
			req(otherIP, get, true), req(batchIP, get, true), req(clientIP, get, false), req(strayIP, get, false)}},
		{"paths: exact, prefix, suffix, not", []string{`
  rules: [{to: [{operation: {paths: [` + get + `, "/shop.Admin/*", "*/Delete"], notPaths: ["/shop.Admin/Reset"]}}]}]`}, []request{
			req(strayIP, get, true), req(strayIP, remove, true), req(strayIP, "/shop.Admin/Status", true),
			req(strayIP, admin, false), req(strayIP, "/shop.Orders/List", false)}},
		{"methods: gRPC is POST", []string{`
  rules: [{to: [{operation: {methods: [POST]}}]}]`}, []request{req(clientIP, get, true)}},
		{"methods: GET only", []string{`
  rules: [{to: [{operation: {methods: [GET]}}]}]`}, []request{req(clientIP, get, false)}},
		{"notMethods", []string{`
  action: DENY
  rules: [{to: [{operation: {notMethods: [GET]}}]}]`}, []request{req(clientIP, get, false)}},
		{"hosts and notHosts, any case", []string{`
  rules: [{to: [{operation: {hosts: ["orders.shop*"], notHosts: ["orders.shop.internal"]}}]}]`}, []request{
			{from: clientIP, method: get, authority: "orders.shop.svc.cluster.local:" + p, allow: true},
			{from: clientIP, method: get, authority: "Orders.Shop:" + p, allow: true},
			{from: clientIP, method: get, authority: "orders.shop.internal", allow: false},
			{from: clientIP, method: get, authority: "payments.shop", allow: false}}},
		{"ports: the service port", []string{`
  rules: [{to: [{operation: {ports: ["` + p + `"]}}]}]`}, []request{req(clientIP, get, true)}},
		{"ports: another port", []string{`
  rules: [{to: [{operation: {ports: ["1"]}}]}]`}, []request{req(clientIP, get, false)}},
		{"ports: the workload's (target) port, as Istio policies name it", []string{`
  rules: [{to: [{operation: {ports: ["8080"]}}]}]`}, []request{req(clientIP, get, true)}},
		{"DENY on the target port catches connections to the service port", []string{`
  action: DENY
  rules: [{to: [{operation: {ports: ["8080"]}}]}]`}, []request{req(clientIP, get, false)}},
		{"notPorts", []string{`
  rules: [{to: [{operation: {notPorts: ["` + p + `"]}}]}]`}, []request{req(clientIP, get, false)}},
		{"when request.headers: values and notValues", []string{`
  rules:
  - when:
    - {key: "request.headers[x-team]", values: [blue, "gr*"], notValues: [grey]}`}, []request{
			{from: clientIP, method: get, headers: map[string]string{"x-team": "blue"}, allow: true},
			{from: clientIP, method: get, headers: map[string]string{"x-team": "green"}, allow: true},
			{from: clientIP, method: get, headers: map[string]string{"x-team": "grey"}, allow: false},
			{from: clientIP, method: get, headers: map[string]string{"x-team": "red"}, allow: false},
			{from: clientIP, method: get, allow: false}}},
		{"when: a repeated header matches by any of its values", []string{`
  action: DENY
  rules: [{when: [{key: "request.headers[x-team]", values: [red, "gr*", "*ue"]}]}]`}, []request{
			{from: clientIP, method: get, repeated: map[string][]string{"x-team": {"orange", "red"}}, allow: false},
			{from: clientIP, method: get, repeated: map[string][]string{"x-team": {"green", "orange"}}, allow: false},
			{from: clientIP, method: get, repeated: map[string][]string{"x-team": {"orange", "blue", "pink"}}, allow: false},
			{from: clientIP, method: get, repeated: map[string][]string{"x-team": {"orange", "reddish", "ungreen"}}, allow: true},
			{from: clientIP, method: get, headers: map[string]string{"x-team": "redblue-x"}, allow: true}}},
		{"when: presence", []string{`
  action: DENY
  rules: [{when: [{key: "request.headers[x-debug]", values: ["*"]}]}]`}, []request{
			{from: clientIP, method: get, headers: map[string]string{"x-debug": "1"}, allow: false},
			req(clientIP, get, true)}},
		{"from, to and when are ANDed", []string{`
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {paths: [` + get + `]}}]
    when: [{key: "request.headers[x-team]", values: [blue]}]`}, []request{
			{from: clientIP, method: get, headers: map[string]string{"x-team": "blue"}, allow: true},
			{from: clientIP, method: remove, headers: map[string]string{"x-team": "blue"}, allow: false},
			{from: otherIP, method: get, headers: map[string]string{"x-team": "blue"}, allow: false},
			req(clientIP, get, false)}},
		{"a principal no pod has matches nobody", []string{`
  rules: [{from: [{source: {principals: [cluster.local/ns/nowhere/sa/ghost]}}]}]`}, []request{
			req(clientIP, get, false), req(strayIP, get, false)}},
		{"a policy outside the subset fails closed", []string{`
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]`}, []request{
			req(clientIP, get, false), req(strayIP, admin, false)}},
		{"a rejected DENY fails closed beside a good ALLOW", []string{`
  rules: [{}]`, `
  action: DENY
  rules: [{when: [{key: "source.ip", values: [` + clientIP + `]}]}]`}, []request{
			req(clientIP, get, false), req(otherIP, get, false)}},
	}
}

func TestAuthorizationPolicyConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a gRPC xDS server per case")
	}
	cp := startControlPlane(t)
	for i := range len(conformanceCases(0)) {
		// Each case gets a fresh gRPC server: its port is the service port the
		// policies see, and a fresh server has the case's config before it serves.
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(lis.Addr().(*net.TCPAddr).Port)
		tc := conformanceCases(port)[i]
		t.Run(tc.name, func(t *testing.T) {
			defer lis.Close()
			snap := caseModel(t, port, tc.policies)
			listener, route := grpcServerConfig(t, snap, lis.Addr().String())
			node := fmt.Sprintf("case-%d", i)
			if err := cp.serve(node, listener, route); err != nil {
				t.Fatal(err)
			}
			addr := runRBACServer(t, cp, node, lis)
			for _, r := range tc.requests {
				allowed, err := callAs(t, addr, r)
				if err != nil {
					t.Fatalf("%s %s: %v", r.from, r.method, err)
				}
				if allowed != r.allow {
					t.Errorf("%+v: allowed = %v, Istio's semantics say %v", r, allowed, r.allow)
				}
			}
		})
	}
}

// caseModel is the orders service (HTTP/2 port = port) with the case's policies.
func caseModel(t *testing.T, port uint16, specs []string) *model.Snapshot {
	t.Helper()
	docs := []string{conformancePods, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop, annotations: {sockmesh.io/l7: "true"}}
spec: {clusterIP: 10.96.0.14, ports: [{name: grpc, port: %d, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orders-1, namespace: shop, labels: {kubernetes.io/service-name: orders}}
addressType: IPv4
ports: [{name: grpc, port: 8080}]
endpoints: [{addresses: [10.1.0.5]}]`, port)}
	for i, spec := range specs {
		docs = append(docs, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p%d, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: orders}]%s`, i, spec))
	}
	d := source.DecodeAll([]byte(strings.Join(docs, "\n---\n")))
	if len(d.Errors) > 0 {
		t.Fatal(d.Errors)
	}
	snap := model.BuildAll(d.Input())
	for _, e := range snap.Errors {
		t.Logf("model: %v", e) // the fail-closed cases have one
	}
	return snap
}

// grpcServerConfig takes the node Envoy's HTTP connection manager for orders and its
// route configuration from the builders' output, and wraps them for a gRPC server
// listening on addr.
func grpcServerConfig(t *testing.T, snap *model.Snapshot, addr string) (*listenerv3.Listener, *routev3.RouteConfiguration) {
	t.Helper()
	res := (&builder{proxy: testProxy}).resources(snap)
	var hcm *hcmv3.HttpConnectionManager
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		for _, c := range l.FilterChains {
			if c.FilterChainMatch.PrefixRanges[0].AddressPrefix == "10.96.0.14" {
				if h, ok := unpack[*hcmv3.HttpConnectionManager](t, c.Filters[0].GetTypedConfig()); ok {
					hcm = h
				}
			}
		}
	}
	if hcm == nil {
		t.Fatal("no HTTP chain for orders on the redirect listener")
	}
	var route *routev3.RouteConfiguration
	for _, r := range res[resourcev3.RouteType] {
		if rc := r.(*routev3.RouteConfiguration); rc.Name == hcm.GetRds().GetRouteConfigName() {
			route = proto.Clone(rc).(*routev3.RouteConfiguration)
		}
	}
	if route == nil {
		t.Fatalf("route configuration %q is not served", hcm.GetRds().GetRouteConfigName())
	}
	for _, vh := range route.VirtualHosts {
		for _, r := range vh.Routes {
			r.Action = &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}}
		}
	}
	host, port, _ := net.SplitHostPort(addr)
	var p uint16
	fmt.Sscan(port, &p)
	listener := &listenerv3.Listener{
		Name:    "grpc/server?xds.resource.listening_address=" + addr,
		Address: socketAddress(host, p),
		FilterChains: []*listenerv3.FilterChain{{Name: "orders", Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
		}}}},
	}
	return listener, route
}

// controlPlane serves fixed resources to the gRPC servers, per node id.
type controlPlane struct {
	cache cachev3.SnapshotCache
	addr  string
}

func startControlPlane(t *testing.T) *controlPlane {
	cp := &controlPlane{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	srv := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(context.Background(), cp.cache, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = lis.Addr().String()
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return cp
}

func (cp *controlPlane) serve(node string, l *listenerv3.Listener, r *routev3.RouteConfiguration) error {
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {l}, resourcev3.RouteType: {r}})
	if err != nil {
		return err
	}
	if err := snap.Consistent(); err != nil {
		return err
	}
	return cp.cache.SetSnapshot(context.Background(), node, snap)
}

// runRBACServer starts grpc-go's xDS server on lis with a service that accepts any
// method, and waits until it serves with its xDS config.
func runRBACServer(t *testing.T, cp *controlPlane, node string, lis net.Listener) string {
	t.Helper()
	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": %q},
  "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%%s"
}`, cp.addr, node)
	serving := make(chan error, 1)
	srv, err := grpcxds.NewGRPCServer(
		grpc.Creds(insecure.NewCredentials()),
		grpcxds.BootstrapContentsForTesting([]byte(bootstrap)),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			in := &emptypb.Empty{}
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			return ss.SendMsg(in)
		}),
		grpcxds.ServingModeCallback(func(_ net.Addr, args grpcxds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				select {
				case serving <- nil:
				default:
				}
			} else if args.Err != nil {
				select {
				case serving <- args.Err:
				default:
				}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	select {
	case err := <-serving:
		if err != nil {
			t.Fatalf("the gRPC xDS server rejected the generated config: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the gRPC xDS server never started serving")
	}
	return lis.Addr().String()
}

// callAs makes the request's RPC from its source address and reports whether RBAC let
// it through (OK) or denied it (PERMISSION_DENIED); anything else is an error.
func callAs(t *testing.T, addr string, r request) (bool, error) {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP(netip.MustParseAddr(r.from).AsSlice())}}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", a) }),
	}
	if r.authority != "" {
		opts = append(opts, grpc.WithAuthority(r.authority))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k, v := range r.headers {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	for k, vs := range r.repeated {
		for _, v := range vs {
			ctx = metadata.AppendToOutgoingContext(ctx, k, v)
		}
	}
	err = conn.Invoke(ctx, r.method, &emptypb.Empty{}, &emptypb.Empty{})
	switch status.Code(err) {
	case codes.OK:
		return true, nil
	case codes.PermissionDenied:
		return false, nil
	}
	return false, errors.New("unexpected result: " + err.Error())
}

// A policy change reaches the proxy as a route configuration update only: the listener
// is byte-for-byte the same, so no connection is drained, and the next request on an
// open connection is judged by the new policy.
func TestPolicyChangeIsAppliedOnTheOpenConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a gRPC xDS server")
	}
	cp := startControlPlane(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(lis.Addr().(*net.TCPAddr).Port)
	open := caseModel(t, port, []string{`
  rules: [{}]`})
	closed := caseModel(t, port, []string{`
  action: DENY
  rules: [{to: [{operation: {paths: [` + get + `]}}]}]`})
	l1, r1 := grpcServerConfig(t, open, lis.Addr().String())
	l2, r2 := grpcServerConfig(t, closed, lis.Addr().String())
	if !proto.Equal(l1, l2) {
		t.Fatal("a policy change altered the listener: Envoy would drain its connections")
	}
	if proto.Equal(r1, r2) {
		t.Fatal("the policy change is not in the route configuration")
	}
	if err := cp.serve("live", l1, r1); err != nil {
		t.Fatal(err)
	}
	addr := runRBACServer(t, cp, "live", lis)

	var dials atomic.Int32
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", a)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rpc := func() codes.Code {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return status.Code(conn.Invoke(ctx, get, &emptypb.Empty{}, &emptypb.Empty{}))
	}
	if c := rpc(); c != codes.OK {
		t.Fatalf("before the change: %v", c)
	}
	snap, err := cachev3.NewSnapshot("2", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {l2}, resourcev3.RouteType: {r2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), "live", snap); err != nil {
		t.Fatal(err)
	}
	// The update arrives asynchronously; the same connection carries every attempt.
	var last codes.Code
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if last = rpc(); last != codes.OK {
			break
		}
	}
	if last != codes.PermissionDenied {
		t.Fatalf("after the policy change: %v, want PermissionDenied", last)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d connections dialled: the policy change closed the open one", n)
	}
}
