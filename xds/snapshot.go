package xds

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Resources builds every xDS resource for the model, by type URL. TCP service ports
// only: gRPC and HTTP run over TCP.
func Resources(snap *model.Snapshot) map[resourcev3.Type][]types.Resource {
	return (&builder{}).resources(snap)
}

// builder turns model snapshots into xDS snapshots. It remembers what it built for
// each service port and the snapshots it made last, so that a model change touching
// only endpoints — the common churn — rebuilds just those ports' endpoints and patches
// the last snapshots, instead of rebuilding and re-checking 10,000 services.
type builder struct {
	proxy *Proxy // nil: no Envoy redirect listeners (proxyless clients only)
	built map[servicePort]builtPort
	// frontends and portFrontends remember what each model service contributed and
	// which frontends make up each port, to find changed ports without rebuilding all.
	frontends     map[model.Frontend]frontendState
	portFrontends map[servicePort][]model.Frontend
	// proxyRes are the redirect listeners, their routes and the passthrough cluster
	// last built, by type.
	proxyRes map[resourcev3.Type][]types.Resource
	// claims say which ports' resources are served when ports share names.
	claims nameClaims
	// exact says the last update completed, so the next may look at a snapshot's
	// Changed frontends alone.
	exact bool
	// last are the snapshots made last, which an endpoint change patches in place;
	// nil until the first.
	last *snapshotPair
	// patching, when set, is held while last is patched: the server's caches read
	// the snapshots they serve under its read side.
	patching sync.Locker
}

type snapshotPair struct{ envoy, proxyless *liveSnapshot }

type builtPort struct {
	cluster   types.Resource
	endpoints types.Resource
	listener  types.Resource
	// proxylessEndpoints, for L7 ports only, replace endpoints for proxyless clients:
	// the ClusterIPs, so their connections are redirected to the node's Envoy and its
	// policies apply (a direct connection to a pod would bypass them).
	proxylessEndpoints types.Resource
	// versions are the resources' delta xDS versions (hashes of their encoding),
	// computed once when built rather than for every resource of every snapshot:
	// cluster, endpoints, listener, proxyless endpoints.
	versions [4]string
}

// proxylessEDS is the endpoints resource proxyless clients get, and its version.
func (r builtPort) proxylessEDS() (types.Resource, string) {
	if r.proxylessEndpoints != nil {
		return r.proxylessEndpoints, r.versions[3]
	}
	return r.endpoints, r.versions[1]
}

// portState is what the model says of one service port across its frontends, sorted.
type portState struct {
	backends []model.Backend
	vips     []model.Frontend // the frontends of L7 ports
	app      model.AppProtocol
}

func newBuiltPort(p servicePort, st portState, mark uint32) (builtPort, error) {
	r := builtPort{cluster: buildCluster(p.clusterName(), st.app, mark),
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
		v, err := hashOf(res)
		if err != nil {
			return r, err
		}
		r.versions[i] = v
	}
	return r, nil
}

func hashOf(r types.Resource) (string, error) {
	wire, err := cachev3.MarshalResource(r)
	if err != nil {
		return "", err
	}
	return cachev3.HashResource(wire), nil
}

// frontendState is what one model service (a frontend) last contributed to its port.
// The selected backends are kept as a hash, not a copy (100k endpoints at 10k
// services would be kept twice): a rebuilt port reads them from the model again.
type frontendState struct {
	port      servicePort
	selection uint64 // selectionHash of the selected backends, in the model's order
	l7        bool
	app       model.AppProtocol
}

// selectionSeed keys selectionHash; the hashes live only in this process's memory.
var selectionSeed = maphash.MakeSeed()

