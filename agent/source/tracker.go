package source

import (
	"sync"

	"github.com/sockmesh/sockmesh/agent/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// changeTracker collects, between two passes of the work queue, what the informers'
// events touched, as kube-proxy's service and endpoint change trackers do: the
// Services whose object or EndpointSlices changed, or that a full pass is due
// (anything else changed: a pod, a policy, the node, or the first list).
type changeTracker struct {
	mu       sync.Mutex
	services map[model.ServiceName]bool
	full     bool
}

func (c *changeTracker) service(name model.ServiceName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.services == nil {
		c.services = map[model.ServiceName]bool{}
	}
	c.services[name] = true
}

func (c *changeTracker) everything() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.full = true
}

// take returns what changed since the last take and starts afresh.
func (c *changeTracker) take() (services map[model.ServiceName]bool, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	services, full = c.services, c.full
	c.services, c.full = nil, false
	return services, full
}

// putBack returns what a failed pass took, for the retry.
func (c *changeTracker) putBack(services map[model.ServiceName]bool, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.full = c.full || full
	for name := range services {
		if c.services == nil {
			c.services = map[model.ServiceName]bool{}
		}
		c.services[name] = true
	}
}

// serviceOf names the Service an informer object belongs to: a Service's own name, an
// EndpointSlice's service-name label. ok is false for other objects.
func serviceOf(obj any) (model.ServiceName, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	switch o := obj.(type) {
	case *corev1.Service:
		return model.ServiceName{Namespace: o.Namespace, Name: o.Name}, true
	case *discoveryv1.EndpointSlice:
		return serviceOfSlice(o), true
	}
	return model.ServiceName{}, false
}

// byServiceIndex indexes EndpointSlices by "namespace/service-name", so a pass reads one
// Service's slices without listing every slice.
const byServiceIndex = "sockmesh.io/service"

func sliceServiceKey(obj any) ([]string, error) {
	name, ok := serviceOf(obj)
	if !ok {
		return nil, nil
	}
	return []string{name.Namespace + "/" + name.Name}, nil
}

// serviceStates reads the named Services' current objects and slices from the
// informers' caches.
func serviceStates(names map[model.ServiceName]bool, services, slices cache.Indexer) ([]ServiceState, error) {
	out := make([]ServiceState, 0, len(names))
	for name := range names {
		st := ServiceState{Name: name}
		obj, exists, err := services.GetByKey(name.Namespace + "/" + name.Name)
		if err != nil {
			return nil, err
		}
		if exists {
			st.Service, _ = obj.(*corev1.Service)
		}
		objs, err := slices.ByIndex(byServiceIndex, name.Namespace+"/"+name.Name)
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
				st.Slices = append(st.Slices, sl)
			}
		}
		out = append(out, st)
	}
	return out, nil
}
