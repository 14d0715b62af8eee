package xds

import (
	"context"
	"maps"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// liveSnapshot is a snapshot the builder patches in place when only endpoints change,
// so that one change costs its own resources, not a copy of every map of 30,000
// endpoints. It is the go-control-plane snapshot plus the resources without TTL, kept
// beside the items: the cache asks for those on every delta watch of every update,
// and the embedded snapshot would copy the whole type each time.
type liveSnapshot struct {
	*cachev3.Snapshot
	plain [types.UnknownType]map[string]types.Resource
	// patched names the resources patched since the delta cache last looked, by type
	// URL, so it compares those alone.
	patched map[string][]string
}

func newLiveSnapshot(s *cachev3.Snapshot) *liveSnapshot {
	l := &liveSnapshot{Snapshot: s}
	for t, res := range s.Resources {
		l.plain[t] = make(map[string]types.Resource, len(res.Items))
		for name, r := range res.Items {
			l.plain[t][name] = r.Resource
		}
	}
	return l
}

// GetResources returns the resources of a type, without copying them: callers read.
func (l *liveSnapshot) GetResources(typeURL resourcev3.Type) map[string]types.Resource {
	t := cachev3.GetResponseType(typeURL)
	if t == types.UnknownType {
		return nil
	}
	return l.plain[t]
}

// copy is a snapshot of what l serves now, that later patches leave alone.
func (l *liveSnapshot) copy() *cachev3.Snapshot {
	if l == nil {
		return nil
	}
	c := *l.Snapshot
	for t := range c.Resources {
		c.Resources[t].Items = maps.Clone(c.Resources[t].Items)
	}
	c.VersionMap = map[string]map[string]string{}
	for t, v := range l.VersionMap {
		c.VersionMap[t] = maps.Clone(v)
	}
	return &c
}

// setEndpoints puts an endpoints resource and its delta version in place and gives
// the endpoint type version. Only under servedLock's write side.
func (l *liveSnapshot) setEndpoints(r types.Resource, resourceVersion, version string) {
	t := cachev3.GetResponseType(resourcev3.EndpointType)
	name := cachev3.GetResourceName(r)
	l.Resources[t].Items[name] = types.ResourceWithTTL{Resource: r}
	l.Resources[t].Version = version
	l.plain[t][name] = r
	l.VersionMap[resourcev3.EndpointType][name] = resourceVersion
	if l.patched == nil {
		l.patched = map[string][]string{}
	}
	l.patched[resourcev3.EndpointType] = append(l.patched[resourcev3.EndpointType], name)
}

// takePatched returns the names patched since it was last called, by type URL.
func (l *liveSnapshot) takePatched() map[string][]string {
	p := l.patched
	l.patched = nil
	return p
}

// servedCache is what the server asks for one client kind: state-of-the-world
// watches and fetches from a go-control-plane snapshot cache, under the read side of
// lock (patches of the served snapshots hold its write side; the cache's own updates,
// SetSnapshot, read them under its own lock and are made by the one goroutine that
// patches), and delta watches from the delta cache.
type servedCache struct {
	lock  *sync.RWMutex
	sotw  cachev3.Cache
	delta *deltaCache
}

func (c servedCache) CreateWatch(r *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	c.lock.RLock()
	defer c.lock.RUnlock()
	return c.sotw.CreateWatch(r, sub, out)
}

func (c servedCache) CreateDeltaWatch(r *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	return c.delta.CreateDeltaWatch(r, sub, out)
}

func (c servedCache) Fetch(ctx context.Context, r *cachev3.Request) (cachev3.Response, error) {
	c.lock.RLock()
	defer c.lock.RUnlock()
	return c.sotw.Fetch(ctx, r)
}
