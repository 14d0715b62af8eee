package source

import (
	"slices"
	"sync"

	"github.com/sockmesh/sockmesh/agent/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Store remembers the last good version of every object, keyed by kind (one map per
// kind), namespace and name. An update that fails validation does not replace a good
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
	// policies are not validated here: a policy is never kept at a last good version,
	// since its newest intent may be stricter. Build rejects it and fails closed instead.
	policies map[objectKey]*model.AuthorizationPolicy
	errs     []model.ObjectError // validation errors of the current input
}

type objectKey struct{ namespace, name string }

// keepingSuffix ends the message of an invalid update when an older version stays in use.
const keepingSuffix = "; keeping the last good version"

// Replace makes the input the whole set of objects: objects not in it are deleted.
// Each object in it is validated alone; a valid one is stored, an invalid one is
// reported and leaves the last good version of that object (if any) in place. The
// returned errors are also part of every later Snapshot, until the next Replace.
func (s *Store) Replace(in model.Input) []model.ObjectError {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []model.ObjectError
	s.services = replace(s.services, in.Services, model.KindService,
		func(o *corev1.Service) *metav1.ObjectMeta { return &o.ObjectMeta }, model.ValidateService, &errs)
	s.slices = replace(s.slices, in.EndpointSlices, model.KindEndpointSlice,
		func(o *discoveryv1.EndpointSlice) *metav1.ObjectMeta { return &o.ObjectMeta }, model.ValidateEndpointSlice, &errs)
	s.pods = replace(s.pods, in.Pods, model.KindPod,
		func(o *corev1.Pod) *metav1.ObjectMeta { return &o.ObjectMeta }, noValidation, &errs)
	s.policies = replace(s.policies, in.Policies, model.KindAuthorizationPolicy,
		func(o *model.AuthorizationPolicy) *metav1.ObjectMeta { return &o.ObjectMeta }, noValidation, &errs)
	s.errs = errs
	return slices.Clone(errs)
}

func replace[T any](old map[objectKey]*T, in []*T, kind string, meta func(*T) *metav1.ObjectMeta,
	validate func(*T) []model.ObjectError, errs *[]model.ObjectError) map[objectKey]*T {
	next := make(map[objectKey]*T, len(in))
	seen := map[objectKey]bool{}
	for _, o := range in {
		if o == nil {
			continue
		}
		m := meta(o)
		key := objectKey{m.Namespace, m.Name}
		if seen[key] {
			*errs = append(*errs, model.ObjectError{Kind: kind, Namespace: key.namespace, Name: key.name,
				Reason: model.ReasonDuplicateObject, Message: "the input holds this object twice; only the first copy is used"})
			continue
		}
		seen[key] = true
		bad := validate(o)
		if len(bad) == 0 {
			next[key] = o
			continue
		}
		if prev, ok := old[key]; ok {
			next[key] = prev
			for i := range bad {
				bad[i].Message += keepingSuffix
			}
		}
		*errs = append(*errs, bad...)
	}
	return next
}

// Snapshot resolves the stored objects into a model snapshot, with this input's
// validation errors appended to the ones Build finds.
func (s *Store) Snapshot() *model.Snapshot {
	s.mu.Lock()
	in := model.Input{Services: values(s.services), EndpointSlices: values(s.slices),
		Pods: values(s.pods), Policies: values(s.policies)}
	errs := slices.Clone(s.errs)
	s.mu.Unlock()
	// Build runs unlocked: stored objects are never modified, and a large Build must not
	// stall a concurrent Replace.
	snap := model.BuildAll(in)
	snap.Errors = append(snap.Errors, errs...)
	return snap
}

func noValidation[T any](*T) []model.ObjectError { return nil }

// values returns the map's objects; Build sorts them, so their order does not matter.
func values[T any](m map[objectKey]*T) []*T {
	out := make([]*T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
