// Package healthcheck owns the healthCheckNodePort servers: for each LoadBalancer
// Service with externalTrafficPolicy Local, an HTTP listener on its health check port
// that tells the cloud load balancer whether this node has endpoints of the Service,
// with kube-proxy's semantics (pkg/proxy/healthcheck): 200 when the node has ready
// local endpoints and the agent is healthy, 503 otherwise, a JSON body naming the
// Service and the count, and the count in X-Load-Balancing-Endpoint-Weight.
package healthcheck

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Servers serves the health check ports of the snapshots given to Sync.
type Servers struct {
	// bind is the address the listeners bind; the zero Addr binds every address, as
	// kube-proxy does by default.
	bind    netip.Addr
	healthy func() bool // the agent's own health: false makes every port answer 503
	// claims is what each frontend with a health check port asks for, kept from Sync to
	// Sync so that a snapshot that says what changed costs only those frontends.
	claims map[model.Frontend]claim
	mu     sync.Mutex
	ports  map[uint16]*port
}

// claim is one frontend's health check port, its Service and its ready local endpoints.
type claim struct {
	svc   model.ServiceName
	port  uint16
	local int
}

// port is one listener and what it answers.
type port struct {
	srv *http.Server
	mu  sync.Mutex
	svc model.ServiceName
	// local is how many ready endpoints of the Service are on this node.
	local int
}

// New returns servers that bind bind (the zero Addr: every address) and answer 503
// while healthy says the agent is not.
func New(bind netip.Addr, healthy func() bool) *Servers {
	return &Servers{bind: bind, healthy: healthy, claims: map[model.Frontend]claim{}, ports: map[uint16]*port{}}
}

// Sync makes the listeners match snap: a listener for each health check port, answering
// for its Service with the count of its ready local endpoints; the ports no longer
// asked for are closed. A port two Services ask for, or one that cannot be bound, is an
// error for that Service (retried on the next Sync); the other ports are served.
func (s *Servers) Sync(snap *model.Snapshot) []model.ObjectError {
	if snap.Changed == nil {
		clear(s.claims)
		for fe, svc := range snap.Services {
			s.claim(fe, svc)
		}
	} else {
		for fe := range snap.Changed {
			delete(s.claims, fe)
			if svc, ok := snap.Services[fe]; ok {
				s.claim(fe, svc)
			}
		}
	}
	// Which of two Services claiming one port gets it does not depend on the order
	// they came in: the first by name.
	fes := slices.SortedFunc(maps.Keys(s.claims), func(a, b model.Frontend) int {
		ca, cb := s.claims[a], s.claims[b]
		return cmp.Or(cmp.Compare(ca.svc.Namespace, cb.svc.Namespace), cmp.Compare(ca.svc.Name, cb.svc.Name), model.CompareFrontends(a, b))
	})
	want := map[uint16]claim{} // by port
	var errs []model.ObjectError
	for _, fe := range fes {
		c := s.claims[fe]
		if w, ok := want[c.port]; ok && w.svc != c.svc {
			errs = append(errs, serviceError(c.svc, "health_check_port_conflict",
				fmt.Sprintf("healthCheckNodePort %d is already the health check port of %s", c.port, w.svc)))
			continue
		}
		// Each frontend (port, IP family) counts the Service's endpoints for itself;
		// kube-proxy reports one such count, so the largest stands for the Service.
		want[c.port] = claim{svc: c.svc, port: c.port, local: max(want[c.port].local, c.local)}
	}
	errs = slices.CompactFunc(errs, func(a, b model.ObjectError) bool { return a == b })

	s.mu.Lock()
	defer s.mu.Unlock()
	for p, pt := range s.ports {
		if _, ok := want[p]; !ok {
			pt.srv.Close()
			delete(s.ports, p)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		w := want[p]
		pt, ok := s.ports[p]
		if !ok {
			var err error
			if pt, err = s.listen(p); err != nil {
				errs = append(errs, serviceError(w.svc, "health_check_listen",
					fmt.Sprintf("healthCheckNodePort %d not served: %v", p, err)))
				continue
			}
			s.ports[p] = pt
		}
		pt.mu.Lock()
		pt.svc, pt.local = w.svc, w.local
		pt.mu.Unlock()
	}
	return errs
}

// Ports is the health check ports being served, in order.
func (s *Servers) Ports() []uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.ports))
}

// Close closes every listener.
func (s *Servers) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, pt := range s.ports {
		pt.srv.Close()
		delete(s.ports, p)
	}
}

func (s *Servers) listen(p uint16) (*port, error) {
	host := ""
	if s.bind.IsValid() {
		host = s.bind.String()
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(int(p))))
	if err != nil {
		return nil, err
	}
	pt := &port{}
	pt.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { s.answer(pt, w) }),
		ReadHeaderTimeout: 5 * time.Second}
	go pt.srv.Serve(ln) // returns when Close closes it
	return pt, nil
}

// answer is kube-proxy's reply: any method, any path.
func (s *Servers) answer(pt *port, w http.ResponseWriter) {
	pt.mu.Lock()
	svc, local := pt.svc, pt.local
	pt.mu.Unlock()
	healthy := s.healthy()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(local))
	if local > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	body, _ := json.MarshalIndent(reply{Service: replyService{svc.Namespace, svc.Name}, LocalEndpoints: local, ServiceProxyHealthy: healthy}, "", "  ")
	w.Write(append(body, '\n'))
}

type reply struct {
	Service             replyService `json:"service"`
	LocalEndpoints      int          `json:"localEndpoints"`
	ServiceProxyHealthy bool         `json:"serviceProxyHealthy"`
}

type replyService struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// localReady counts the frontend's endpoints on this node that are ready: a
// terminating one does not count, so a load balancer stops sending new flows to a node
// whose endpoints are all going away.
func localReady(svc *model.Service) int {
	n := 0
	for _, b := range svc.Backends {
		if b.Local && b.Ready {
			n++
		}
	}
	return n
}

func (s *Servers) claim(fe model.Frontend, svc *model.Service) {
	// One claim per cluster frontend: the Service's external frontends carry the same port.
	if p := svc.External.HealthCheckNodePort; p != 0 && !svc.FromOutside() {
		s.claims[fe] = claim{svc: svc.Name, port: p, local: localReady(svc)}
	}
}

func serviceError(n model.ServiceName, reason, msg string) model.ObjectError {
	return model.ObjectError{Kind: "Service", Namespace: n.Namespace, Name: n.Name, Reason: reason, Message: msg}
}
