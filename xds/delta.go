package xds

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// deltaCache answers the delta xDS watches of one client kind from the snapshot it
// is given, at a cost that follows the change, not the number of resources.
//
// go-control-plane's snapshot cache compares every resource of a type against what a
// stream was sent, and builds a new map of every version, on each update and again
// on the watch each ACK opens: at 30,000 services that was most of one change's time.
// This cache keeps, per stream and type, the map of what the client holds (the very
// map the server keeps as the subscription's returned resources, so it is handed back
// and updated in place, never rebuilt) and the names changed since it was brought
// current. A patched snapshot names its changes; a replaced one, or a map the server
// replaced, is compared in full once.
type deltaCache struct {
	// served is the server's servedLock: the snapshot is read under its read side,
	// as patches of it hold the write side.
	served *sync.RWMutex
	// streamOf gets each delta request's stream id from the server's request callback:
	// stream state is kept by id, and forgotten when the stream closes.
	streamOf *sync.Map

	mu      sync.Mutex
	snap    *liveSnapshot
	streams map[int64]deltaStream
	// compared counts resources compared with what a client holds, for tests that
	// check a change costs its own resources.
	compared int
}

// deltaStream is one stream's state, per type URL.
type deltaStream map[string]*deltaType

// deltaType is one stream's state for one type.
type deltaType struct {
	returned map[string]string   // name → version the client holds
	dirty    map[string]struct{} // names that may differ from returned
	full     bool                // compare every resource: returned may be far behind
	watch    *deltaWatch         // the open watch, if any: answered on a change
}

type deltaWatch struct {
	req *cachev3.DeltaRequest
	sub cachev3.Subscription
	out chan cachev3.DeltaResponse
}

func newDeltaCache(served *sync.RWMutex, streamOf *sync.Map) *deltaCache {
	return &deltaCache{served: served, streamOf: streamOf, streams: map[int64]deltaStream{}}
}

// CreateDeltaWatch answers the request at once if the client lacks something of its
// subscription, and otherwise keeps the watch open until an update changes something.
func (c *deltaCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	c.served.RLock()
	defer c.served.RUnlock()
	id, ok := c.streamOf.LoadAndDelete(req)
	if !ok {
		return nil, fmt.Errorf("xds: a delta request for %s came without its stream's id", req.GetTypeUrl())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[id.(int64)]
	if st == nil {
		st = deltaStream{}
		c.streams[id.(int64)] = st
	}
	t := st[req.GetTypeUrl()]
	if t == nil || !sameMap(t.returned, sub.ReturnedResources()) {
		// A new type, or the server holds another map than the one last handed back
		// (a stream's first request, with its initial resource versions): start over
		// from what the server says the client holds.
		returned := maps.Clone(sub.ReturnedResources())
		if returned == nil {
			returned = map[string]string{}
		}
		t = &deltaType{returned: returned, dirty: map[string]struct{}{}, full: true}
		st[req.GetTypeUrl()] = t
	}
	// Names the request subscribes or unsubscribes may now need a response.
	for _, names := range [][]string{req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()} {
		for _, n := range names {
			if n == "*" {
				t.full = true
			}
			t.dirty[n] = struct{}{}
		}
	}
	w := &deltaWatch{req: req, sub: sub, out: out}
	t.watch = w
	if c.snap != nil && c.respond(req.GetTypeUrl(), t) {
		return nil, nil
	}
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.watch == w {
			t.watch = nil
		}
	}, nil
}

// update makes snap the one served. The same snapshot again (patched in place) has
// its patched names compared; another snapshot has everything compared.
func (c *deltaCache) update(snap *liveSnapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	replaced := snap != c.snap
	c.snap = snap
	patched := snap.takePatched()
	for _, st := range c.streams {
		for _, typeURL := range orderedTypes(st) {
			t := st[typeURL]
			if replaced {
				t.full = true
			}
			for _, n := range patched[typeURL] {
				t.dirty[n] = struct{}{}
			}
			if t.watch != nil && (t.full || len(t.dirty) > 0) {
				c.respond(typeURL, t)
			}
		}
	}
}

// forget drops the state of a stream that closed.
func (c *deltaCache) forget(stream int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.streams, stream)
}

