package model

import (
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// The incremental path. A change to one Service or its EndpointSlices rebuilds that
// Service's frontends alone and reuses every other one from the previous snapshot, the
// way kube-proxy's change trackers feed only what changed. BuildAll stays the one full
// path (the first input, a resync, anything Rebuild declines), and both give the same
// snapshot for the same objects: TestRebuildMatchesBuildAll and the agent's
// incremental-vs-full test hold them to it.

type objectKey struct{ namespace, name string }

// builtErrors are the errors Build found, grouped so that one Service's can be
// replaced: a Service's own and its EndpointSlices' under its name, the rest (pods,
// policies) apart.
type builtErrors struct {
	byService map[ServiceName][]ObjectError
	other     []ObjectError
}

// contested says whether some Service waits for a frontend another holds (a
// duplicate_frontend error): a change to the holder may hand it over, which only a full
// build sees.
func (g builtErrors) contested() bool {
	for _, es := range g.byService {
		for _, e := range es {
			if e.Reason == ReasonDuplicateFrontend {
				return true
			}
		}
	}
	return false
}

// groupErrors files the builder's errors by the Service they belong to.
func (b *builder) groupErrors() builtErrors {
	g := builtErrors{}
	for _, e := range b.snap.Errors {
		var svc ServiceName
		switch e.Kind {
		case KindService:
			svc = ServiceName{e.Namespace, e.Name}
		case KindEndpointSlice:
			svc = b.sliceService[objectKey{e.Namespace, e.Name}]
		default:
			g.other = append(g.other, e)
			continue
		}
		if g.byService == nil {
			g.byService = map[ServiceName][]ObjectError{}
		}
		g.byService[svc] = append(g.byService[svc], e)
	}
	return g
}

// all is every error, sorted per object so that two builds of the same input compare
// equal and logs and metrics do not flap; within one object they keep their order.
func (g builtErrors) all() []ObjectError {
	n := len(g.other)
	for _, es := range g.byService {
		n += len(es)
	}
	if n == 0 {
		return nil
	}
	out := make([]ObjectError, 0, n)
	out = append(out, g.other...)
	for _, es := range g.byService {
		out = append(out, es...)
	}
	sortErrors(out)
	return out
}

// replaced is g with the errors of the dirty Services replaced by fresh ones.
func (g builtErrors) replaced(dirty map[ServiceName]bool, fresh builtErrors) builtErrors {
	out := builtErrors{other: g.other, byService: maps.Clone(g.byService)}
	for name := range dirty {
		delete(out.byService, name)
	}
	for name, es := range fresh.byService {
		if out.byService == nil {
			out.byService = map[ServiceName][]ObjectError{}
		}
		out.byService[name] = es
	}
	return out
}

// Rebuild returns what BuildAll would return for the whole input, given prev (what
// BuildAll or Rebuild returned for the input before) and a change confined to the
// Services named in dirty: their Service objects, their EndpointSlices, or both. in
// holds only those Services' current objects (a deleted one is absent) and all their
// EndpointSlices, the AuthorizationPolicies that could target them (of their namespaces
// and the root namespace), and the full input's RejectedServices, Holders and node
// settings. The result's Changed lists the frontends that may differ from prev's.
//
// ok is false, and the caller must build in full, when the change may reach beyond the
// dirty Services: a policy could target them (policy targets and L7 decisions are
// resolved across services), a frontend they claim is held by another Service, or some
// Service waits for a frontend that a change could free. A Rebuild takes prev's index
// of frontends, so the next one must start from its result, not from prev.
func Rebuild(prev *Snapshot, in Input, dirty map[ServiceName]bool) (snap *Snapshot, ok bool) {
	if prev == nil || prev.frontendsOf == nil && len(prev.Services) > 0 || len(in.Policies) > 0 || prev.built.contested() {
		return nil, false
	}
	b := &builder{snap: NewSnapshot(), annotatedL7: map[ServiceName]bool{}, nodeName: in.NodeName, nodeZone: in.NodeZone, nodePorts: in.NodePortRange}
	svcs := sortedObjects(in.Services, func(s *corev1.Service) (string, string) { return s.Namespace, s.Name })
	svcs = slices.DeleteFunc(svcs, func(s *corev1.Service) bool { return !dirty[ServiceName{s.Namespace, s.Name}] })
	b.present = map[ServiceName]bool{}
	for _, svc := range svcs {
		b.present[ServiceName{svc.Namespace, svc.Name}] = true
	}
	svcs = slices.DeleteFunc(svcs, func(s *corev1.Service) bool { return !ProxiedBy(s, in.ProxyName) })
	for name := range in.RejectedServices {
		if dirty[name] {
			b.present[name] = true
		}
	}
	for _, svc := range svcs {
		for _, fe := range claimedFrontends(svc) {
			if cur, held := prev.Services[fe]; held && !dirty[cur.Name] {
				return nil, false
			}
		}
	}
	owners := frontendOwners(svcs, in.Holders)
	ours := slices.DeleteFunc(slices.Clone(in.EndpointSlices), func(s *discoveryv1.EndpointSlice) bool {
		return s == nil || !dirty[ServiceName{s.Namespace, s.Labels[discoveryv1.LabelServiceName]}]
	})
	bySvc := b.indexSlices(ours)
	for _, svc := range svcs {
		b.addService(svc, bySvc[ServiceName{svc.Namespace, svc.Name}], owners)
	}
	b.snap.Policies = prev.Policies // none can target the dirty Services (checked above)
	b.decideL7()
	fresh := b.groupErrors()

	out := &Snapshot{Policies: prev.Policies, Changed: map[Frontend]bool{}}
	out.Services = maps.Clone(prev.Services) // the consumers' map: prev stays as it was
	// The index is Rebuild's alone, so it moves to out instead of being copied (30k
	// entries a change): prev, left without one, can no longer be rebuilt from, and a
	// Rebuild of it declines.
	out.frontendsOf, prev.frontendsOf = prev.frontendsOf, nil
	if out.frontendsOf == nil {
		out.frontendsOf = map[ServiceName][]Frontend{}
	}
	for name := range dirty {
		for _, fe := range out.frontendsOf[name] {
			delete(out.Services, fe)
			out.Changed[fe] = true
		}
		delete(out.frontendsOf, name)
	}
	for fe, svc := range b.snap.Services {
		out.Services[fe] = svc
		out.frontendsOf[svc.Name] = append(out.frontendsOf[svc.Name], fe)
		out.Changed[fe] = true
	}
	for name := range dirty {
		sortFrontends(out.frontendsOf[name])
	}
	out.built = prev.built.replaced(dirty, fresh)
	out.Errors = out.built.all()
	return out, true
}

// indexFrontends records which frontends each Service holds, for Rebuild.
func (s *Snapshot) indexFrontends() {
	s.frontendsOf = make(map[ServiceName][]Frontend, len(s.Services))
	for fe, svc := range s.Services {
		s.frontendsOf[svc.Name] = append(s.frontendsOf[svc.Name], fe)
	}
	for _, fes := range s.frontendsOf {
		sortFrontends(fes)
	}
}

func sortFrontends(fes []Frontend) { slices.SortFunc(fes, CompareFrontends) }

// SortedErrors sorts errs per object (Kind, namespace, name), keeping each object's
// errors in their order, and returns it: the one order both build paths give.
func SortedErrors(errs []ObjectError) []ObjectError {
	sortErrors(errs)
	return errs
}
