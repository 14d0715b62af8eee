package tests

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// cgroupLinks counts the sockmesh programs attached to the cgroup with this id.
func cgroupLinks(t *testing.T, cgID uint64) int {
	t.Helper()
	names, err := bpf.AttachedLinksByID(cgID)
	if err != nil {
		t.Fatal(err)
	}
	return len(names)
}

func TestHarnessLeavesNothingBehindWhenATestFailsMidway(t *testing.T) {
	harness.RequirePrivileged(t)
	var env *harness.Env
	var cgID uint64
	var linksWhileRunning int
	m := harness.RunMidway(t, func(m *harness.MidwayT) {
		env = harness.NewEnv(m, "backend-1")
		env.StartBackends(m, "backend-1")
		path := env.WriteFile(m, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1")))
		env.StartAgent(m, path)
		env.Hold(m, env.Host("client"), tcpTo(vip4))
		var err error
		if cgID, err = bpf.CgroupID(env.Cgroup.Path); err != nil {
			t.Fatal(err)
		}
		linksWhileRunning = cgroupLinks(t, cgID)
		m.Fatalf("failing midway on purpose, with the agent running and a connection open")
	})
	if msgs := m.Messages(); len(msgs) != 1 || !strings.Contains(msgs[0], "on purpose") {
		t.Fatalf("the inner test did not fail where it should: %v", msgs)
	}
	if linksWhileRunning != len(bpf.ProgramNames()) {
		t.Fatalf("%d links on the test cgroup while running, want %d (the check below would prove nothing)", linksWhileRunning, len(bpf.ProgramNames()))
	}
	for _, h := range append(env.Hosts("client", "backend-1"), &netlab.Host{NetNS: "/run/netns/" + env.Prefix + "-sw"}) {
		if _, err := os.Stat(h.NetNS); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("network namespace %s left behind (%v)", h.NetNS, err)
		}
	}
	if _, err := os.Stat(env.Cgroup.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left behind (%v)", env.Cgroup.Path, err)
	}
	if _, err := os.Stat(env.BPFFS); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(env.BPFFS)
		t.Errorf("pin dir %s left behind: %v", env.BPFFS, entries)
	}
	if n := cgroupLinks(t, cgID); n != 0 {
		t.Errorf("%d BPF links still attached to the removed test cgroup", n)
	}
	if matches, _ := filepath.Glob("/run/netns/" + env.Prefix + "*"); len(matches) > 0 {
		t.Errorf("namespaces left behind: %v", matches)
	}
}
