package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

func mapOps(t *testing.T, a *harness.Agent, op string) float64 {
	return a.Metric(t, "sockmesh_map_ops_total", map[string]string{"op": op, "result": "ok"})
}

// rewrites says what an agent's passes wrote or deleted, or how the maps differ from
// before (the pinnedJSON taken earlier): "" when nothing at all was rewritten.
func rewrites(t *testing.T, a *harness.Agent, env *harness.Env, before string) string {
	t.Helper()
	if u, d := mapOps(t, a, "update"), mapOps(t, a, "delete"); u != 0 || d != 0 {
		return fmt.Sprintf("%v entries updated, %v deleted; want 0 and 0", u, d)
	}
	if after := pinnedJSON(t, env); after != before {
		return fmt.Sprintf("the maps changed:\nbefore %s\nafter  %s", before, after)
	}
	return ""
}

func pinnedJSON(t *testing.T, env *harness.Env) string {
	t.Helper()
	b, err := json.Marshal(env.PinnedServices(t))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tcpLoad starts n TCP connects to the ClusterIP from client in the background; the
// function it returns waits for their result.
func tcpLoad(t *testing.T, env *harness.Env, client *netlab.Host, n int) func() (harness.ClientResult, error) {
	type result struct {
		res harness.ClientResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := env.RunE(t, client, "tcp", tcpTo(vip4), n)
		done <- result{r, err}
	}()
	return func() (harness.ClientResult, error) { r := <-done; return r.res, r.err }
}

func TestAgentStopAndRestartKeepTrafficAndRewriteOnlyChanges(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2", "backend-3")
	env.StartBackends(t, "backend-1", "backend-2", "backend-3")
	path := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2")))
	client := env.Host("client")
	first := env.StartAgent(t, path)
	if mapOps(t, first, "update") == 0 {
		t.Fatal("a cold start wrote no map entries: the restart checks below would prove nothing")
	}

	held := env.Hold(t, client, tcpTo(vip4))
	first.Stop(t)

	// Agent down: the open connection and new ones keep working, lb list still reads the maps.
	if got := held.Ask(t); got != held.First.Backend {
		t.Fatalf("held connection answered %q after the agent stopped, want %q", got, held.First.Backend)
	}
	res := env.Run(t, client, "tcp", tcpTo(vip4), 30)
	if len(res.Errors) > 0 || len(res.TCP) != 30 {
		t.Fatalf("new connections with the agent down: %d ok, errors %v", len(res.TCP), res.Errors)
	}
	if out := env.CLI(t, "lb", "list"); !strings.Contains(out, "demo/web:http") || !strings.Contains(out, "10.96.0.10:80/TCP") {
		t.Fatalf("lb list with the agent down:\n%s", out)
	}
	before := pinnedJSON(t, env)

	// Restart with nothing changed, under load: no entry rewritten, no connect fails.
	load := tcpLoad(t, env, client, 300)
	second := env.StartAgent(t, path)
	if r := rewrites(t, second, env, before); r != "" {
		t.Fatalf("restart with an unchanged file: %s", r)
	}
	lr, err := load()
	if err != nil || len(lr.Errors) > 0 {
		t.Fatalf("connections during the restart: %v, errors %v", err, lr.Errors)
	}
	second.Stop(t)

	// Changed while down: exactly the changed entries are written on restart. One added
	// endpoint on four frontends (TCP+UDP, v4+v6): a backend, a slot and the service's
	// slot count each.
	env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2", "backend-3")))
	third := env.StartAgent(t, path)
	if u, d := mapOps(t, third, "update"), mapOps(t, third, "delete"); u != 12 || d != 0 {
		t.Fatalf("restart after adding one endpoint: %v updated, %v deleted; want 12 and 0", u, d)
	}
	if !hasBackend(web4, env.Host("backend-3").IPv4)(env.PinnedServices(t)) {
		t.Fatal("the change made while the agent was down was not applied")
	}
	if got := held.Ask(t); got != held.First.Backend {
		t.Fatalf("held connection answered %q after two restarts", got)
	}
}

func TestCleanupRemovesEverythingAndRefusesWhileAnAgentRuns(t *testing.T) {
	env := harness.NewEnv(t, "backend-1")
	env.StartBackends(t, "backend-1")
	path := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1")))
	a := env.StartAgent(t, path)

	out, err := exec.Command(harness.Binary(t), "cleanup", "--bpffs", env.BPFFS, "--cgroup", env.Cgroup.Path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is an agent running") {
		t.Fatalf("cleanup with a running agent: err=%v %s", err, out)
	}
	a.Stop(t)
	// Stopped: the datapath keeps serving from the pins until cleanup.
	if res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 5); len(res.TCP) != 5 {
		t.Fatalf("stopped agent: %+v", res)
	}
	env.CLI(t, "cleanup")
	if names, err := bpf.AttachedLinks(env.Cgroup.Path); err != nil || len(names) != 0 {
		t.Fatalf("after cleanup: attached %v (%v)", names, err)
	}
	if _, err := os.Stat(env.BPFFS); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after cleanup the pin dir is still there (%v)", err)
	}
	res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 1)
	if len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "network is unreachable") {
		t.Fatalf("after cleanup the ClusterIP is still translated: %+v", res)
	}
}

// The upgrade from agents that kept backends in a hash map: the stopped agent's
// sm_backends pin is swapped for a hash of the old layout holding the same entries (the
// programs still attached keep the array; an old agent's would read the hash). The new
// agent moves them into the array: lb list shows the same, the first pass writes
// nothing, and connections work throughout.
func TestUpgradeFromTheHashBackendMapKeepsEverything(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	path := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2")))
	client := env.Host("client")
	env.StartAgent(t, path).Stop(t)
	before := pinnedJSON(t, env)

	pin := filepath.Join(env.BPFFS, "sm_backends")
	array, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	programmed, err := bpf.NewArrayTable[bpf.BackendValue](array).Dump()
	array.Close()
	if err != nil || len(programmed) == 0 {
		t.Fatalf("read %d backends from the array: %v", len(programmed), err)
	}
	harness.PinLegacyBackends(t, env.BPFFS, programmed)

	load := tcpLoad(t, env, client, 200)
	upgraded := env.StartAgent(t, path)
	if r := rewrites(t, upgraded, env, before); r != "" {
		t.Fatalf("first pass after the migration: %s", r)
	}
	if lr, err := load(); err != nil || len(lr.Errors) > 0 || len(lr.TCP) != 200 {
		t.Fatalf("connections across the upgrade: %d ok, %v, errors %v", len(lr.TCP), err, lr.Errors)
	}
	migrated, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer migrated.Close()
	if migrated.Type() != ebpf.Array {
		t.Fatalf("sm_backends is pinned as a %s after the upgrade, want the array", migrated.Type())
	}
}
