package tests

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Issue "Nothing programmed is ever lost": each defect found by trying the agent as a
// careless operator would is a test here (those about one package alone are unit tests
// beside it: agent/source, agent/lbmap, xds, bpf).

// Defect 1, and acceptance 3: a restart on a bad file (removed, malformed, emptied, a
// directory) keeps the adopted pinned state serving, under load: no connection fails,
// no map entry is rewritten, and readiness says there is no input yet.
func TestRestartOnABadFileKeepsTheAdoptedState(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	good := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2"))
	path := env.WriteFile(t, "svc.yaml", good)
	client := env.Host("client")
	env.StartAgent(t, path).Stop(t)
	before := pinnedJSON(t, env)

	for _, bad := range []struct {
		name string
		make func(t *testing.T)
	}{
		{"file removed", func(t *testing.T) { must(t, os.Remove(path)) }},
		{"malformed document appended", func(t *testing.T) { appendTo(t, path, "---\nkind: [\n") }},
		{"emptied", func(t *testing.T) { must(t, os.Truncate(path, 0)) }},
		{"replaced by a directory", func(t *testing.T) { must(t, os.Remove(path)); must(t, os.Mkdir(path, 0o755)) }},
	} {
		t.Run(bad.name, func(t *testing.T) {
			bad.make(t)
			t.Cleanup(func() { _ = os.RemoveAll(path); env.WriteFile(t, "svc.yaml", good) })
			load := startLoad(t, env, client, 300)
			a := env.LaunchAgent(t, path)
			body := a.WaitReadyz(t, http.StatusServiceUnavailable, "no input yet")
			if !strings.Contains(body, path) || !strings.Contains(body, "keep serving") {
				t.Errorf("/readyz = %q: want it to name the file and say the pinned state serves", body)
			}
			if res := load.wait(t); len(res.Errors) > 0 || len(res.TCP) != 300 {
				t.Fatalf("connections across the restart: %d ok, errors %v", len(res.TCP), res.Errors)
			}
			if r := rewrites(t, a, env, before); r != "" {
				t.Errorf("restart on a bad file: %s", r)
			}
			if out := env.CLI(t, "lb", "list"); !strings.Contains(out, "demo/web:http") {
				t.Errorf("lb list after a restart on a bad file:\n%s", out)
			}
			a.Stop(t)
		})
	}
}

// Defect 2: emptying the file in use deletes nothing, and a slow in-place rewrite is
// read only once it is complete: no connect fails meanwhile.
func TestEmptyingOrRewritingTheFileInPlaceLosesNothing(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	good := netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2"))
	path := env.WriteFile(t, "svc.yaml", good)
	client := env.Host("client")
	a := env.StartAgent(t, path)

	must(t, os.Truncate(path, 0)) // : > svc.yaml
	a.WaitMetric(t, "sockmesh_input_errors_total", map[string]string{"kind": "File", "reason": "empty"}, 1, 10*time.Second)
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 20); len(res.Errors) > 0 {
		t.Fatalf("connects after the file was emptied: %v", res.Errors)
	}

	// A slow writer: the file is cut off after the Service document for a while.
	load := startLoad(t, env, client, 400)
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	must(t, err)
	cut := strings.Index(good, "---\n")
	for _, part := range []string{good[:cut], good[cut : cut+len(good[cut:])/2], good[cut+len(good[cut:])/2:]} {
		_, err := fh.WriteString(part)
		must(t, err)
		time.Sleep(150 * time.Millisecond) // longer than the read debounce, shorter than settling
	}
	must(t, fh.Close())
	if res := load.wait(t); len(res.Errors) > 0 {
		t.Fatalf("connects during a slow in-place rewrite: %d ok, errors %v", len(res.TCP), res.Errors)
	}
	if u, d := mapOps(t, a, "update"), mapOps(t, a, "delete"); d != 0 {
		t.Errorf("the rewrite of identical content deleted %v entries (updated %v)", d, u)
	}
}

