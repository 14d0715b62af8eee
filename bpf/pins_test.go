package bpf_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// newBPFFS mounts a bpffs of the test's own on a temp dir, so that these tests touch
// nothing under /sys/fs/bpf.
func newBPFFS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a bpffs")
	}
	dir := t.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Error(err)
		}
	})
	return dir
}

func touch(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.WriteFile(p, []byte("not a pin\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCleanupRefusesADirNotOnBPFFS(t *testing.T) {
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "sm_services"), filepath.Join(dir, "sm_backends"), filepath.Join(dir, "notes")}
	touch(t, files...)

	err := bpf.Cleanup(dir)
	if !errors.Is(err, bpf.ErrNotBPFFS) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Errorf("cleanup of a dir on %s: %v, want an error naming the dir and saying it is not on a bpf filesystem", dir, err)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("cleanup of a dir not on bpffs touched %s: %v", f, err)
		}
	}
}

func TestCleanupOfAMissingDirHasNothingToDo(t *testing.T) {
	for _, dir := range []string{
		filepath.Join(newBPFFS(t), "never-made"),
		filepath.Join(t.TempDir(), "not", "there"), // not on bpffs either: nothing to refuse
	} {
		if err := bpf.Cleanup(dir); err != nil {
			t.Errorf("cleanup of missing %s: %v", dir, err)
		}
	}
}

func TestCleanupThroughASymlinkCleansWhereItPoints(t *testing.T) {
	dir := filepath.Join(newBPFFS(t), "pins")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sm_test", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, "sm_test")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Unpin() })
	link := filepath.Join(t.TempDir(), "pins-link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}

	if err := bpf.Cleanup(link); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cleanup through %s left the pin dir %s: %v", link, dir, err)
	}
	if _, err := os.Lstat(link); err != nil {
		t.Errorf("cleanup removed the symlink it was given: %v", err)
	}
}

func TestEnsureBPFFSSaysWhetherItMadeTheDir(t *testing.T) {
	dir := filepath.Join(newBPFFS(t), "a", "pins")
	created, err := bpf.EnsureBPFFS(dir)
	if err != nil || !created {
		t.Fatalf("first call: created=%v, %v; want the dir made", created, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("dir after EnsureBPFFS: %v", err)
	}
	if created, err := bpf.EnsureBPFFS(dir); err != nil || created {
		t.Fatalf("second call: created=%v, %v; want the dir found", created, err)
	}
}

func TestEnsureBPFFSMakesNothingOnAnotherFilesystem(t *testing.T) {
	tmp := t.TempDir()
	for _, dir := range []string{tmp, filepath.Join(tmp, "a", "pins")} {
		created, err := bpf.EnsureBPFFS(dir)
		if !errors.Is(err, bpf.ErrNotBPFFS) || created || !strings.Contains(err.Error(), dir) {
			t.Errorf("EnsureBPFFS(%s): created=%v, %v; want an error naming it, not on a bpf filesystem", dir, created, err)
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "a")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("EnsureBPFFS made a directory off bpffs: %v", err)
	}
}

func TestEnsureBPFFSMakesTheDirASymlinkPointsTo(t *testing.T) {
	// Cleanup through a symlink removes the dir it points to: the next start makes it.
	target := filepath.Join(newBPFFS(t), "pins")
	link := filepath.Join(t.TempDir(), "pins-link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if created, err := bpf.EnsureBPFFS(link); err != nil || !created {
		t.Fatalf("EnsureBPFFS through a dangling symlink: created=%v, %v", created, err)
	}
	if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
		t.Fatalf("symlink target after EnsureBPFFS: %v", err)
	}
}
