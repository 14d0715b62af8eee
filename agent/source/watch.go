package source

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/fsnotify/fsnotify"
)

// ReasonUnwatched: the file's directory cannot be watched, so changes are only noticed
// by the periodic re-read.
const ReasonUnwatched = "unwatched"

// dirWatch watches the directories a file's contents depend on. It watches directories,
// not the file: an inotify watch on a file follows the inode, and editors, kubectl-style
// tools and ConfigMap mounts replace the file by renaming another one over it (or over
// a "..data" symlink on the way to it), after which a file watch sees nothing. Every
// event in these directories triggers a (debounced, cheap) re-read; telling which
// events matter would mean following symlink chains, and identical bytes are not
// delivered anyway.
type dirWatch struct {
	path string
	w    *fsnotify.Watcher // nil until a watcher could be made
}

// sync makes the watched set match what the file's contents depend on now: its
// directory and, if the path leads through symlinks, the directory of the file they
// resolve to (a symlink target outside the directory changes without events in it). It
// retries what failed before, so a directory that appears later gets watched then.
func (d *dirWatch) sync() error {
	if d.w == nil {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("cannot watch for changes: %v", err)
		}
		d.w = w
	}
	want := []string{filepath.Dir(d.path)}
	if target, err := filepath.EvalSymlinks(d.path); err == nil && filepath.Dir(target) != want[0] {
		want = append(want, filepath.Dir(target))
	}
	watched := d.w.WatchList()
	for _, dir := range watched {
		if !slices.Contains(want, dir) {
			_ = d.w.Remove(dir) // the kernel may have dropped it already with the directory
		}
	}
	var errs []error
	for _, dir := range want {
		if slices.Contains(watched, dir) {
			continue
		}
		if err := d.w.Add(dir); err != nil {
			errs = append(errs, fmt.Errorf("cannot watch directory %s: %v", dir, unwrapPath(err)))
		}
	}
	return errors.Join(errs...)
}

// events and errors return the watcher's channels, or nil channels (which block a
// select forever) while there is no watcher.
func (d *dirWatch) events() <-chan fsnotify.Event {
	if d.w == nil {
		return nil
	}
	return d.w.Events
}

func (d *dirWatch) errors() <-chan error {
	if d.w == nil {
		return nil
	}
	return d.w.Errors
}

func (d *dirWatch) close() {
	if d.w != nil {
		_ = d.w.Close()
	}
}
