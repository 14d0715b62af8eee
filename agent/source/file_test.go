package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/model"
)

const frontend = "10.96.0.10:80/TCP"

// testSettle keeps in-place writes quick to pick up; TestFileInPlaceWriteIsReadOnceSettled
// is about the wait itself.
const testSettle = 100 * time.Millisecond

// contents returns a file serving frontend with the given backends.
func contents(backends ...string) string {
	return serviceYAML("web", "10.96.0.10") + "---\n" + sliceYAML("web-1", "web", backends...)
}

// recorder collects the updates a File delivers.
type recorder struct {
	mu      sync.Mutex
	updates []Update
}

func (r *recorder) update(u Update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, u)
}

func (r *recorder) deliveries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.updates)
}

// latestUpdate is the last update delivered (the zero Update before any).
func (r *recorder) latestUpdate() Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.updates) == 0 {
		return Update{}
	}
	return r.updates[len(r.updates)-1]
}

// latest is the last snapshot delivered, nil while there is no input.
func (r *recorder) latest() *model.Snapshot { return r.latestUpdate().Snapshot }

// startFile runs a File source on path until the test ends, and checks that Run
// returns promptly when cancelled.
func startFile(t *testing.T, path string) *recorder {
	t.Helper()
	r := &recorder{}
	f := NewFile(path, r.update)
	f.Resync = time.Hour // the tests are about events, not the safety net
	f.Settle = testSettle
	startRun(t, f)
	return r
}

// startRun runs f until the test ends, and checks that Run returns promptly when
// cancelled.
func startRun(t *testing.T, f *File) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

// waitFor polls the latest snapshot until cond holds, failing after a deadline.
func (r *recorder) waitFor(t *testing.T, what string, cond func(*model.Snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := r.latest()
		if s != nil && cond(s) {
			return
		}
		if time.Now().After(deadline) {
			if s == nil {
				t.Fatalf("timed out waiting for %s: no snapshot", what)
			}
			t.Fatalf("timed out waiting for %s: backends %s, errors %v", what, backendsOf(s, frontend), s.Errors)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serving holds when frontend has exactly these backends and nothing is wrong.
func serving(backends string) func(*model.Snapshot) bool {
	return func(s *model.Snapshot) bool { return backendsOf(s, frontend) == backends && len(s.Errors) == 0 }
}

// keepingWith holds when frontend still has these backends and a file error of reason is
// reported.
func keepingWith(backends, reason string) func(*model.Snapshot) bool {
	return func(s *model.Snapshot) bool {
		for _, e := range s.Errors {
			if e.Kind == KindFile && e.Reason == reason {
				return backendsOf(s, frontend) == backends
			}
		}
		return false
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceByRename writes data the way editors and kubectl-style tools do.
func replaceByRename(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	write(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileWriteInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	write(t, path, contents("10.0.1.1", "10.0.1.2"))
	r.waitFor(t, "in-place write", serving("[10.0.1.1:8080 10.0.1.2:8080]"))
}

func TestFileRenameReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	for i := 2; i <= 4; i++ { // repeatedly: a watch on the old inode would miss the second
		replaceByRename(t, path, contents(fmt.Sprintf("10.0.1.%d", i)))
		r.waitFor(t, "rename-replace", serving(fmt.Sprintf("[10.0.1.%d:8080]", i)))
	}
}

func TestFileDeleteAndRecreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "delete reported, services kept", keepingWith("[10.0.1.1:8080]", ReasonUnreadable))
	write(t, path, contents("10.0.1.2"))
	r.waitFor(t, "re-created file", serving("[10.0.1.2:8080]"))
}

func TestFileMissingAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	r := startFile(t, path)
	r.waitForNoInput(t, "missing file reported", ReasonUnreadable)
	if msg := r.latestUpdate().NoInput; !strings.Contains(msg, path) || !strings.Contains(msg, "waiting for it to appear") {
		t.Errorf("reason %q should name the file and say it is awaited", msg)
	}
	replaceByRename(t, path, contents("10.0.1.1"))
	r.waitFor(t, "file appears", serving("[10.0.1.1:8080]"))
}

// waitForNoInput waits for an update without a snapshot, with a file error of reason.
func (r *recorder) waitForNoInput(t *testing.T, what, reason string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		u := r.latestUpdate()
		if u.Snapshot == nil && u.NoInput != "" && len(u.Errors) > 0 && u.Errors[0].Reason == reason {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: last update %+v", what, u)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFileMalformedKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	replaceByRename(t, path, contents("10.0.1.2")+"---\nkind: [oops\n")
	r.waitFor(t, "malformed file reported, services kept", keepingWith("[10.0.1.1:8080]", ReasonMalformedYAML))
	replaceByRename(t, path, contents("10.0.1.2"))
	r.waitFor(t, "fixed file", serving("[10.0.1.2:8080]"))
}

// ConfigMap volumes: PATH → ..data/PATH, ..data → ..<timestamp>; an update makes a new
// timestamped directory and renames a new ..data symlink over the old one.
func TestFileConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, data string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "services.yaml"), data)
	}
	symlink := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	version("..2024_01", contents("10.0.1.1"))
	symlink("..2024_01", "..data")
	symlink("..data/services.yaml", "services.yaml")
	r := startFile(t, filepath.Join(dir, "services.yaml"))
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))

	version("..2024_02", contents("10.0.1.2"))
	symlink("..2024_02", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2024_01")); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "symlink swap", serving("[10.0.1.2:8080]"))
}