// selectionHash hashes backends in order, every field (a change to any may change the
// resources). Two different selections collide with chance 2^-64.
func selectionHash(backends []model.Backend) uint64 {
	var h maphash.Hash
	h.SetSeed(selectionSeed)
	var fixed [24]byte
	for i := range backends {
		b := &backends[i]
		// Field by field: maphash.WriteComparable goes through reflection, which
		// made a 10k-service build half again as slow.
		a := b.Addr.As16()
		copy(fixed[:16], a[:])
		fixed[16] = byte(b.Addr.BitLen() / 32) // 0, 1 or 4: no address, IPv4, IPv6
		fixed[17], fixed[18] = byte(b.Port>>8), byte(b.Port)
		fixed[19], fixed[20] = byte(b.Weight>>8), byte(b.Weight)
		fixed[21] = flags(b.Ready, b.Serving, b.Terminating, b.Local, b.ForLocalZone, b.ForLocalNode)
		h.Write(fixed[:22])
		// Each string ends in a 0 byte, so moving bytes from one to the next changes
		// the hash.
		for _, s := range [...]string{b.Addr.Zone(), b.NodeName, b.Zone, string(b.ForZones), string(b.ForNodes)} {
			h.WriteString(s)
			h.WriteByte(0)
		}
	}
	return h.Sum64()
}

// flags packs up to eight bools into a byte.
func flags(bs ...bool) byte {
	var f byte
	for i, b := range bs {
		if b {
			f |= 1 << i
		}
	}
	return f
}

// update brings the per-port resources and the proxy's resources to the model. It
// compares each frontend with what it contributed last time (cheap: a frontend hashes
// without strings, and the selection is compared in place), rebuilds only the ports
// of the frontends that changed, and reports them, and whether anything beyond
// endpoints changed (a port added or removed, a proxy resource changed).
func (b *builder) update(snap *model.Snapshot) (changed []servicePort, structural bool, err error) {
	if b.built == nil {
		b.built, b.frontends, b.portFrontends = map[servicePort]builtPort{}, map[model.Frontend]frontendState{}, map[servicePort][]model.Frontend{}
	}
	dirty := map[servicePort]bool{}
	var scratch []model.Backend
	// A scoped pass looks at the changed frontends alone; it is exact only over what
	// the last pass built, so a failed pass makes the next one look at everything.
	scoped := snap.Changed != nil && b.exact
	b.exact = false
	l7Touched := !scoped
	see := func(fe model.Frontend, svc *model.Service) {
		p := servicePort{name: svc.Name, portName: svc.PortName, port: fe.Port, protocol: fe.Protocol}
		scratch = svc.AppendSelected(scratch[:0])
		sel := selectionHash(scratch)
		old, ok := b.frontends[fe]
		if ok && old.port == p && old.l7 == svc.L7 && old.app == svc.AppProtocol && old.selection == sel {
			return
		}
		if ok {
			b.unlink(fe, old.port)
			dirty[old.port] = true
			l7Touched = l7Touched || old.l7
		}
		l7Touched = l7Touched || svc.L7
		b.frontends[fe] = frontendState{port: p, selection: sel, l7: svc.L7, app: svc.AppProtocol}
		b.portFrontends[p] = append(b.portFrontends[p], fe)
		dirty[p] = true
	}
	gone := func(fe model.Frontend) {
		if old, ok := b.frontends[fe]; ok {
			delete(b.frontends, fe)
			b.unlink(fe, old.port)
			dirty[old.port] = true
			l7Touched = l7Touched || old.l7
		}
	}
	if scoped {
		for fe := range snap.Changed {
			if svc, ok := snap.Services[fe]; ok && proxied(svc) {
				see(fe, svc)
			} else {
				gone(fe)
			}
		}
	} else {
		present := 0
		for fe, svc := range snap.Services {
			if proxied(svc) {
				present++
				see(fe, svc)
			}
		}
		if present != len(b.frontends) { // some frontends left the model
			for fe := range b.frontends {
				if svc, ok := snap.Services[fe]; !ok || !proxied(svc) {
					gone(fe)
				}
			}
		}
	}
	claimsBefore := b.claims.generation
	for p := range dirty {
		fes := b.portFrontends[p]
		if len(fes) == 0 {
			delete(b.portFrontends, p)
			if _, ok := b.built[p]; ok {
				delete(b.built, p)
				b.claims.remove(p)
			}
			structural = true
			continue
		}
		var st portState
		for _, fe := range fes {
			f := b.frontends[fe]
			// Every frontend of a port is in the model: a scoped pass follows an
			// exact one, so those it does not look at are as that one saw them.
			svc, ok := snap.Services[fe]
			if !ok {
				return nil, false, fmt.Errorf("xds: frontend %v of %s is missing from the model", fe, p.clusterName())
			}
			st.backends = svc.AppendSelected(st.backends) // both IP families' endpoints
			if f.l7 {
				st.vips = append(st.vips, fe)
			}
			st.app = max(st.app, f.app) // the same port of one Service: the same protocol
		}
		// A stable order, so an unchanged model gives identical resources (no pushes).
		slices.SortFunc(st.backends, func(a, b model.Backend) int { return a.AddrPort().Compare(b.AddrPort()) })
		slices.SortFunc(st.vips, model.CompareFrontends)
		// A dirty port is rebuilt; if its resources come out the same (a change the
		// resources do not carry, such as a node name), their versions say so.
		old, ok := b.built[p]
		r, err := newBuiltPort(p, st, b.mark())
		if err != nil {
			return nil, false, err
		}
		// Endpoints alone can be patched in; a new cluster (its protocol) cannot.
		if !ok || r.versions[0] != old.versions[0] || r.versions[2] != old.versions[2] {
			structural = true
		}
		b.built[p] = r
		if !ok {
			b.claims.add(p) // claims change only with the ports, which makes the change structural
		}
		if !ok || r.versions != old.versions {
			changed = append(changed, p)
		}
	}
	changed = slices.DeleteFunc(changed, func(p servicePort) bool { return !b.claims.served(p) })

	// The proxy's resources follow the L7 services and the claims alone (a scoped pass
	// has the policies of the snapshot before), so a change to neither keeps them.
	if l7Touched || b.claims.generation != claimsBefore || b.proxyRes == nil {
		ls, rs, cs := proxyResources(b.proxy, snap, b.claims.served)
		proxyRes := map[resourcev3.Type][]types.Resource{resourcev3.ListenerType: ls, resourcev3.RouteType: rs, resourcev3.ClusterType: cs}
		for t, res := range proxyRes {
			if !slices.EqualFunc(res, b.proxyRes[t], func(a, b types.Resource) bool { return proto.Equal(a, b) }) {
				structural = true
			}
		}
		b.proxyRes = proxyRes
	}
	b.exact = true
	return changed, structural, nil
}

