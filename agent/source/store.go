package source

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/sockmesh/sockmesh/agent/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Store is the one layer that decides what is accepted. It remembers the last good
// version of every object, keyed by kind (one map per kind), namespace and name; each
// object version is validated once, here, and duplicates are dropped here. An update
// that fails validation, or that could not be read at all, does not replace a good
// version: a typo in one Service must not take down the version already programmed.
// The zero Store is empty and ready to use; it is safe for concurrent use.
//
// The Store keeps the objects it is given and Build reads them while the Store is not
// locked, so callers must not modify objects after handing them over.
type Store struct {
	mu       sync.Mutex
	services map[objectKey]*corev1.Service
	slices   map[objectKey]*discoveryv1.EndpointSlice
	pods     map[objectKey]*corev1.Pod
	// policies are never kept at a last good version, since the newest intent may be
	// stricter: a policy that cannot be used is replaced by one that denies (fails
	// closed), by Build for a bad spec, here for one that could not even be read.
	policies map[objectKey]*model.AuthorizationPolicy
	// rejectedServices are in the input but not accepted, with no older version to use.
	rejectedServices map[model.ServiceName]bool
	// holders says which Service holds each frontend, from the last snapshot (or, at
	// start, from what the previous agent programmed).
	holders map[model.Frontend]model.ServiceName
	errs    []model.ObjectError // errors of the current input
	node    Node

	// slicesOf indexes the stored slices by the Service they name, for UpdateServices.
	slicesOf map[model.ServiceName]map[objectKey]bool
	// last is the snapshot of the stored objects, which SnapshotChanged rebuilds from:
	// nil after anything only a full build applies (a Replace, a node change). gen
	// counts the changes, so a full build that raced one is not taken for current.
	last *model.Snapshot
	gen  uint64
}

// Node is what the model needs to know of the node the agent runs on.
type Node struct {
	Name string // matched against endpoints' nodeName (internalTrafficPolicy Local, hints)
	Zone string // its topology.kubernetes.io/zone label (topology hints)
	// ProxyName is the service.kubernetes.io/service-proxy-name this agent answers to;
	// empty: only Services without that label are ours, as for kube-proxy.
	ProxyName string
	// NodePortRange is the NodePort range this node serves.
	NodePortRange model.PortRange
}

// setZone updates the node's zone alone, as the Node object says.
func (s *Store) setZone(zone string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node.Zone != zone {
		s.last, s.gen = nil, s.gen+1
	}
	s.node.Zone = zone
}

// SetNode tells the Store which node it builds for; the next Snapshot uses it.
func (s *Store) SetNode(n Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node != n {
		s.last, s.gen = nil, s.gen+1
	}
	s.node = n
}

type objectKey struct{ namespace, name string }

// keepingSuffix ends the message of an invalid update when an older version stays in use.
const keepingSuffix = "; keeping the last good version"