// respond brings t's client up to the snapshot and sends what it lacked on its open
// watch, which then closes. It says whether it sent.
func (c *deltaCache) respond(typeURL string, t *deltaType) bool {
	w := t.watch
	resources := c.snap.GetResources(typeURL)
	versions := c.snap.VersionMap[typeURL]
	wildcard := w.sub.IsWildcard()
	subscribed := w.sub.SubscribedResources()
	resp := &deltaResponse{req: w.req, version: c.snap.GetVersion(typeURL), returned: t.returned}
	check := func(name string) {
		c.compared++
		prev, had := t.returned[name]
		r, exists := resources[name]
		_, named := subscribed[name]
		switch {
		case exists && (wildcard || named):
			if v := versions[name]; !had || prev != v {
				resp.resources = append(resp.resources, deltaResource{name: name, version: v, resource: r})
				t.returned[name] = v
			}
		case had && !wildcard && !named: // unsubscribed: forgotten without a removal
			delete(t.returned, name)
		case had:
			resp.removed = append(resp.removed, name)
			delete(t.returned, name)
		}
	}
	if t.full {
		for name := range t.returned {
			// Names the loop below visits are checked there, once.
			if _, current := resources[name]; wildcard && current {
				continue
			}
			if _, named := subscribed[name]; !wildcard && named {
				continue
			}
			check(name)
		}
		if wildcard {
			for name := range resources {
				check(name)
			}
		} else {
			for name := range subscribed {
				check(name)
			}
		}
	} else {
		for name := range t.dirty {
			check(name)
		}
	}
	t.full = false
	clear(t.dirty)
	// A wildcard stream's first request is answered even when empty: Envoy waits for
	// it to finish initialising.
	if len(resp.resources) == 0 && len(resp.removed) == 0 && !(wildcard && w.req.GetResponseNonce() == "") {
		return false
	}
	slices.SortFunc(resp.resources, func(a, b deltaResource) int { return cmp.Compare(a.name, b.name) })
	slices.Sort(resp.removed)
	t.watch = nil
	// The stream's channel has room for a response of every type, and each type has
	// one watch open at most, so this does not block.
	w.out <- resp
	return true
}

// orderedTypes are the stream's types in the order ADS wants them answered: clusters
// before their endpoints, listeners before their routes.
func orderedTypes(st deltaStream) []string {
	rank := func(typeURL string) int {
		switch typeURL {
		case resourcev3.ClusterType:
			return 0
		case resourcev3.EndpointType:
			return 1
		case resourcev3.ListenerType:
			return 2
		case resourcev3.RouteType:
			return 3
		}
		return 4
	}
	out := make([]string, 0, len(st))
	for typeURL := range st {
		out = append(out, typeURL)
	}
	slices.SortFunc(out, func(a, b string) int { return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a, b)) })
	return out
}

func sameMap(a, b map[string]string) bool {
	return a != nil && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

type deltaResource struct {
	name, version string
	resource      types.Resource
}

// deltaResponse is one response of the delta cache.
type deltaResponse struct {
	req       *cachev3.DeltaRequest
	version   string
	resources []deltaResource
	removed   []string
	// returned is what the client holds once it has this response; the server keeps
	// it as the subscription's returned resources, and the cache updates it in place.
	returned map[string]string
}

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	out := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: r.req.GetTypeUrl(), SystemVersionInfo: r.version,
		RemovedResources: r.removed, Resources: make([]*discoveryv3.Resource, 0, len(r.resources))}
	for _, res := range r.resources {
		wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(res.resource)
		if err != nil {
			return nil, err
		}
		out.Resources = append(out.Resources, &discoveryv3.Resource{Name: res.name, Version: res.version,
			Resource: &anypb.Any{TypeUrl: r.req.GetTypeUrl(), Value: wire}})
	}
	return out, nil
}

func (r *deltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                   { return r.version, nil }
func (r *deltaResponse) GetResponseVersion() string                          { return r.version }
func (r *deltaResponse) GetNextVersionMap() map[string]string                { return r.returned }
func (r *deltaResponse) GetReturnedResources() map[string]string             { return r.returned }
func (r *deltaResponse) GetContext() context.Context                         { return context.Background() }
