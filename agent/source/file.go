package source

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Defaults for File's timing fields.
const (
	DefaultDebounce = 50 * time.Millisecond
	DefaultResync   = 10 * time.Second
)

// File is the file:PATH source: a multi-document Kubernetes YAML file, watched for
// changes. Every change of the file's bytes (or of whether it can be read) yields a new
// snapshot; a file that cannot be read or decoded keeps the objects last read from it,
// so deleting or garbling the file never deletes programmed services. To remove every
// service, write an empty file.
//
// Write the file by rename (write a temporary file in the same directory, then rename
// it over PATH), as editors, kubectl-style tools and ConfigMap mounts do; a slow writer
// rewriting in place may be read half-written.
type File struct {
	Path     string
	OnUpdate func(*model.Snapshot)
	// Debounce is how long to wait after the last event before reading, since one save
	// is often several events. Zero means DefaultDebounce.
	Debounce time.Duration
	// Resync is how often the file is read without any event: a safety net for lost
	// events and for directories that cannot be watched (yet). Zero means DefaultResync.
	Resync time.Duration

	store     Store
	decoder   Decoder
	last      [sha256.Size]byte // fingerprint of the last delivered read
	delivered bool
	good      bool // some version of the file was decoded without error
}

// NewFile returns a File source for path that calls onUpdate with each new snapshot.
func NewFile(path string, onUpdate func(*model.Snapshot)) *File {
	return &File{Path: path, OnUpdate: onUpdate}
}

// Run reads the file, calls OnUpdate with the first snapshot (with an error in it if the
// file is missing), then watches the file's directory and calls OnUpdate, from this
// goroutine, after each change. It returns nil when ctx is done, and an error only when
// the path cannot be made absolute. Run must not be called twice at once.
func (f *File) Run(ctx context.Context) error {
	path, err := filepath.Abs(f.Path)
	if err != nil {
		return fmt.Errorf("file source %q: %w", f.Path, err)
	}
	w := &dirWatch{path: path}
	defer w.close()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	resync := time.NewTicker(or(f.Resync, DefaultResync))
	defer resync.Stop()

	// burst is when the first unread event arrived (zero: none pending). Each event
	// pushes the read back by Debounce, but never past maxWaitFactor*Debounce after the
	// first one, so a directory that is never quiet still gets the file read.
	var burst time.Time
	wait := or(f.Debounce, DefaultDebounce)
	changed := func() {
		now := time.Now()
		if burst.IsZero() {
			burst = now
		}
		debounce.Reset(min(wait, burst.Add(maxWaitFactor*wait).Sub(now)))
	}
	f.reload(path, w.sync())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.events():
			changed()
		case <-w.errors():
			changed() // the kernel dropped events (queue overflow): read again to be sure
		case <-debounce.C:
			burst = time.Time{}
			f.reload(path, w.sync())
		case <-resync.C:
			f.reload(path, w.sync())
		}
	}
}

// maxWaitFactor bounds how long a stream of events can postpone a read, in Debounces.
const maxWaitFactor = 10

// reload reads the file and delivers a snapshot unless nothing changed since the last
// delivery. Watching is synced before reading, so a change between the two is not lost.
func (f *File) reload(path string, watchErr error) {
	data, readErr := os.ReadFile(path)
	fp := fingerprint(data, readErr, watchErr)
	if f.delivered && fp == f.last {
		return
	}
	f.delivered, f.last = true, fp
	snap := f.snapshot(path, data, readErr, watchErr)
	if f.OnUpdate != nil {
		f.OnUpdate(snap)
	}
}

// snapshot updates the store from one read of the file and returns the snapshot to
// deliver, with the file's own problems appended.
func (f *File) snapshot(path string, data []byte, readErr, watchErr error) *model.Snapshot {
	var fileErrs []model.ObjectError
	if readErr != nil {
		msg := "cannot read: " + oneLine(unwrapPath(readErr).Error())
		switch {
		case f.good:
			msg += "; keeping the services last read from it"
		case errors.Is(readErr, fs.ErrNotExist):
			msg += "; waiting for it to appear"
		}
		fileErrs = append(fileErrs, fileError(ReasonUnreadable, msg))
	} else if d := f.decoder.Decode(data); len(d.Errors) > 0 {
		suffix := "; nothing from this file is used until it is fixed"
		if f.good {
			suffix = "; keeping the last good contents"
		}
		for _, e := range d.Errors {
			e.Message += suffix
			fileErrs = append(fileErrs, e)
		}
	} else {
		f.good = true
		f.store.Replace(d.Input())
	}
	if watchErr != nil {
		fileErrs = append(fileErrs, fileError(ReasonUnwatched, fmt.Sprintf(
			"%s; changes are picked up every %s", oneLine(watchErr.Error()), or(f.Resync, DefaultResync))))
	}
	snap := f.store.Snapshot()
	for _, e := range fileErrs {
		e.Name = path
		snap.Errors = append(snap.Errors, e)
	}
	return snap
}

// Parse reads and decodes the file once, for the CLI and tests. An unreadable or
// undecodable file is an error; objects that fail validation are left out and listed in
// the snapshot's Errors.
func Parse(path string) (*model.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	d := DecodeAll(data)
	if len(d.Errors) > 0 {
		all := make([]error, len(d.Errors))
		for i, e := range d.Errors {
			e.Name = path
			all[i] = e
		}
		return nil, errors.Join(all...)
	}
	var s Store
	s.Replace(d.Input())
	return s.Snapshot(), nil
}

// fingerprint identifies one read outcome: the bytes and the errors around them.
func fingerprint(data []byte, readErr, watchErr error) [sha256.Size]byte {
	h := sha256.New()
	h.Write(data)
	for _, err := range []error{readErr, watchErr} {
		h.Write([]byte{0})
		if err != nil {
			h.Write([]byte(err.Error()))
		}
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// unwrapPath drops the operation and path from an *fs.PathError: the ObjectError
// already names the file.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
