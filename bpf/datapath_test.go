package bpf_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/sockops"
	"github.com/sockmesh/sockmesh/tests/harness"
)

func pinDir(t *testing.T) string {
	t.Helper()
	harness.RequirePrivileged(t)
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("smtbpf%d%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	t.Cleanup(func() {
		if err := bpf.Cleanup(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

func TestLoadAdoptsPinnedMapContents(t *testing.T) {
	dir := pinDir(t)
	dp, err := bpf.Load(dir, bpf.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	key := bpf.SvcKey{Port: bpf.PortToNet(80), Proto: 6, Family: bpf.FamilyIPv4}
	if err := dp.Maps().SmServices.Put(key, bpf.SvcValue{Id: 7, Count: 1}); err != nil {
		t.Fatal(err)
	}
	dp.Close()

	dp2, err := bpf.Load(dir, bpf.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	var v bpf.SvcValue
	if err := dp2.Maps().SmServices.Lookup(key, &v); err != nil || v.Id != 7 {
		t.Fatalf("a reloaded datapath lost the pinned entry: %+v %v", v, err)
	}
}

func TestLoadRefusesPinsOfAnotherSize(t *testing.T) {
	dir := pinDir(t)
	dp, err := bpf.Load(dir, bpf.Limits{MaxServices: 100, MaxBackends: 100})
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	_, err = bpf.Load(dir, bpf.Limits{MaxServices: 200, MaxBackends: 100})
	if err == nil || !strings.Contains(err.Error(), "sm_services") || !strings.Contains(err.Error(), "sockmesh cleanup") {
		t.Fatalf("loading over pins of another size: %v", err)
	}
}

func TestReattachUpdatesLinksInPlaceAndCleanupDetaches(t *testing.T) {
	dir := pinDir(t)
	root, err := agent.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := netlab.NewCgroup(root, filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Close() })

	for i := 0; i < 2; i++ { // the second round is a restarted agent
		dp, err := bpf.Load(dir, bpf.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		if err := dp.Attach(cg.Path); err != nil {
			t.Fatal(err)
		}
		ops, err := sockops.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := ops.Attach(cg.Path); err != nil {
			t.Fatal(err)
		}
		ops.Close()
		dp.Close()
		names, err := bpf.AttachedLinks(cg.Path)
		if err != nil || len(names) != len(bpf.ProgramNames()) {
			t.Fatalf("round %d: attached %v (%v), want each of %v once", i, names, err, bpf.ProgramNames())
		}
	}
	if err := bpf.Cleanup(dir); err != nil {
		t.Fatal(err)
	}
	if names, err := bpf.AttachedLinks(cg.Path); err != nil || len(names) != 0 {
		t.Fatalf("after cleanup: %v (%v)", names, err)
	}
}

func TestAttachRejectsANonCgroupDir(t *testing.T) {
	dir := pinDir(t)
	dp, err := bpf.Load(dir, bpf.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if err := dp.Attach(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a cgroup v2 directory") {
		t.Fatalf("attach to a plain dir: %v", err)
	}
}