// mark is the Envoy mark, or 0 without a proxy.
func (b *builder) mark() uint32 {
	if b.proxy == nil {
		return 0
	}
	return b.proxy.Mark
}

// unlink removes a frontend from its port's list.
func (b *builder) unlink(fe model.Frontend, p servicePort) {
	b.portFrontends[p] = slices.DeleteFunc(b.portFrontends[p], func(f model.Frontend) bool { return f == fe })
}

func (b *builder) resources(snap *model.Snapshot) map[resourcev3.Type][]types.Resource {
	if _, _, err := b.update(snap); err != nil {
		panic(err) // marshalling resources we built ourselves cannot fail
	}
	out := map[resourcev3.Type][]types.Resource{}
	for p, r := range b.built {
		if !b.claims.served(p) {
			continue
		}
		out[resourcev3.ClusterType] = append(out[resourcev3.ClusterType], r.cluster)
		out[resourcev3.EndpointType] = append(out[resourcev3.EndpointType], r.endpoints)
		out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], r.listener)
	}
	for t, res := range b.proxyRes {
		out[t] = append(out[t], res...)
	}
	for t := range out {
		slices.SortFunc(out[t], func(a, b types.Resource) int {
			return strings.Compare(cachev3.GetResourceName(a), cachev3.GetResourceName(b))
		})
	}
	return out
}

// NewSnapshot builds a consistent snapshot of the model at version: every cluster has
// its endpoints and every listener its routes, or it is an error.
func NewSnapshot(version string, snap *model.Snapshot) (*cachev3.Snapshot, error) {
	s, _, _, err := (&builder{}).snapshots(version, snap)
	if err != nil {
		return nil, err
	}
	return s.Snapshot, nil
}