// A symlink to a file in another directory: edits of the target happen there.
func TestFileSymlinkToOtherDirectory(t *testing.T) {
	target := filepath.Join(t.TempDir(), "real.yaml")
	write(t, target, contents("10.0.1.1"))
	path := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	write(t, target, contents("10.0.1.2"))
	r.waitFor(t, "target edited in place", serving("[10.0.1.2:8080]"))
}

// Identical bytes are not delivered again; a change, or a change in readability, is.
func TestFileSkipsIdenticalReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	r := &recorder{}
	f := NewFile(path, r.update)
	f.Settle = time.Nanosecond // every write here is complete
	steps := []struct {
		do   func()
		want int // deliveries so far
	}{
		{func() {}, 1}, // missing at start: delivered
		{func() {}, 1},
		{func() { write(t, path, contents("10.0.1.1")) }, 2},
		{func() {}, 2},
		{func() { write(t, path, contents("10.0.1.1")) }, 2},
		{func() { write(t, path, contents("10.0.1.2")) }, 3},
		{func() { _ = os.Remove(path) }, 4},
		{func() { write(t, path, contents("10.0.1.2")) }, 5},
	}
	for i, s := range steps {
		s.do()
		f.reload(path, nil)
		if got := r.deliveries(); got != s.want {
			t.Fatalf("step %d: %d deliveries, want %d", i, got, s.want)
		}
	}
}

func TestParse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1")+"---\n"+serviceYAML("bad", "10.96.0.300"))
	snap, err := Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := backendsOf(snap, frontend); got != "[10.0.1.1:8080]" {
		t.Errorf("backends = %s", got)
	}
	if !hasError(snap.Errors, model.KindService, "bad", model.ReasonInvalidClusterIP) {
		t.Errorf("errors = %v, want the bad service's", snap.Errors)
	}

	write(t, path, "kind: [\n")
	if _, err := Parse(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("malformed file: err = %v, want an error naming the file", err)
	}
	if _, err := Parse(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Errorf("missing file: no error")
	}
}

// A directory that is never quiet (a log file beside the YAML) must not postpone the read
// forever.
func TestFileBusyDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "services.yaml")
	write(t, path, contents("10.0.1.1"))
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				_ = os.WriteFile(filepath.Join(dir, "noise.log"), []byte(fmt.Sprint(i)), 0o644)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-stopped })
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	replaceByRename(t, path, contents("10.0.1.2"))
	r.waitFor(t, "change amid noise", serving("[10.0.1.2:8080]"))
}
