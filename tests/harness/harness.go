// Package harness is what sockmesh's end-to-end tests stand on: a privileged-test gate
// that turns skips into failures in CI, a built sockmesh binary, a per-test environment
// (namespaces, a cgroup, a bpffs dir) that is removed on cleanup, also on failure, the
// agent as a real subprocess, and clients run as real processes inside the test cgroup.
package harness

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
)

// RequirePrivileged skips a test that needs root, cgroup v2 and BPF when they are
// missing, and fails it instead when CI is set: in CI every privileged test must run.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root"
	} else if _, err := agent.CgroupV2Root(); err != nil {
		reason = "needs cgroup v2: " + err.Error()
	} else if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		reason = "kernel lacks cgroup sock_addr programs: " + err.Error()
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("privileged test cannot run in CI: %s", reason)
	}
	t.Skip(reason)
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	binDir    string
)

// Binary builds cmd/sockmesh once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "sockmesh-test-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "sockmesh")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/sockmesh/sockmesh/cmd/sockmesh").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// RemoveBinary deletes the built binary; call it from TestMain after the tests.
func RemoveBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Env is one test's private world: network namespaces (a client and backends), a
// cgroup under the cgroup2 root, and a bpffs pin dir, all named with a random prefix.
type Env struct {
	*netlab.Env
	Prefix string
	Cgroup *netlab.Cgroup
	BPFFS  string
	Dir    string // scratch dir for YAML and logs
}

// NewEnv builds the environment with hosts "client" plus the given backends and
// registers its removal with t.Cleanup (it runs when the test fails midway too).
func NewEnv(t testing.TB, backends ...string) *Env {
	t.Helper()
	RequirePrivileged(t)
	prefix := "smt" + randomHex(3)
	e := &Env{Prefix: prefix, BPFFS: filepath.Join("/sys/fs/bpf", prefix), Dir: t.TempDir()}
	ne, err := netlab.NewEnv(prefix, append([]string{"client"}, backends...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.Env = ne
	t.Cleanup(func() {
		if err := ne.Close(); err != nil {
			t.Error(err)
		}
	})
	root, err := agent.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := netlab.NewCgroup(root, prefix)
	if err != nil {
		t.Fatal(err)
	}
	e.Cgroup = cg
	t.Cleanup(func() {
		// Pins first: unpinning the links detaches the programs from the cgroup.
		if err := bpf.Cleanup(e.BPFFS); err != nil {
			t.Error(err)
		}
		if err := cg.Close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// StartBackends starts the demo backend servers in the named hosts.
func (e *Env) StartBackends(t testing.TB, names ...string) map[string]*netlab.Backend {
	t.Helper()
	out := map[string]*netlab.Backend{}
	for _, n := range names {
		b, err := netlab.StartBackend(e.Host(n), netlab.BackendTCPPort, netlab.DNSPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		out[n] = b
	}
	return out
}

// WriteFile writes name in the env's scratch dir atomically (write + rename), the way
// editors and config tools replace files, and returns its path.
func (e *Env) WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(e.Dir, name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// Hosts returns the hosts with the given names.
func (e *Env) Hosts(names ...string) []*netlab.Host {
	var out []*netlab.Host
	for _, n := range names {
		out = append(out, e.Host(n))
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}
