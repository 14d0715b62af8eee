package xds

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Resources builds every xDS resource for the model, by type URL. TCP service ports
// only: gRPC and HTTP run over TCP.
func Resources(snap *model.Snapshot) map[resourcev3.Type][]types.Resource {
	return (&builder{}).resources(snap)
}

// builder remembers the resources it built for each service port, so a model change
// rebuilds only the ports whose endpoints changed (the rest are reused as they are).
type builder struct {
	proxy *Proxy // nil: no Envoy redirect listeners (proxyless clients only)
	built map[servicePort]builtPort
}

type builtPort struct {
	fingerprint string
	cluster     types.Resource
	endpoints   types.Resource
	listener    types.Resource
	// proxylessEndpoints, for L7 ports only, replace endpoints for proxyless clients:
	// the ClusterIPs, so their connections are redirected to the node's Envoy and its
	// policies apply (a direct connection to a pod would bypass them).
	proxylessEndpoints types.Resource
	// versions are the resources' delta xDS versions (hashes of their encoding),
	// computed once when built rather than for every resource of every snapshot;
	// the fourth is proxylessEndpoints'.
	versions [4]string
}

// portState is what the model says of one service port across its frontends.
type portState struct {
	backends []model.Backend
	vips     []model.Frontend // the frontends of L7 ports
}

func newBuiltPort(p servicePort, fp string, st portState) (builtPort, error) {
	r := builtPort{fingerprint: fp, cluster: buildCluster(p.clusterName()),
		endpoints: buildLoadAssignment(p.clusterName(), st.backends), listener: buildAPIListener(p)}
	res := []types.Resource{r.cluster, r.endpoints, r.listener}
	if len(st.vips) > 0 {
		vips := make([]model.Backend, len(st.vips))
		for i, fe := range st.vips {
			vips[i] = model.Backend{Addr: fe.Addr, Port: fe.Port, Weight: 1, Ready: true, Serving: true}
		}
		r.proxylessEndpoints = buildLoadAssignment(p.clusterName(), vips)
		res = append(res, r.proxylessEndpoints)
	}
	for i, res := range res {
		wire, err := cachev3.MarshalResource(res)
		if err != nil {
			return r, err
		}
		r.versions[i] = cachev3.HashResource(wire)
	}
	return r, nil
}

func (b *builder) resources(snap *model.Snapshot) map[resourcev3.Type][]types.Resource {
	res, _, err := b.build(snap)
	if err != nil {
		panic(err) // marshalling resources we built ourselves cannot fail
	}
	return res
}

// build returns the resources by type and their delta versions by type and name.
func (b *builder) build(snap *model.Snapshot) (map[resourcev3.Type][]types.Resource, map[string]map[string]string, error) {
	ports := map[servicePort]portState{}
	for _, svc := range snap.Services {
		if svc.Frontend.Protocol != model.TCP {
			continue
		}
		p := servicePort{name: svc.Name, portName: svc.PortName, port: svc.Frontend.Port, protocol: svc.Frontend.Protocol}
		st := ports[p]
		st.backends = append(st.backends, svc.Selected()...) // both IP families' endpoints
		if svc.L7 {
			st.vips = append(st.vips, svc.Frontend)
		}
		ports[p] = st
	}
	type keyed struct {
		p    servicePort
		name string
	}
	keys := make([]keyed, 0, len(ports))
	for p := range ports {
		keys = append(keys, keyed{p, p.authority()})
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].name < keys[j].name })

	typeURLs := [3]resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType}
	built := make(map[servicePort]builtPort, len(keys))
	out := map[resourcev3.Type][]types.Resource{}
	versions := map[string]map[string]string{}
	for _, t := range typeURLs {
		versions[t] = make(map[string]string, len(keys))
	}
	for _, k := range keys {
		// Stable order, so an unchanged model gives identical resources (no pushes).
		st := ports[k.p]
		bs := st.backends
		sort.Slice(bs, func(i, j int) bool { return bs[i].AddrPort().Compare(bs[j].AddrPort()) < 0 })
		sort.Slice(st.vips, func(i, j int) bool { return model.FrontendLess(st.vips[i], st.vips[j]) })
		fp := fingerprint(bs, st.vips)
		r, ok := b.built[k.p]
		if !ok || r.fingerprint != fp {
			var err error
			if r, err = newBuiltPort(k.p, fp, st); err != nil {
				return nil, nil, err
			}
		}
		built[k.p] = r
		for i, res := range []types.Resource{r.cluster, r.endpoints, r.listener} {
			out[typeURLs[i]] = append(out[typeURLs[i]], res)
			versions[typeURLs[i]][cachev3.GetResourceName(res)] = r.versions[i]
		}
	}
	b.built = built
	// The redirect listeners change with any L7 service; there are one or two, so they
	// are rebuilt and hashed every time.
	ls, rs, cs := proxyResources(b.proxy, snap)
	versions[resourcev3.RouteType] = map[string]string{}
	for _, pair := range []struct {
		t   resourcev3.Type
		res []types.Resource
	}{{resourcev3.ListenerType, ls}, {resourcev3.RouteType, rs}, {resourcev3.ClusterType, cs}} {
		for _, r := range pair.res {
			wire, err := cachev3.MarshalResource(r)
			if err != nil {
				return nil, nil, err
			}
			out[pair.t] = append(out[pair.t], r)
			versions[pair.t][cachev3.GetResourceName(r)] = cachev3.HashResource(wire)
		}
	}
	return out, versions, nil
}

