package tests

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// Defect 5: the pin lock holds however the pin dir is named, and an agent repairs maps
// that another process changed behind its back.
func TestThePinLockHoldsThroughASymlinkAndDriftIsRepaired(t *testing.T) {
	env, path, _ := webOnBackend1(t)
	a := env.StartAgent(t, path, "--map-repair-interval", "1s")
	link := filepath.Join(t.TempDir(), "pins")
	must(t, os.Symlink(env.BPFFS, link))

	second := env.LaunchAgent(t, path, "--bpffs", link, "--xds-listen", "", "--debug-listen", "")
	if exited, _ := second.Exited(20 * time.Second); !exited || !strings.Contains(second.Log(), "in use") {
		t.Fatalf("a second agent on the pins through a symlink: exited %v, log:\n%s", exited, second.Log())
	}
	out, err := exec.Command(harness.Binary(t), "cleanup", "--bpffs", link, "--cgroup", env.Cgroup.Path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("cleanup through a symlink under a live agent: err %v, output %s", err, out)
	}

	// Another process empties the service map: the agent puts it back and counts it.
	maps, err := bpf.OpenPinned(env.BPFFS)
	must(t, err)
	var keys []bpf.SvcKey
	var key bpf.SvcKey
	var val bpf.SvcValue
	for it := maps.SmServices.Iterate(); it.Next(&key, &val); {
		keys = append(keys, key)
	}
	for _, k := range keys {
		must(t, maps.SmServices.Delete(k))
	}
	maps.Close()
	if len(keys) == 0 {
		t.Fatal("no service entries to remove: the repair check would prove nothing")
	}
	env.WaitPinned(t, "the emptied service map repaired", func(s []lbmap.ListedService) bool {
		return hasBackend(web4, env.Host("backend-1").IPv4)(s)
	})
	if n := a.Metric(t, "sockmesh_map_repairs_total", map[string]string{"map": "sm_services"}); n != float64(len(keys)) {
		t.Errorf("sockmesh_map_repairs_total{map=sm_services} = %v, want %d", n, len(keys))
	}
	if res := env.Run(t, env.Host("client"), "tcp", tcpTo(vip4), 10); len(res.Errors) > 0 {
		t.Errorf("connects after the repair: %v", res.Errors)
	}
}

// Defect 11: cleanup refuses a directory that is not bpffs, and deletes nothing there.
func TestCleanupRefusesADirectoryThatIsNotBPFFS(t *testing.T) {
	harness.RequirePrivileged(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "sm_services")
	must(t, os.WriteFile(victim, []byte("a user's file\n"), 0o644))
	out, err := exec.Command(harness.Binary(t), "cleanup", "--bpffs", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), dir) || !strings.Contains(string(out), "bpf") {
		t.Errorf("cleanup on a plain directory: err %v, output %s; want a refusal naming it", err, out)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "a user's file\n" {
		t.Errorf("cleanup touched %s: %q, %v", victim, b, err)
	}
}

// Defect 11: a start without CAP_BPF says so, and leaves no pin dir behind.
func TestAStartWithoutCapBPFNamesItAndLeavesNothing(t *testing.T) {
	env := harness.NewEnv(t)
	path := env.WriteFile(t, "svc.yaml", "apiVersion: v1\nkind: List\nitems: []\n")
	pins := env.BPFFS + "-nocap"
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) is needed to drop capabilities: %v", err)
	}
	cmd := exec.Command(setpriv, "--bounding-set", "-bpf,-sys_admin,-perfmon", "--inh-caps", "-all", "--",
		harness.Binary(t), "agent", "--source", "file:"+path, "--cgroup", env.Cgroup.Path, "--bpffs", pins,
		"--http-listen", "", "--xds-listen", "", "--debug-listen", "")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CAP_BPF") || strings.Contains(strings.ToLower(string(out)), "memlock") {
		t.Errorf("agent without CAP_BPF: err %v, output %s; want an error naming CAP_BPF, not MEMLOCK", err, out)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		_ = bpf.Cleanup(pins)
		t.Errorf("the failed start left %s behind (%v)", pins, err)
	}
}

// Defect 11: the state (every service, backend and policy) is not on the loopback TCP
// port any local user can reach; it is on a root-only unix socket.
func TestDebugStateIsForRootOnly(t *testing.T) {
	env, path, _ := webOnBackend1(t)
	a := env.StartAgent(t, path)
	for _, p := range []string{"/debug/state", "/debug/pprof/heap"} {
		resp, err := http.Get("http://" + a.Addr + p)
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s on %s: %s, want 404", p, a.Addr, resp.Status)
		}
	}
	// Go's profiles are on the socket, as Cilium serves them with --pprof.
	resp, err := a.DebugClient().Get("http://sockmesh/debug/pprof/heap?debug=1")
	must(t, err)
	heap, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(heap), "heap profile:") {
		t.Errorf("/debug/pprof/heap on the socket: %s, %.200q; want a heap profile", resp.Status, heap)
	}
	st, err := os.Stat(a.Debug)
	must(t, err)
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("debug socket %s has mode %s, want a 0600 socket", a.Debug, st.Mode())
	}
	if s := a.DebugState(t); len(s.Services) != 1 {
		t.Errorf("/debug/state on the socket lists %d services, want 1", len(s.Services))
	}
}

// Defect 12: a huge input file is refused before it is read, and costs no memory.
func TestAHugeInputFileIsRefusedUnread(t *testing.T) {
	env, path, web := webOnBackend1(t)
	a := env.StartAgent(t, path)
	before := pinnedJSON(t, env)
	var b strings.Builder
	b.WriteString(web)
	for i := 0; b.Len() < 50<<20; i++ {
		b.WriteString("\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c" + strconv.Itoa(i) + "}\ndata: {k: v}")
	}
	env.WriteFile(t, "svc.yaml", b.String())
	a.WaitMetric(t, "sockmesh_input_errors_total", map[string]string{"kind": "File", "reason": "too_large"}, 1, 20*time.Second)
	a.WaitLog(t, "--max-input-bytes")
	if after := pinnedJSON(t, env); after != before {
		t.Errorf("a refused file changed the maps")
	}
	if rss := residentMiB(t, a.PID()); rss > 150 {
		t.Errorf("agent RSS %d MiB after a 50 MB file: it was read", rss)
	}
}

// residentMiB is a process's VmRSS.
func residentMiB(t *testing.T, pid int) int {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	must(t, err)
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