// Replace makes the decoded input the whole set of objects: objects not in it are
// deleted. Each object in it is validated alone; a valid one is stored, an invalid or
// unreadable one is reported and leaves the last good version of that object (if any)
// in place. An object of an unknown kind keeps the last good version of every object of
// the same namespace and name, since it may be a typo of that kind. The returned errors
// are also part of every later Snapshot, until the next Replace.
func (s *Store) Replace(d Decoded) []model.ObjectError {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := replacement{rejected: d.Rejected, typos: map[objectKey][]string{}}
	for _, rej := range d.Rejected {
		if !rej.Ours {
			k := objectKey{rej.Namespace, rej.Name}
			r.typos[k] = append(r.typos[k], rej.Kind)
		}
	}
	// A Service meant for another proxy is not ours to validate or report.
	ours := slices.DeleteFunc(slices.Clone(d.Services), func(svc *corev1.Service) bool {
		return svc != nil && !model.ProxiedBy(svc, s.node.ProxyName)
	})
	s.services = replaceKind(&r, s.services, ours, model.KindService,
		func(o *corev1.Service) *metav1.ObjectMeta { return &o.ObjectMeta }, model.ValidateService)
	s.rejectedServices = map[model.ServiceName]bool{}
	for k := range r.unusable {
		s.rejectedServices[model.ServiceName{Namespace: k.namespace, Name: k.name}] = true
	}
	for _, svc := range d.Services {
		if svc != nil && !model.ProxiedBy(svc, s.node.ProxyName) {
			// Another proxy's: its slices are not "unknown" either.
			s.rejectedServices[model.ServiceName{Namespace: svc.Namespace, Name: svc.Name}] = true
		}
	}
	s.slices = replaceKind(&r, s.slices, d.Slices, model.KindEndpointSlice,
		func(o *discoveryv1.EndpointSlice) *metav1.ObjectMeta { return &o.ObjectMeta }, model.ValidateEndpointSlice)
	s.pods = replaceKind(&r, s.pods, d.Pods, model.KindPod,
		func(o *corev1.Pod) *metav1.ObjectMeta { return &o.ObjectMeta }, model.ValidatePod)
	s.policies = replacePolicies(&r, d.Policies)
	for _, rej := range d.Rejected {
		if !rej.Ours {
			e := rej.Err
			if kept := r.keptForTypo[objectKey{rej.Namespace, rej.Name}]; len(kept) > 0 {
				slices.Sort(kept)
				e.Message += fmt.Sprintf("; keeping the last good %s of that name, in case this was meant as one", joinOr(kept))
			}
			r.errs = append(r.errs, policySuffix(rej, e))
		}
	}
	s.errs = r.errs
	s.reindexSlices()
	s.last, s.gen = nil, s.gen+1
	return slices.Clone(r.errs)
}

// replacement is one Replace in progress.
type replacement struct {
	rejected []Rejected
	typos    map[objectKey][]string // unknown kinds by namespace and name
	// keptForTypo lists, per name of an unknown-kind object, the kinds kept for it.
	keptForTypo map[objectKey][]string
	unusable    map[objectKey]bool // of the kind being replaced: in the input, not used
	errs        []model.ObjectError
}

func (r *replacement) report(errs ...model.ObjectError) { r.errs = append(r.errs, errs...) }

// replaceKind builds the next version of one kind's objects.
func replaceKind[T any](r *replacement, old map[objectKey]*T, in []*T, kind string, meta func(*T) *metav1.ObjectMeta,
	validate func(*T) []model.ObjectError) map[objectKey]*T {
	next := make(map[objectKey]*T, len(in))
	seen := map[objectKey]bool{}
	r.unusable = map[objectKey]bool{}
	// keep leaves the old version in place for an object that is in the input but not
	// usable, and says so in its errors.
	keep := func(key objectKey, errs []model.ObjectError) []model.ObjectError {
		if prev, ok := old[key]; ok {
			next[key] = prev
			for i := range errs {
				errs[i].Message += keepingSuffix
			}
		} else {
			r.unusable[key] = true
		}
		return errs
	}
	for _, o := range in {
		if o == nil {
			continue
		}
		m := meta(o)
		key := objectKey{m.Namespace, m.Name}
		if seen[key] {
			r.report(duplicate(kind, key))
			continue
		}
		seen[key] = true
		if bad := validate(o); len(bad) > 0 {
			r.report(keep(key, bad)...)
			continue
		}
		next[key] = o
	}
	for _, rej := range r.rejected {
		if !rej.Ours || rej.Kind != kind {
			continue
		}
		key := objectKey{rej.Namespace, rej.Name}
		if seen[key] {
			r.report(duplicate(kind, key))
			continue
		}
		seen[key] = true
		errs := []model.ObjectError{rej.Err}
		if kind == model.KindAuthorizationPolicy {
			r.unusable[key] = true // never kept at an older version: replacePolicies denies
		} else {
			errs = keep(key, errs)
		}
		r.report(policySuffix(rej, errs[0]))
	}
	// An unknown kind with this kind's namespace and name may be this kind misspelt.
	for key := range r.typos {
		if prev, ok := old[key]; ok && !seen[key] && kind != model.KindAuthorizationPolicy {
			next[key] = prev
			if r.keptForTypo == nil {
				r.keptForTypo = map[objectKey][]string{}
			}
			r.keptForTypo[key] = append(r.keptForTypo[key], kind)
		}
	}
	return next
}

