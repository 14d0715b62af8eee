package bpf_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// runDir is where LockPins keeps its pid files.
const runDir = "/run/sockmesh"

// pinDirToLock makes a pin dir on a bpffs of the test's own, and checks at the end that
// the locks taken left no pid file behind (and no run dir, if the test made it).
func pinDirToLock(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(newBPFFS(t), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadDir(runDir)
	hadRunDir := err == nil
	t.Cleanup(func() {
		after, _ := os.ReadDir(runDir)
		for _, e := range after {
			if !slices.ContainsFunc(before, func(b os.DirEntry) bool { return b.Name() == e.Name() }) {
				t.Errorf("left %s/%s behind", runDir, e.Name())
			}
		}
		if !hadRunDir {
			if err := os.Remove(runDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Error(err)
			}
		}
	})
	return dir
}

func lock(t *testing.T, dir string) *bpf.PinLock {
	t.Helper()
	l, err := bpf.LockPins(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Unlock(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func wantInUse(t *testing.T, path, holder string) {
	t.Helper()
	err := lockErr(path)
	if err == nil {
		t.Errorf("locked %s while the dir it leads to is locked", path)
		return
	}
	if !errors.Is(err, bpf.ErrPinsInUse) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), holder) {
		t.Errorf("lock %s: %v, want ErrPinsInUse naming it, held by %s", path, err, holder)
	}
}

func TestLockPinsHoldsTheDirUnderEveryPath(t *testing.T) {
	dir := pinDirToLock(t, "pins")
	lock(t, dir)

	link := filepath.Join(t.TempDir(), "pins-link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	// Through a symlink the resolved path is the same, so is the pid file.
	wantInUse(t, link, "pid "+strconv.Itoa(os.Getpid()))

	// A bind mount is another path to the same directory: only the directory's own lock
	// sees it.
	bind := t.TempDir()
	if err := unix.Mount(dir, bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(bind, 0); err != nil {
			t.Error(err)
		}
	})
	wantInUse(t, bind, "held by")
}

func TestLockPinsHoldsADirMadeAgainAtTheSamePath(t *testing.T) {
	dir := pinDirToLock(t, "pins")
	lock(t, dir)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	wantInUse(t, dir, "pid "+strconv.Itoa(os.Getpid()))
}

func TestUnlockReleasesThePinDir(t *testing.T) {
	dir := pinDirToLock(t, "pins")
	l, err := bpf.LockPins(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "pins-link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if got := lock(t, link).Dir(); got != dir {
		t.Errorf("locked through %s: Dir() = %s, want the resolved %s", link, got, dir)
	}
}

func TestLockOfOneDirLeavesAnotherFree(t *testing.T) {
	a := pinDirToLock(t, "a_b")
	lock(t, a)
	// Another dir, also one whose path differs from a's only in "/" for "_".
	for _, b := range []string{filepath.Join(filepath.Dir(a), "other"), filepath.Join(filepath.Dir(a), "a", "b")} {
		if err := os.MkdirAll(b, 0o700); err != nil {
			t.Fatal(err)
		}
		lock(t, b)
	}
}

func TestLockPinsNeedsAnExistingDirOnBPFFS(t *testing.T) {
	missing := filepath.Join(pinDirToLock(t, "pins"), "missing")
	if err := lockErr(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lock missing %s: %v, want not exist", missing, err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LockPins made %s: %v", missing, err)
	}
	plain := t.TempDir()
	if err := lockErr(plain); !errors.Is(err, bpf.ErrNotBPFFS) || !strings.Contains(err.Error(), plain) {
		t.Errorf("lock %s (not bpffs): %v, want ErrNotBPFFS naming it", plain, err)
	}
}

// lockErr is LockPins's error; a lock it should not have got is let go at once.
func lockErr(dir string) error {
	l, err := bpf.LockPins(dir)
	if err == nil {
		l.Unlock()
	}
	return err
}
