package xds

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/sockmesh/sockmesh/agent/model"
)

// clientKind keys the snapshots the agent serves. Every client of a node agent's socket
// runs on that node, so all get the node's view whatever id they send; proxyless gRPC
// clients get it without the Envoy-only listeners and cluster.
type clientKind struct{}

const (
	envoyClients     = "envoy"
	proxylessClients = "proxyless"
)

func (clientKind) ID(n *corev3.Node) string {
	if strings.HasPrefix(strings.ToLower(n.GetUserAgentName()), "grpc") {
		return proxylessClients
	}
	return envoyClients
}

// Stats counts what the server did, for the agent's metrics. Nil fields count nothing.
type Stats struct {
	Streams           func(delta int) // open ADS streams, +1 / -1
	Nacks             func()          // a client rejected a version
	StreamsRefused    func()          // a stream refused: Limits.MaxStreams were open
	SlowStreamsClosed func()          // a stream's connection closed: a response unread past Limits.SendTimeout
}

// Server is the ADS server (state-of-the-world and delta) for this node's proxies and
// proxyless gRPC clients.
type Server struct {
	log *slog.Logger
	// Two caches, picked per stream by client kind. Envoy's runs in ADS mode, which
	// answers a request only once it names every resource of its type (Envoy's EDS and
	// RDS requests do, and this keeps it from seeing half an update). A proxyless
	// client asks for just the listener and cluster it dials, so its cache is not in
	// ADS mode, or it would never be answered once there are two services.
	envoyCache, proxylessCache cachev3.SnapshotCache
	// Delta streams are answered by caches of our own, in O(change) (delta.go).
	envoyDelta, proxylessDelta *deltaCache
	// deltaStreamOf carries each delta request's stream id from the request callback
	// to the delta caches.
	deltaStreamOf sync.Map
	// servedLock lets the builder patch the snapshots the caches hold in place: the
	// caches' reads of them take its read side (servedCache, deltaCache), a patch its
	// write side.
	servedLock sync.RWMutex
	grpc       *grpc.Server
	mu         sync.Mutex
	version    uint64
	builder    builder
	served     snapshotPair // what the caches hold
	sent       sentVersions
}

// NewServer makes an ADS server; Update gives it something to serve. With a proxy,
// the snapshots also carry the node Envoy's redirect listeners. Zero limits are
// DefaultLimits.
func NewServer(log *slog.Logger, stats Stats, proxy *Proxy, limits Limits) *Server {
	guard := &streamGuard{limits: limits.withDefaults(), stats: stats, log: log}
	s := &Server{log: log, grpc: grpc.NewServer(grpc.StreamInterceptor(guard.intercept)),
		envoyCache:     cachev3.NewSnapshotCache(true, clientKind{}, nil),
		proxylessCache: cachev3.NewSnapshotCache(false, clientKind{}, nil)}
	s.envoyDelta = newDeltaCache(&s.servedLock, &s.deltaStreamOf)
	s.proxylessDelta = newDeltaCache(&s.servedLock, &s.deltaStreamOf)
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return clientKind{}.ID(r.GetNode()) },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return clientKind{}.ID(r.GetNode()) },
		Caches: map[string]cachev3.Cache{
			envoyClients:     servedCache{&s.servedLock, s.envoyCache, s.envoyDelta},
			proxylessClients: servedCache{&s.servedLock, s.proxylessCache, s.proxylessDelta},
		},
	}
	s.builder.proxy = proxy
	s.builder.patching = &s.servedLock
	cb := serverv3.CallbackFuncs{
		StreamOpenFunc:      func(context.Context, int64, string) error { call(stats.Streams, 1); return nil },
		StreamClosedFunc:    func(id int64, _ *corev3.Node) { s.sent.forget(id); call(stats.Streams, -1) },
		DeltaStreamOpenFunc: func(context.Context, int64, string) error { call(stats.Streams, 1); return nil },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) {
			s.forgetDeltaStream(id)
			call(stats.Streams, -1)
		},
		StreamRequestFunc: func(id int64, r *discoveryv3.DiscoveryRequest) error {
			if r.ErrorDetail != nil {
				s.log.Error("xDS client rejected a config; it keeps its last good version", "stream", id,
					"node", r.GetNode().GetId(), "type", r.TypeUrl, "version", r.VersionInfo, "err", r.ErrorDetail.Message)
				if stats.Nacks != nil {
					stats.Nacks()
				}
				// The cache would answer a NACK by sending the rejected version again at
				// once (the request's version is not the snapshot's), and a proxy would
				// reject it again, in a loop. Stating the rejected version as the one the
				// client has makes the cache wait for the next model change instead.
				if v, ok := s.sent.versionOf(id, r.TypeUrl, r.ResponseNonce); ok {
					r.VersionInfo = v
				}
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			s.deltaStreamOf.Store(r, id) // the delta cache's watch for r takes it
			// A delta client that rejects a response keeps its resources; the cache
			// sends only later changes, so there is no resend to prevent here.
			if r.ErrorDetail != nil {
				s.log.Error("xDS client rejected a config; it keeps its last good version", "stream", id,
					"node", r.GetNode().GetId(), "type", r.TypeUrl, "nonce", r.ResponseNonce, "err", r.ErrorDetail.Message)
				if stats.Nacks != nil {
					stats.Nacks()
				}
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			s.sent.record(id, resp.TypeUrl, resp.Nonce, resp.VersionInfo)
		},
	}
	// Ordered: SotW responses go CDS → EDS → LDS → RDS, so a cluster never waits for
	// endpoints that were sent before it (Envoy would leave it warming).
	srv := serverv3.NewServer(context.Background(), mux, cb, sotwv3.WithOrderedADS())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.grpc, srv)
	return s
}