// replacePolicies builds the next policies: the readable ones, validated by name, and a
// denying stand-in for each policy-like object that could not be read.
func replacePolicies(r *replacement, in []*model.AuthorizationPolicy) map[objectKey]*model.AuthorizationPolicy {
	next := replaceKind(r, nil, in, model.KindAuthorizationPolicy,
		func(o *model.AuthorizationPolicy) *metav1.ObjectMeta { return &o.ObjectMeta }, model.ValidatePolicyName)
	for key := range r.unusable {
		next[key] = denyStandIn(model.KindAuthorizationPolicy, key)
	}
	for _, rej := range r.rejected {
		if rej.PolicyLike && !rej.Ours {
			// Keyed apart from a readable policy of the same name, which still applies.
			key := objectKey{rej.Namespace, rej.Name + " (" + rej.Kind + ")"}
			next[key] = denyStandIn(rej.Kind, key)
		}
	}
	return next
}

func denyStandIn(kind string, key objectKey) *model.AuthorizationPolicy {
	return &model.AuthorizationPolicy{
		TypeMeta:   metav1.TypeMeta{Kind: kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: key.namespace, Name: key.name},
		Unreadable: true,
	}
}

// policySuffix tells, on the error of a policy-like object, that it fails closed.
func policySuffix(rej Rejected, e model.ObjectError) model.ObjectError {
	if !rej.PolicyLike {
		return e
	}
	scope := "namespace " + rej.Namespace
	if rej.Namespace == model.RootNamespace {
		scope = "every namespace (it is in the root namespace)"
	}
	e.Message += "; it may be an AuthorizationPolicy, so every service of " + scope +
		" denies all requests until it is fixed (fail closed)"
	return e
}

func duplicate(kind string, key objectKey) model.ObjectError {
	return model.ObjectError{Kind: kind, Namespace: key.namespace, Name: key.name,
		Reason: model.ReasonDuplicateObject, Message: "the input holds this object twice; only the first copy is used"}
}

func joinOr(kinds []string) string {
	out := ""
	for i, k := range kinds {
		switch {
		case i == 0:
		case i == len(kinds)-1:
			out += " and "
		default:
			out += ", "
		}
		out += k
	}
	return out
}

// SeedHolders tells the Store which Service held each frontend before it was given any
// input (what a previous agent programmed), so a newcomer cannot take one over at start.
func (s *Store) SeedHolders(h map[model.Frontend]model.ServiceName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holders == nil {
		s.holders = maps.Clone(h)
	}
}

// Snapshot resolves the stored objects into a model snapshot, with this input's errors
// appended to the ones Build finds. The frontends it assigns become the holders the
// next Snapshot respects.
func (s *Store) Snapshot() *model.Snapshot {
	s.mu.Lock()
	in := model.Input{Services: values(s.services), EndpointSlices: values(s.slices),
		Pods: values(s.pods), Policies: values(s.policies),
		RejectedServices: maps.Clone(s.rejectedServices), Holders: maps.Clone(s.holders),
		NodeName: s.node.Name, NodeZone: s.node.Zone, ProxyName: s.node.ProxyName, NodePortRange: s.node.NodePortRange}
	errs := slices.Clone(s.errs)
	gen := s.gen
	s.mu.Unlock()
	// Build runs unlocked: stored objects are never modified, and a large Build must not
	// stall a concurrent Replace.
	snap := model.BuildAll(in)
	snap.Errors = model.SortedErrors(append(snap.Errors, errs...))
	holders := make(map[model.Frontend]model.ServiceName, len(snap.Services))
	for fe, svc := range snap.Services {
		holders[fe] = svc.Name
	}
	s.mu.Lock()
	s.holders = holders
	if s.gen == gen {
		s.last = snap
	}
	s.mu.Unlock()
	return snap
}

// values returns the map's objects; Build sorts them, so their order does not matter.
func values[T any](m map[objectKey]*T) []*T {
	out := make([]*T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