// snapshots builds the node Envoy's snapshot and the proxyless clients' one, which
// lacks the Envoy-only resources (grpc-go rejects a listener that is not an API
// listener, and has no use for the passthrough cluster or the Envoy's routes) and has
// the ClusterIPs as the endpoints of L7 ports. When only endpoints changed, the last
// snapshots are patched and returned; changed says whether what they serve changed.
func (b *builder) snapshots(version string, snap *model.Snapshot) (envoy, proxyless *liveSnapshot, changed bool, err error) {
	// On any error the next call builds in full, not from snapshots that lag the
	// builder's state.
	defer func() {
		if err != nil {
			b.last = nil
		}
	}()
	ports, structural, err := b.update(snap)
	if err != nil {
		return nil, nil, false, err
	}
	switch {
	case b.last != nil && !structural && len(ports) == 0:
		return b.last.envoy, b.last.proxyless, false, nil
	case b.last != nil && !structural:
		b.patchEndpoints(version, ports)
	default:
		e, p, err := b.fullSnapshots(version)
		if err != nil {
			return nil, nil, false, err
		}
		b.last = &snapshotPair{newLiveSnapshot(e), newLiveSnapshot(p)}
	}
	return b.last.envoy, b.last.proxyless, true, nil
}

// fullSnapshots builds both snapshots from every resource and checks them with
// Consistent(): every cluster has its endpoints, every listener its routes.
func (b *builder) fullSnapshots(version string) (envoy, proxyless *cachev3.Snapshot, err error) {
	envoy, proxyless = newSnapshot(version), newSnapshot(version)
	for p, r := range b.built {
		if !b.claims.served(p) {
			continue
		}
		add(envoy, resourcev3.ClusterType, r.cluster, r.versions[0])
		add(envoy, resourcev3.EndpointType, r.endpoints, r.versions[1])
		add(envoy, resourcev3.ListenerType, r.listener, r.versions[2])
		add(proxyless, resourcev3.ClusterType, r.cluster, r.versions[0])
		add(proxyless, resourcev3.ListenerType, r.listener, r.versions[2])
		eds, v := r.proxylessEDS()
		add(proxyless, resourcev3.EndpointType, eds, v)
	}
	for t, res := range b.proxyRes {
		for _, r := range res { // Envoy-only; one or two listeners and a few routes
			v, err := hashOf(r)
			if err != nil {
				return nil, nil, err
			}
			add(envoy, t, r, v)
		}
	}
	for _, s := range []*cachev3.Snapshot{envoy, proxyless} {
		if err := s.Consistent(); err != nil {
			return nil, nil, fmt.Errorf("xds snapshot %s is not consistent: %w", version, err)
		}
	}
	return envoy, proxyless, nil
}

// patchEndpoints brings the last snapshots to the next version when only endpoints
// changed: the endpoints of the changed ports are replaced in place and only the
// endpoint type gets the new version, so state-of-the-world clients are sent endpoints
// alone and delta clients just the changed resources. The resource names are those of
// the last snapshots, which passed Consistent(), and endpoints refer to nothing, so the
// check would give the same answer; it is not run again over every resource.
func (b *builder) patchEndpoints(version string, changed []servicePort) {
	if b.patching != nil {
		b.patching.Lock()
		defer b.patching.Unlock()
	}
	for _, p := range changed {
		r := b.built[p]
		b.last.envoy.setEndpoints(r.endpoints, r.versions[1], version)
		res, v := r.proxylessEDS()
		b.last.proxyless.setEndpoints(res, v, version)
	}
}

func newSnapshot(version string) *cachev3.Snapshot {
	s := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
	for i := range s.Resources {
		s.Resources[i] = cachev3.Resources{Version: version, Items: map[string]types.ResourceWithTTL{}}
	}
	return s
}

// add puts a resource of type t and its delta version in a snapshot.
func add(s *cachev3.Snapshot, t resourcev3.Type, r types.Resource, version string) {
	name := cachev3.GetResourceName(r)
	s.Resources[cachev3.GetResponseType(t)].Items[name] = types.ResourceWithTTL{Resource: r}
	if s.VersionMap[t] == nil {
		s.VersionMap[t] = map[string]string{}
	}
	s.VersionMap[t][name] = version
}

// proxied says whether the node's Envoy may see connections to svc's frontend: TCP to
// a cluster IP. NodePort, externalIP and LoadBalancer frontends are the NodePort
// datapath's.
func proxied(svc *model.Service) bool {
	return svc.Frontend.Protocol == model.TCP && !svc.FromOutside()
}
