package healthcheck_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sockmesh/sockmesh/agent/healthcheck"
	"github.com/sockmesh/sockmesh/agent/model"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// freePort is a TCP port nothing listens on at the moment.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// service is a LoadBalancer Service's frontend with externalTrafficPolicy Local and
// health check port hc, and its endpoints: local ready, remote ready, local terminating.
func service(name string, vip byte, hc uint16, localReady, remote, terminating int) *model.Service {
	svc := &model.Service{Name: model.ServiceName{Namespace: "shop", Name: name},
		Frontend: model.Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, 0, vip}), Port: 80, Protocol: model.TCP},
		External: model.External{TrafficPolicy: model.PolicyLocal, HealthCheckNodePort: hc}}
	add := func(n int, local, ready bool) {
		for range n {
			svc.Backends = append(svc.Backends, model.Backend{Addr: netip.AddrFrom4([4]byte{10, 1, vip, byte(len(svc.Backends) + 1)}),
				Port: 8080, Weight: 1, Ready: ready, Serving: true, Terminating: !ready, Local: local})
		}
	}
	add(localReady, true, true)
	add(remote, false, true)
	add(terminating, true, false)
	return svc
}

func snapshot(svcs ...*model.Service) *model.Snapshot {
	s := model.NewSnapshot()
	for _, svc := range svcs {
		s.Services[svc.Frontend] = svc
	}
	return s
}

type answer struct {
	status int
	weight string
	body   struct {
		Service struct {
			Namespace, Name string
		} `json:"service"`
		LocalEndpoints      int  `json:"localEndpoints"`
		ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
	}
}

func get(t *testing.T, port uint16) answer {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a answer
	a.status, a.weight = resp.StatusCode, resp.Header.Get("X-Load-Balancing-Endpoint-Weight")
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("body %q: %v", raw, err)
	}
	return a
}

func refused(port uint16) bool {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err == nil {
		c.Close()
	}
	return err != nil
}

func TestAnswersAsKubeProxy(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := healthcheck.New(loopback, healthy.Load)
	defer s.Close()
	hc := freePort(t)
	web := service("web", 1, hc, 2, 3, 1)
	if errs := s.Sync(snapshot(web)); errs != nil {
		t.Fatal(errs)
	}
	a := get(t, hc)
	if a.status != 200 || a.weight != "2" || a.body.LocalEndpoints != 2 || !a.body.ServiceProxyHealthy ||
		a.body.Service.Namespace != "shop" || a.body.Service.Name != "web" {
		t.Fatalf("2 local ready endpoints (and remote and terminating ones): %+v", a)
	}

	// Only terminating endpoints here: 503, so the load balancer drains this node.
	if errs := s.Sync(snapshot(service("web", 1, hc, 0, 3, 2))); errs != nil {
		t.Fatal(errs)
	}
	if a := get(t, hc); a.status != 503 || a.body.LocalEndpoints != 0 || a.weight != "0" {
		t.Fatalf("no local ready endpoint: %+v", a)
	}

	// An unhealthy agent answers 503 whatever the endpoints.
	s.Sync(snapshot(web))
	healthy.Store(false)
	if a := get(t, hc); a.status != 503 || a.body.LocalEndpoints != 2 || a.body.ServiceProxyHealthy {
		t.Fatalf("agent unhealthy: %+v", a)
	}
	healthy.Store(true)

	// The Service gone: its port is closed.
	s.Sync(snapshot())
	if !refused(hc) || len(s.Ports()) != 0 {
		t.Fatalf("port %d still served after its Service went (%v)", hc, s.Ports())
	}
}