// sentVersions remembers, per stream and type, the nonce and version of the last
// SotW response, so a NACK can be pinned to the version it rejects.
type sentVersions struct {
	mu   sync.Mutex
	last map[sentKey]sentResponse
}

type sentKey struct {
	stream  int64
	typeURL string
}

type sentResponse struct{ nonce, version string }

func (v *sentVersions) record(stream int64, typeURL, nonce, version string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.last == nil {
		v.last = map[sentKey]sentResponse{}
	}
	v.last[sentKey{stream, typeURL}] = sentResponse{nonce, version}
}

func (v *sentVersions) versionOf(stream int64, typeURL, nonce string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.last[sentKey{stream, typeURL}]
	return r.version, ok && r.nonce == nonce
}

func (v *sentVersions) forget(stream int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for k := range v.last {
		if k.stream == stream {
			delete(v.last, k)
		}
	}
}

// forgetDeltaStream drops what the delta caches keep for a closed stream, and the id
// of a request of it that never got to a cache.
func (s *Server) forgetDeltaStream(id int64) {
	s.envoyDelta.forget(id)
	s.proxylessDelta.forget(id)
	s.deltaStreamOf.Range(func(r, stream any) bool {
		if stream == id {
			s.deltaStreamOf.Delete(r)
		}
		return true
	})
}

func call(f func(int), n int) {
	if f != nil {
		f(n)
	}
}

// Update builds a snapshot of the model and makes it the one served. The objects it
// returns are the model's service ports left out of what is served (their xDS names
// are another's), reported on every call while they last; the rest is served. An
// error means the snapshot was not updated: the last one is still served.
func (s *Server) Update(ctx context.Context, m *model.Snapshot) ([]model.ObjectError, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version++
	envoy, proxyless, changed, err := s.builder.snapshots(strconv.FormatUint(s.version, 10), m)
	rejected := s.builder.claims.errors()
	if err != nil {
		return rejected, err
	}
	if !changed && envoy == s.served.envoy && proxyless == s.served.proxyless {
		return rejected, nil // the model changed nothing the clients see
	}
	// The snapshots may be patched already, so a failed push must not look served:
	// the next Update pushes them even if the model then changes nothing.
	s.served = snapshotPair{}
	s.envoyDelta.update(envoy)
	s.proxylessDelta.update(proxyless)
	if err := s.envoyCache.SetSnapshot(ctx, envoyClients, envoy); err != nil {
		return rejected, err
	}
	if err := s.proxylessCache.SetSnapshot(ctx, proxylessClients, proxyless); err != nil {
		return rejected, err
	}
	s.served = snapshotPair{envoy, proxyless}
	return rejected, nil
}

// Served returns copies of the snapshots being served, to Envoy and to proxyless
// clients (nil before the first Update): the served ones are patched in place.
func (s *Server) Served() (envoy, proxyless *cachev3.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served.envoy.copy(), s.served.proxyless.copy()
}

// Serve answers ADS on ln until Stop.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.grpc.Serve(&connTrackingListener{Listener: ln}); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Stop closes every stream and the listener.
func (s *Server) Stop() { s.grpc.Stop() }
