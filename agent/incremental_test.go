package agent_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	envoycache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/xds"
)

// The incremental path (the change tracker's Services alone: Store.UpdateServices,
// SnapshotChanged, a scoped LB writer pass and a scoped xDS builder pass) must give what
// the full path (Replace, Snapshot, full passes) gives for the same objects: the same
// snapshot, the same map entries (ids included) and the same xDS resources, after every
// change of a random history of Services and EndpointSlices created, edited, broken,
// moved, relabelled for another proxy, deleted, with now and then a policy or node change
// (which takes the full path on both sides).

// world is the objects the API server holds.
type world struct {
	services map[model.ServiceName]*corev1.Service
	slices   map[string]*discoveryv1.EndpointSlice // namespace/name
	policies map[string]*model.AuthorizationPolicy
	zone     string
}

func (w *world) decoded() source.Decoded {
	var d source.Decoded
	for _, k := range slices.SortedFunc(maps.Keys(w.services), func(a, b model.ServiceName) int { return strings.Compare(a.String(), b.String()) }) {
		d.Services = append(d.Services, w.services[k])
	}
	for _, k := range slices.Sorted(maps.Keys(w.slices)) {
		d.Slices = append(d.Slices, w.slices[k])
	}
	for _, k := range slices.Sorted(maps.Keys(w.policies)) {
		d.Policies = append(d.Policies, w.policies[k])
	}
	return d
}

func (w *world) state(name model.ServiceName) source.ServiceState {
	st := source.ServiceState{Name: name, Service: w.services[name]}
	for _, k := range slices.Sorted(maps.Keys(w.slices)) {
		sl := w.slices[k]
		if sl.Namespace == name.Namespace && sl.Labels[discoveryv1.LabelServiceName] == name.Name {
			st.Slices = append(st.Slices, sl)
		}
	}
	return st
}

var (
	incNamespaces = []string{"a", "b", model.RootNamespace}
	incNames      = []string{"s0", "s1", "s2", "s3", "s4", "s5"}
)

// randomService makes a Service version: mostly valid, sometimes headless, external,
// another proxy's, L7, with affinity, or invalid; its cluster IP may collide with another
// Service's.
func randomService(r *rand.Rand, name model.ServiceName) *corev1.Service {
	// Mostly the Service's own address; one in eight times one another Service may have.
	ip := fmt.Sprintf("10.96.%d.%d", 10+slices.Index(incNamespaces, name.Namespace), 10+slices.Index(incNames, name.Name))
	if r.IntN(8) == 0 {
		ip = fmt.Sprintf("10.96.0.%d", 1+r.IntN(3))
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: name.Namespace, Name: name.Name, Labels: map[string]string{}, Annotations: map[string]string{},
			CreationTimestamp: metav1.Unix(int64(r.IntN(5)), 0)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}},
	}
	if r.IntN(4) == 0 {
		v6 := fmt.Sprintf("fd00::%x:%x", 10+slices.Index(incNamespaces, name.Namespace), 10+slices.Index(incNames, name.Name))
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, v6)
	}
	ports := []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}
	if r.IntN(2) == 0 {
		ports = append(ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	}
	if r.IntN(3) == 0 {
		ports = append(ports, corev1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP})
	}
	svc.Spec.Ports = ports
	switch r.IntN(14) {
	case 0:
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
	case 1:
		svc.Spec.Type, svc.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
	case 2:
		svc.Labels[model.ServiceProxyNameLabel] = "another-proxy"
	case 3:
		svc.Annotations[model.L7Annotation] = "true"
	case 4:
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	case 5:
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "10.96.0.999", []string{"10.96.0.999"} // invalid
	case 6:
		local := corev1.ServiceInternalTrafficPolicyLocal
		svc.Spec.InternalTrafficPolicy = &local
	case 7:
		// A NodePort is a frontend too, the Service's own as the API server's allocator
		// hands out; an externalIP is sometimes one another Service has.
		svc.Spec.Type = corev1.ServiceTypeNodePort
		svc.Spec.Ports[0].NodePort = int32(30100 + 100*slices.Index(incNamespaces, name.Namespace) + slices.Index(incNames, name.Name))
		switch r.IntN(8) {
		case 0:
			svc.Spec.ExternalIPs = []string{fmt.Sprintf("192.0.2.%d", 1+r.IntN(3))} // may be contested
		case 1, 2:
			svc.Spec.ExternalIPs = []string{fmt.Sprintf("192.0.%d.%d", 10+slices.Index(incNamespaces, name.Namespace), 10+slices.Index(incNames, name.Name))}
		}
	}
	return svc
}