// webOnBackend1 is an env with one backend and the file serving web from it: the
// starting point of the tests about one input path.
func webOnBackend1(t *testing.T) (env *harness.Env, path, web string) {
	env = harness.NewEnv(t, "backend-1")
	env.StartBackends(t, "backend-1")
	web = oneBackendService("web", "10.96.0.10", env.Host("backend-1"))
	return env, env.WriteFile(t, "svc.yaml", web), web
}

// oneBackendService is a one-port IPv4 Service: its entries are easy to count.
func oneBackendService(name, ip string, backends ...*netlab.Host) string {
	var eps strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&eps, "- addresses: [%q]\n", b.IPv4.String())
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: demo}
spec: {clusterIP: %[2]s, ports: [{name: http, port: %[3]d}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-1, namespace: demo, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: http, port: %[4]d}]
endpoints:
%[5]s`, name, ip, netlab.ServiceHTTPPort, netlab.BackendTCPPort, eps.String())
}

// Defect 3: with the backend map full, replacing an endpoint still works (no room for
// both sets is needed), a deletion frees room for a new Service, and a restart with a
// Service that cannot fit still gets ready.
func TestFullMapsNeverWedgeTheWriter(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2", "backend-3")
	env.StartBackends(t, "backend-1", "backend-2", "backend-3")
	b1, b2, b3 := env.Host("backend-1"), env.Host("backend-2"), env.Host("backend-3")
	path := env.WriteFile(t, "svc.yaml", oneBackendService("web", "10.96.0.10", b1, b2))
	a := env.StartAgent(t, path, "--max-backends", "2")
	client := env.Host("client")

	env.WriteFile(t, "svc.yaml", oneBackendService("web", "10.96.0.10", b1, b3))
	env.WaitPinned(t, "endpoint .2 replaced by .3", func(s []lbmap.ListedService) bool {
		return hasBackend(web4, b3.IPv4)(s) && !hasBackend(web4, b2.IPv4)(s)
	})
	if got := backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 40)); got["backend-2"] > 0 || got["backend-3"] == 0 {
		t.Errorf("after the replacement, backends answering: %v", got)
	}
	if n := a.Metric(t, "sockmesh_reconcile_errors_total", nil); n != 0 {
		t.Errorf("%v reconcile passes failed: the writer planned beyond capacity", n)
	}

	// A new Service that does not fit is refused and named; web keeps serving.
	env.WriteFile(t, "svc.yaml", oneBackendService("web", "10.96.0.10", b1, b3)+"---\n"+oneBackendService("api", "10.96.0.11", b2))
	log := a.WaitLog(t, "demo/api", "map_full")
	if !strings.Contains(log, "--max-backends") {
		t.Errorf("the refusal does not name the limit:\n%s", log)
	}
	// Deleting web frees room, in the same pass, for api.
	env.WriteFile(t, "svc.yaml", oneBackendService("api", "10.96.0.11", b2, b3))
	env.WaitPinned(t, "api programmed in the room web left", func(s []lbmap.ListedService) bool {
		_, webThere := harness.Frontend(s, web4)
		return !webThere && hasBackend("10.96.0.11:80/TCP", b2.IPv4)(s) && hasBackend("10.96.0.11:80/TCP", b3.IPv4)(s)
	})
	a.Stop(t)

	// A restart with more than fits gets ready, serving what fits.
	env.WriteFile(t, "svc.yaml", oneBackendService("api", "10.96.0.11", b2, b3)+"---\n"+oneBackendService("web", "10.96.0.10", b1))
	env.StartAgent(t, path, "--max-backends", "2").WaitLog(t, "demo/web", "map_full")
}

// Defect 4: a new Service repeating web's clusterIP:port does not take web's traffic;
// it is rejected and named, also across a restart.
func TestANewcomerCannotTakeAHeldFrontend(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	b1, b2 := env.Host("backend-1"), env.Host("backend-2")
	web := oneBackendService("web", "10.96.0.10", b1)
	path := env.WriteFile(t, "svc.yaml", web)
	a := env.StartAgent(t, path)
	client := env.Host("client")

	both := web + "---\n" + oneBackendService("aaa", "10.96.0.10", b2)
	env.WriteFile(t, "svc.yaml", both)
	log := a.WaitLog(t, "demo/aaa", "held by Service demo/web")
	if strings.Contains(log, "Service demo/web: frontend") {
		t.Errorf("the error blames web, the holder:\n%s", log)
	}
	check := func(when string) {
		t.Helper()
		if got := backendsSeen(env.Run(t, client, "tcp", tcpTo(vip4), 30)); got["backend-2"] > 0 || got["backend-1"] != 30 {
			t.Errorf("%s: backends answering web's frontend: %v, want only web's", when, got)
		}
	}
	check("with aaa added")
	a.Stop(t)
	a = env.StartAgent(t, path)
	a.WaitLog(t, "demo/aaa", "held by Service demo/web")
	check("after a restart with both in the file")
}

// Defect 6: typos in kinds neither delete what they were meant as nor pass silently.
func TestTyposInKindsAreReportedAndDeleteNothing(t *testing.T) {
	env, path, web := webOnBackend1(t)
	a := env.StartAgent(t, path)
	before := pinnedJSON(t, env)
	env.WriteFile(t, "svc.yaml", strings.Replace(web, "kind: Service", "kind: Servcie", 1))
	a.WaitMetric(t, "sockmesh_input_errors_total", map[string]string{"kind": "other", "reason": "unknown_kind"}, 1, 10*time.Second)
	a.WaitLog(t, "Servcie", "demo/web")
	if after := pinnedJSON(t, env); after != before {
		t.Errorf("kind: Servcie changed the maps:\nbefore %s\nafter  %s", before, after)
	}
}

// Defect 9: a start that cannot complete (an xDS path that is a regular file, an HTTP
// port in use) fails before the programs or their config are touched, and touches
// nothing it does not own.
func TestAFailedStartTouchesNothing(t *testing.T) {
	env, path, _ := webOnBackend1(t)
	env.StartAgent(t, path).Stop(t)
	cfgBefore := env.DatapathConfig(t)
	mapsBefore := pinnedJSON(t, env)

	notASocket := env.WriteFile(t, "precious.txt", "do not delete\n")
	a := env.LaunchAgent(t, path, "--xds-listen", "unix:"+notASocket, "--envoy-redirect", "10.99.0.1:15001")
	if exited, _ := a.Exited(20 * time.Second); !exited || !strings.Contains(a.Log(), notASocket) {
		t.Fatalf("agent with --xds-listen on a regular file: exited %v, log:\n%s", exited, a.Log())
	}
	if b, err := os.ReadFile(notASocket); err != nil || string(b) != "do not delete\n" {
		t.Errorf("the regular file at the xDS path was changed: %q, %v", b, err)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer busy.Close()
	a = env.LaunchAgent(t, path, "--http-listen", busy.Addr().String(), "--envoy-redirect", "10.99.0.1:15001")
	if exited, _ := a.Exited(20 * time.Second); !exited || !strings.Contains(a.Log(), "--http-listen") {
		t.Fatalf("agent with --http-listen on a port in use: exited %v, log:\n%s", exited, a.Log())
	}
	if got := env.DatapathConfig(t); got != cfgBefore {
		t.Errorf("sm_config changed by a failed start:\nbefore %+v\nafter  %+v", cfgBefore, got)
	}
	if got := pinnedJSON(t, env); got != mapsBefore {
		t.Errorf("maps changed by a failed start")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString(s)
	must(t, err)
	must(t, f.Close())
}

// load is a bounded run of TCP connects to the v4 VIP in the background.
type load struct {
	res chan harness.ClientResult
	err chan error
}

func startLoad(t *testing.T, env *harness.Env, h *netlab.Host, n int) *load {
	l := &load{res: make(chan harness.ClientResult, 1), err: make(chan error, 1)}
	go func() {
		r, err := env.RunE(t, h, "tcp", tcpTo(vip4), n)
		l.res <- r
		l.err <- err
	}()
	return l
}

func (l *load) wait(t *testing.T) harness.ClientResult {
	t.Helper()
	r, err := <-l.res, <-l.err
	if err != nil {
		t.Fatal(err)
	}
	return r
}
