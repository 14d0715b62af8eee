package source

import (
	"maps"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// The Store's incremental path: the kubernetes source's event handlers name the
// Services whose Service object or EndpointSlices changed (the change tracker), and
// UpdateServices plus SnapshotChanged validate and rebuild those alone. Replace and
// Snapshot stay the full path, taken for the first list, for anything beyond Services
// and EndpointSlices (pods, policies, the node), and whenever model.Rebuild declines.

// ServiceState is one Service as the API server now has it: its object (nil once
// deleted) and every EndpointSlice labelled with its name.
type ServiceState struct {
	Name    model.ServiceName
	Service *corev1.Service
	Slices  []*discoveryv1.EndpointSlice
}

// UpdateServices stores the current state of the named Services, validating each
// object as Replace does (an invalid version leaves the last good one in place), and
// returns the errors of those objects. It must follow a Replace: the objects of
// other kinds, and of other Services, stay as they are.
func (s *Store) UpdateServices(states []ServiceState) []model.ObjectError {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++                // s.last stays: SnapshotChanged rebuilds it for these Services
	if s.slicesOf == nil { // no Replace yet: start from nothing
		s.services, s.slices = map[objectKey]*corev1.Service{}, map[objectKey]*discoveryv1.EndpointSlice{}
		s.rejectedServices = map[model.ServiceName]bool{}
		s.reindexSlices()
	}
	var errs []model.ObjectError
	listed := map[objectKey]bool{} // every slice the batch names, under any Service
	for _, st := range states {
		key := objectKey{st.Name.Namespace, st.Name.Name}
		s.dropErrors(model.KindService, key)
		delete(s.rejectedServices, st.Name)
		switch svc := st.Service; {
		case svc == nil:
			delete(s.services, key)
		case !model.ProxiedBy(svc, s.node.ProxyName):
			delete(s.services, key)
			s.rejectedServices[st.Name] = true // another proxy's: its slices are not "unknown"
		default:
			if bad := model.ValidateService(svc); len(bad) > 0 {
				errs = append(errs, s.keepOrReject(key, bad)...)
			} else {
				s.services[key] = svc
			}
		}
		for _, sl := range st.Slices {
			k := objectKey{sl.Namespace, sl.Name}
			listed[k] = true
			s.dropErrors(model.KindEndpointSlice, k)
			if bad := model.ValidateEndpointSlice(sl); len(bad) > 0 {
				if _, ok := s.slices[k]; ok {
					for i := range bad {
						bad[i].Message += keepingSuffix
					}
				}
				errs = append(errs, bad...)
				continue
			}
			s.slices[k] = sl
		}
	}
	// Deletions last, so a slice that moved between two Services of the batch stays.
	for _, st := range states {
		for k := range s.slicesOf[st.Name] {
			if cur, ok := s.slices[k]; ok && !listed[k] && serviceOfSlice(cur) == st.Name {
				delete(s.slices, k)
				s.dropErrors(model.KindEndpointSlice, k)
			}
		}
	}
	for _, st := range states {
		candidates := maps.Clone(s.slicesOf[st.Name])
		for _, sl := range st.Slices {
			if candidates == nil {
				candidates = map[objectKey]bool{}
			}
			candidates[objectKey{sl.Namespace, sl.Name}] = true
		}
		s.setSlicesOf(st.Name, candidates)
	}
	s.errs = append(s.errs, errs...)
	return errs
}

// keepOrReject reports a Service version that failed validation: the last good version
// stays in use, or the Service counts as rejected (so its slices are not "unknown").
func (s *Store) keepOrReject(key objectKey, bad []model.ObjectError) []model.ObjectError {
	if _, ok := s.services[key]; ok {
		for i := range bad {
			bad[i].Message += keepingSuffix
		}
		return bad
	}
	s.rejectedServices[model.ServiceName{Namespace: key.namespace, Name: key.name}] = true
	return bad
}

func (s *Store) dropErrors(kind string, key objectKey) {
	s.errs = slices.DeleteFunc(s.errs, func(e model.ObjectError) bool {
		return e.Kind == kind && e.Namespace == key.namespace && e.Name == key.name
	})
}

func serviceOfSlice(sl *discoveryv1.EndpointSlice) model.ServiceName {
	return model.ServiceName{Namespace: sl.Namespace, Name: sl.Labels[discoveryv1.LabelServiceName]}
}

// setSlicesOf indexes, of the candidate keys, the stored slices labelled with name.
func (s *Store) setSlicesOf(name model.ServiceName, candidates map[objectKey]bool) {
	keys := map[objectKey]bool{}
	for k := range candidates {
		if sl, ok := s.slices[k]; ok && serviceOfSlice(sl) == name {
			keys[k] = true
		}
	}
	if len(keys) == 0 {
		delete(s.slicesOf, name)
		return
	}
	s.slicesOf[name] = keys
}

// reindexSlices rebuilds the slices-by-Service index after a Replace.
func (s *Store) reindexSlices() {
	s.slicesOf = map[model.ServiceName]map[objectKey]bool{}
	for k, sl := range s.slices {
		name := serviceOfSlice(sl)
		if s.slicesOf[name] == nil {
			s.slicesOf[name] = map[objectKey]bool{}
		}
		s.slicesOf[name][k] = true
	}
}

// SnapshotChanged is Snapshot after UpdateServices, rebuilding only the named
// Services' frontends when model.Rebuild can; otherwise it is Snapshot.
func (s *Store) SnapshotChanged(dirty map[model.ServiceName]bool) *model.Snapshot {
	s.mu.Lock()
	prev := s.last
	if prev == nil {
		s.mu.Unlock()
		return s.Snapshot()
	}
	in := model.Input{RejectedServices: s.rejectedServices, Holders: s.holders,
		NodeName: s.node.Name, NodeZone: s.node.Zone, ProxyName: s.node.ProxyName, NodePortRange: s.node.NodePortRange}
	for name := range dirty {
		if svc, ok := s.services[objectKey{name.Namespace, name.Name}]; ok {
			in.Services = append(in.Services, svc)
		}
		for k := range s.slicesOf[name] {
			in.EndpointSlices = append(in.EndpointSlices, s.slices[k])
		}
	}
	for k, p := range s.policies {
		for name := range dirty {
			if k.namespace == name.Namespace || k.namespace == model.RootNamespace {
				in.Policies = append(in.Policies, p)
				break
			}
		}
	}
	// Small: built under the lock, so the maps need no copy.
	snap, ok := model.Rebuild(prev, in, dirty)
	if !ok {
		s.mu.Unlock()
		return s.Snapshot()
	}
	snap.Errors = model.SortedErrors(append(snap.Errors, s.errs...))
	for fe := range snap.Changed {
		if svc, ok := snap.Services[fe]; ok {
			s.holders[fe] = svc.Name
		} else {
			delete(s.holders, fe)
		}
	}
	s.last = snap
	s.mu.Unlock()
	return snap
}