// Dual-stack or several ports: each frontend counts the endpoints for itself, and the
// Service reports the largest count, as kube-proxy's one count per Service.
func TestAFrontendPerFamilyCountsOnce(t *testing.T) {
	s := healthcheck.New(loopback, func() bool { return true })
	defer s.Close()
	hc := freePort(t)
	v4 := service("dns", 2, hc, 3, 0, 0)
	v6 := service("dns", 2, hc, 3, 0, 0)
	v6.Frontend.Addr = netip.MustParseAddr("fd00::a")
	if errs := s.Sync(snapshot(v4, v6)); errs != nil {
		t.Fatal(errs)
	}
	if a := get(t, hc); a.body.LocalEndpoints != 3 {
		t.Fatalf("two frontends of 3 local endpoints each: %+v", a)
	}
}

func TestBadInputKeepsTheRestServed(t *testing.T) {
	s := healthcheck.New(loopback, func() bool { return true })
	defer s.Close()
	shared, taken := freePort(t), freePort(t)
	// Something else holds one port.
	other, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", taken))
	if err != nil {
		t.Fatal(err)
	}
	first, second, blocked := service("api", 1, shared, 1, 0, 0), service("billing", 2, shared, 4, 0, 0), service("cart", 3, taken, 1, 0, 0)
	snap := snapshot(second, blocked, first)
	errs := s.Sync(snap)
	var reasons []string
	for _, e := range errs {
		reasons = append(reasons, e.Namespace+"/"+e.Name+" "+e.Reason+": "+e.Message)
	}
	got := strings.Join(reasons, "\n")
	if len(errs) != 2 || !strings.Contains(got, "shop/billing health_check_port_conflict") || !strings.Contains(got, "already the health check port of shop/api") ||
		!strings.Contains(got, "shop/cart health_check_listen") {
		t.Fatalf("errors:\n%s", got)
	}
	// The first by name keeps the shared port.
	if a := get(t, shared); a.body.Service.Name != "api" || a.body.LocalEndpoints != 1 {
		t.Fatalf("shared port answers %+v, want api's", a)
	}
	// Once the port is free, the next Sync serves it.
	other.Close()
	if errs := s.Sync(snap); len(errs) != 1 {
		t.Fatalf("after the port was freed: %v", errs)
	}
	if a := get(t, taken); a.body.Service.Name != "cart" || a.status != 200 {
		t.Fatalf("freed port answers %+v", a)
	}
}

// A snapshot that names what changed updates those frontends alone, and ends where a
// full Sync of the same snapshot ends.
func TestScopedSyncMatchesFull(t *testing.T) {
	s := healthcheck.New(loopback, func() bool { return true })
	defer s.Close()
	a, b := freePort(t), freePort(t)
	web, shop := service("web", 1, a, 2, 0, 0), service("shop", 2, b, 1, 0, 0)
	s.Sync(snapshot(web, shop))
	changed := snapshot(service("web", 1, a, 5, 0, 0), shop)
	changed.Changed = map[model.Frontend]bool{web.Frontend: true}
	s.Sync(changed)
	if got := get(t, a); got.body.LocalEndpoints != 5 {
		t.Fatalf("scoped change: %+v", got)
	}
	if got := get(t, b); got.body.LocalEndpoints != 1 {
		t.Fatalf("unchanged Service after a scoped change: %+v", got)
	}
	gone := snapshot(shop)
	gone.Changed = map[model.Frontend]bool{web.Frontend: true}
	s.Sync(gone)
	if !refused(a) {
		t.Fatal("a Service removed by a scoped change still has its port")
	}
}

// curl, as a load balancer's probe would ask.
func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed (scripts/install-deps.sh installs it)")
	}
	s := healthcheck.New(loopback, func() bool { return true })
	defer s.Close()
	hc := freePort(t)
	for _, c := range []struct {
		local int
		want  string
	}{{1, "200"}, {0, "503"}} {
		s.Sync(snapshot(service("web", 1, hc, c.local, 1, 0)))
		out, err := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", fmt.Sprintf("http://127.0.0.1:%d/", hc)).Output()
		if err != nil || string(out) != c.want {
			t.Fatalf("curl with %d local endpoints: %q, %v; want %s", c.local, out, err, c.want)
		}
	}
}