func randomSlice(r *rand.Rand, ns, name, service string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)},
			{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
		},
	}
	if r.IntN(6) == 0 {
		sl.AddressType = discoveryv1.AddressTypeIPv6
	}
	for i := range r.IntN(4) {
		addr := fmt.Sprintf("10.0.%d.%d", r.IntN(3), 1+r.IntN(20))
		if sl.AddressType == discoveryv1.AddressTypeIPv6 {
			addr = fmt.Sprintf("fd01::%x", 1+r.IntN(20))
		}
		if r.IntN(25) == 0 {
			addr = "not-an-ip"
		}
		ep := discoveryv1.Endpoint{Addresses: []string{addr},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(r.IntN(4) != 0), Serving: ptr(r.IntN(3) != 0), Terminating: ptr(r.IntN(4) == 0)}}
		if r.IntN(2) == 0 {
			ep.NodeName = ptr([]string{"node-1", "node-2"}[i%2])
		}
		if r.IntN(3) == 0 {
			ep.Zone = ptr([]string{"z1", "z2"}[r.IntN(2)])
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

func ptr[T any](v T) *T { return &v }

// incrementalPair is the two paths side by side.
type incrementalPair struct {
	inc, full       source.Store
	incMaps, fulMap *lbmaptest.Fakes
	incW, fullW     *lbmap.Writer
	incX, fullX     *xds.Server
	scoped          int // steps the incremental side took scoped (Changed set)
	offered         int // steps that offered it the incremental path
}

func newIncrementalPair(t *testing.T) *incrementalPair {
	p := &incrementalPair{incMaps: lbmaptest.NewTables(64, 256), fulMap: lbmaptest.NewTables(64, 256)}
	for _, s := range []*source.Store{&p.inc, &p.full} {
		s.SetNode(source.Node{Name: "node-1"})
	}
	var err error
	if p.incW, err = lbmap.NewWriter(p.incMaps.Tables(), nopObserver{}); err != nil {
		t.Fatal(err)
	}
	if p.fullW, err = lbmap.NewWriter(p.fulMap.Tables(), nopObserver{}); err != nil {
		t.Fatal(err)
	}
	proxy := &xds.Proxy{Listen: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:15001")}, Mark: 0x100}
	p.incX = xds.NewServer(nil, xds.Stats{}, proxy, xds.Limits{})
	p.fullX = xds.NewServer(nil, xds.Stats{}, proxy, xds.Limits{})
	return p
}

func (p *incrementalPair) apply(t *testing.T, step int, inc, full *model.Snapshot) {
	t.Helper()
	if inc.Changed != nil {
		p.scoped++
	}
	if !reflect.DeepEqual(inc.Services, full.Services) {
		t.Fatalf("step %d: the snapshots' services differ:\nincremental %s\nfull        %s", step, dumpServices(inc), dumpServices(full))
	}
	if !reflect.DeepEqual(inc.Policies, full.Policies) {
		t.Fatalf("step %d: the snapshots' policies differ", step)
	}
	if !slices.Equal(inc.Errors, full.Errors) {
		t.Fatalf("step %d: the snapshots' errors differ:\nincremental %v\nfull        %v", step, inc.Errors, full.Errors)
	}
	ri, err := p.incW.Apply(inc)
	if err != nil {
		t.Fatal(err)
	}
	rf, err := p.fullW.Apply(full)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ri.Errors, rf.Errors) || ri.Services != rf.Services || ri.Backends != rf.Backends {
		t.Fatalf("step %d: the writers' results differ: %+v vs %+v", step, ri, rf)
	}
	for name, eq := range map[string]bool{
		"services": maps.Equal(p.incMaps.Services.Entries, p.fulMap.Services.Entries),
		"slots":    maps.Equal(p.incMaps.Slots.Entries, p.fulMap.Slots.Entries),
		"backends": maps.Equal(p.incMaps.Backends.Entries, p.fulMap.Backends.Entries),
		"names":    maps.Equal(p.incMaps.Names.Entries, p.fulMap.Names.Entries),
		"local":    maps.Equal(p.incMaps.Local.Entries, p.fulMap.Local.Entries),
	} {
		if !eq {
			t.Fatalf("step %d: the %s maps differ", step, name)
		}
	}
	xi, erri := p.incX.Update(t.Context(), inc)
	xf, errf := p.fullX.Update(t.Context(), full)
	if (erri == nil) != (errf == nil) || !slices.Equal(xi, xf) {
		t.Fatalf("step %d: xDS updates differ: %v %v / %v %v", step, xi, erri, xf, errf)
	}
	ie, ip := p.incX.Served()
	fe, fp := p.fullX.Served()
	sameResources(t, step, "envoy", ie, fe)
	sameResources(t, step, "proxyless", ip, fp)
}

func sameResources(t *testing.T, step int, which string, a, b *envoycache.Snapshot) {
	t.Helper()
	if (a == nil) != (b == nil) {
		t.Fatalf("step %d: %s snapshot served on one side only", step, which)
	}
	if a == nil {
		return
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		ra, rb := a.GetResources(typ), b.GetResources(typ)
		if len(ra) != len(rb) {
			t.Fatalf("step %d: %s %s: %d resources vs %d", step, which, typ, len(ra), len(rb))
		}
		for name, r := range ra {
			if !proto.Equal(r, rb[name]) {
				t.Fatalf("step %d: %s %s %q differs", step, which, typ, name)
			}
		}
	}
}

func dumpServices(s *model.Snapshot) string {
	out := ""
	for _, svc := range s.SortedServices() {
		out += fmt.Sprintf("\n  %s %s l7=%v %v", svc.Frontend, svc.Name, svc.L7, svc.Backends)
	}
	return out
}

// runIncrementalHistory plays steps random changes from seed.
func runIncrementalHistory(t *testing.T, seed uint64, steps int) *incrementalPair {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &world{services: map[model.ServiceName]*corev1.Service{}, slices: map[string]*discoveryv1.EndpointSlice{}, policies: map[string]*model.AuthorizationPolicy{}}
	p := newIncrementalPair(t)
	randomName := func() model.ServiceName {
		return model.ServiceName{Namespace: incNamespaces[r.IntN(2)], Name: incNames[r.IntN(len(incNames))]}
	}
	full := func(step int) {
		p.inc.SetNode(source.Node{Name: "node-1", Zone: w.zone})
		p.full.SetNode(source.Node{Name: "node-1", Zone: w.zone})
		d := w.decoded()
		p.inc.Replace(d)
		p.full.Replace(d)
		p.apply(t, step, p.inc.Snapshot(), p.full.Snapshot())
	}
	full(0)
	for step := 1; step <= steps; step++ {
		dirty := map[model.ServiceName]bool{}
		// A batch: one to three changes, as the work queue gathers them.
		for range 1 + r.IntN(3) {
			switch op := r.IntN(20); {
			case op < 6: // create or edit a Service
				name := randomName()
				w.services[name] = randomService(r, name)
				dirty[name] = true
			case op < 8: // delete one
				name := randomName()
				delete(w.services, name)
				dirty[name] = true
			case op < 15: // create or edit a slice, maybe relabelled to another Service
				name := randomName()
				key := fmt.Sprintf("%s/%s-%d", name.Namespace, name.Name, r.IntN(2))
				if old, ok := w.slices[key]; ok {
					dirty[model.ServiceName{Namespace: old.Namespace, Name: old.Labels[discoveryv1.LabelServiceName]}] = true
				}
				owner := name.Name
				if r.IntN(8) == 0 {
					owner = incNames[r.IntN(len(incNames))]
				}
				w.slices[key] = randomSlice(r, name.Namespace, key[len(name.Namespace)+1:], owner)
				dirty[model.ServiceName{Namespace: name.Namespace, Name: owner}] = true
			case op < 18: // delete a slice
				name := randomName()
				key := fmt.Sprintf("%s/%s-%d", name.Namespace, name.Name, r.IntN(2))
				if old, ok := w.slices[key]; ok {
					dirty[model.ServiceName{Namespace: old.Namespace, Name: old.Labels[discoveryv1.LabelServiceName]}] = true
					delete(w.slices, key)
				}
			case op < 19: // a policy comes or goes: the full path
				ns := "b" // mostly one namespace's, now and then the root namespace's (all)
				if r.IntN(6) == 0 {
					ns = model.RootNamespace
				}
				key := ns + "/deny"
				if _, ok := w.policies[key]; ok || r.IntN(3) > 0 {
					delete(w.policies, key)
				} else {
					w.policies[key] = &model.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny"},
						Spec: model.AuthorizationPolicySpec{Action: "DENY"}}
				}
				dirty = nil
			default: // the node's zone changes: the full path
				w.zone = []string{"", "z1", "z2"}[r.IntN(3)]
				dirty = nil
			}
			if dirty == nil {
				break
			}
		}
		if dirty == nil {
			full(step)
			continue
		}
		var states []source.ServiceState
		for _, name := range slices.SortedFunc(maps.Keys(dirty), func(a, b model.ServiceName) int {
			return strings.Compare(a.String(), b.String())
		}) {
			states = append(states, w.state(name))
		}
		p.inc.UpdateServices(states)
		inc := p.inc.SnapshotChanged(dirty)
		p.offered++
		p.full.Replace(w.decoded())
		p.apply(t, step, inc, p.full.Snapshot())
	}
	return p
}

func TestIncrementalMatchesFull(t *testing.T) {
	scoped, offered, steps := 0, 0, 0
	for seed := range uint64(40) {
		p := runIncrementalHistory(t, seed, 150)
		scoped, offered, steps = scoped+p.scoped, offered+p.offered, steps+151
	}
	// The histories must exercise the incremental path, not only fall back to full:
	// Rebuild declines only while a policy or a contested frontend is in reach.
	if scoped < offered*2/3 {
		t.Fatalf("only %d of the %d steps offered the incremental path took it", scoped, offered)
	}
	t.Logf("%d steps: %d offered the incremental path, %d took it", steps, offered, scoped)
}

func FuzzIncrementalMatchesFull(f *testing.F) {
	f.Add(uint64(1), uint8(40))
	f.Fuzz(func(t *testing.T, seed uint64, steps uint8) {
		runIncrementalHistory(t, seed, int(steps))
	})
}