// fingerprint is everything of the endpoints (and L7 frontends) that reaches a resource.
func fingerprint(bs []model.Backend, vips []model.Frontend) string {
	buf := make([]byte, 0, 32*len(bs))
	for _, fe := range vips {
		buf = append(buf, fe.String()...)
		buf = append(buf, ';')
	}
	buf = append(buf, '|')
	for _, b := range bs {
		buf = b.AddrPort().AppendTo(buf)
		buf = append(buf, '/')
		buf = strconv.AppendUint(buf, uint64(b.Weight), 10)
		buf = strconv.AppendBool(buf, b.Ready)
		buf = append(buf, ';')
	}
	return string(buf)
}

// NewSnapshot builds a consistent snapshot of the model at version: every cluster has
// its endpoints and every listener its routes, or it is an error.
func NewSnapshot(version string, snap *model.Snapshot) (*cachev3.Snapshot, error) {
	return (&builder{}).snapshot(version, snap)
}

func (b *builder) snapshot(version string, snap *model.Snapshot) (*cachev3.Snapshot, error) {
	s, _, err := b.snapshots(version, snap)
	return s, err
}

// snapshots builds the node Envoy's snapshot and the proxyless clients' one, which
// lacks the Envoy-only resources (grpc-go rejects a listener that is not an API
// listener, and has no use for the passthrough cluster).
func (b *builder) snapshots(version string, snap *model.Snapshot) (envoy, proxyless *cachev3.Snapshot, err error) {
	res, versions, err := b.build(snap)
	if err != nil {
		return nil, nil, err
	}
	if envoy, err = consistentSnapshot(version, res, versions); err != nil {
		return nil, nil, err
	}
	viaProxy := map[string]builtPort{} // L7 ports' proxyless endpoints, by cluster name
	for _, r := range b.built {
		if r.proxylessEndpoints != nil {
			viaProxy[cachev3.GetResourceName(r.endpoints)] = r
		}
	}
	plain := map[resourcev3.Type][]types.Resource{}
	plainVersions := map[string]map[string]string{}
	for t, list := range res {
		plainVersions[t] = map[string]string{}
		for _, r := range list {
			name := cachev3.GetResourceName(r)
			if name == PassthroughCluster || strings.HasPrefix(name, RedirectListenerName) ||
				strings.HasPrefix(name, InboundRoutePrefix) {
				continue
			}
			version := versions[t][name]
			if bp, ok := viaProxy[name]; ok && t == resourcev3.EndpointType {
				r, version = bp.proxylessEndpoints, bp.versions[3]
			}
			plain[t] = append(plain[t], r)
			plainVersions[t][name] = version
		}
	}
	if proxyless, err = consistentSnapshot(version, plain, plainVersions); err != nil {
		return nil, nil, err
	}
	return envoy, proxyless, nil
}

func consistentSnapshot(version string, res map[resourcev3.Type][]types.Resource, versions map[string]map[string]string) (*cachev3.Snapshot, error) {
	s, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		return nil, err
	}
	s.VersionMap = versions // what ConstructVersionMap would compute, mostly reused
	if err := s.Consistent(); err != nil {
		return nil, fmt.Errorf("xds snapshot %s is not consistent: %w", version, err)
	}
	return s, nil
}
