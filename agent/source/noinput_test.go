package source

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Defect 1: a bad file at start is no input, not an empty one: nothing is delivered that
// could replace what a previous agent programmed.
func TestBadFileAtStartIsNoInput(t *testing.T) {
	for _, tt := range []struct {
		name   string
		make   func(t *testing.T, path string)
		reason string
	}{
		{"missing", func(*testing.T, string) {}, ReasonUnreadable},
		{"empty", func(t *testing.T, p string) { write(t, p, "") }, ReasonEmpty},
		{"only comments", func(t *testing.T, p string) { write(t, p, "# nothing yet\n---\n") }, ReasonEmpty},
		{"malformed document appended", func(t *testing.T, p string) { write(t, p, contents("10.0.1.1")+"---\nkind: [\n") }, ReasonMalformedYAML},
		{"a directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, ReasonUnreadable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "services.yaml")
			tt.make(t, path)
			r := startFile(t, path)
			r.waitForNoInput(t, "no input", tt.reason)
			if !strings.Contains(r.latestUpdate().NoInput, path) {
				t.Errorf("NoInput %q does not name the file", r.latestUpdate().NoInput)
			}
		})
	}
}

// Defect 2: emptying the file while it is in use deletes nothing; an explicit empty List
// deletes everything.
func TestEmptiedFileKeepsAndAnEmptyListDeletes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := startFile(t, path)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	write(t, path, "") // : > services.yaml
	r.waitFor(t, "emptied file reported, services kept", keepingWith("[10.0.1.1:8080]", ReasonEmpty))
	replaceByRename(t, path, "apiVersion: v1\nkind: List\nitems: []\n")
	r.waitFor(t, "explicit empty list", func(s *model.Snapshot) bool { return len(s.Services) == 0 && len(s.Errors) == 0 })
}

// Defect 2: a slow writer rewriting the file in place is read only once it is done, so
// a file cut off after its Service document never drops that Service's backends.
func TestInPlaceWriteIsReadOnceSettled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := &recorder{}
	f := NewFile(path, r.update)
	f.Resync = time.Hour
	f.Settle = time.Second
	startRun(t, f)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))

	full := contents("10.0.1.1", "10.0.1.2")
	cut := strings.Index(full, "---\n") + 4 // the Service document only
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteString(full[:cut]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // well under Settle, far over Debounce
	if _, err := fh.WriteString(full[cut:]); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	r.waitFor(t, "the finished write", serving("[10.0.1.1:8080 10.0.1.2:8080]"))
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, u := range r.updates {
		if u.Snapshot == nil || backendsOf(u.Snapshot, frontend) == "[]" || backendsOf(u.Snapshot, frontend) == "absent" {
			t.Errorf("update %d was read mid-write: %+v", i, u)
		}
	}
}

// Defect 12: a file over the size limit is not read, and says so.
func TestFileOverTheSizeLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, contents("10.0.1.1"))
	r := &recorder{}
	f := NewFile(path, r.update)
	f.Resync, f.Settle, f.MaxBytes = time.Hour, testSettle, 4096
	startRun(t, f)
	r.waitFor(t, "first read", serving("[10.0.1.1:8080]"))
	replaceByRename(t, path, contents("10.0.1.2")+"---\n# "+strings.Repeat("x", 5000)+"\n")
	r.waitFor(t, "too large reported, services kept", keepingWith("[10.0.1.1:8080]", ReasonTooLarge))
	if msg := r.latestUpdate().Errors[0].Error(); !strings.Contains(msg, "4096") || !strings.Contains(msg, "--max-input-bytes") {
		t.Errorf("error %q should name the limit and the flag", msg)
	}
}
