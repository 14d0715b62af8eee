package source

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Defaults for File's fields.
const (
	DefaultDebounce = 50 * time.Millisecond
	DefaultResync   = 10 * time.Second
	DefaultSettle   = 500 * time.Millisecond
	// DefaultMaxBytes bounds the file: decoding costs several times its size in memory
	// (about 8x). 10,000 Services with 10 endpoints each take about 12 MiB.
	DefaultMaxBytes = 32 << 20
)

// Reasons of file-level errors beyond decoding (metric label values, never renamed).
const (
	// ReasonEmpty: the file holds no document, which is no input, not "delete everything".
	ReasonEmpty = "empty"
	// ReasonTooLarge: the file is over the size limit and is not read.
	ReasonTooLarge = "too_large"
)

// Update is what the source delivers after a read.
type Update struct {
	// Snapshot is the desired state. It is nil while the file has never held usable
	// input (missing, empty, unreadable, undecodable, too large): then nothing may be
	// changed, and what a previous agent programmed keeps serving.
	Snapshot *model.Snapshot
	// NoInput says why there is no Snapshot.
	NoInput string
	// Errors are the file's own problems; with a Snapshot they are in Snapshot.Errors too.
	Errors []model.ObjectError
}

// File is the file:PATH source: a multi-document Kubernetes YAML file, watched for
// changes. Every change of the file's bytes (or of whether it can be read) yields an
// Update. A file that cannot be read, is empty or does not decode changes nothing: the
// objects last read from it stay, and before any good read there is no input at all.
// To remove every object, write an explicit empty list:
//
//	apiVersion: v1
//	kind: List
//	items: []
//
// Write the file by rename (write a temporary file in the same directory, then rename
// it over PATH), as editors, kubectl-style tools and ConfigMap mounts do: a renamed file
// is read at once. A file rewritten in place is read only once it has not changed for
// Settle, so a slow writer is not read half-way.
type File struct {
	Path     string
	OnUpdate func(Update)
	// Debounce is how long to wait after the last event before reading, since one save
	// is often several events. Zero means DefaultDebounce.
	Debounce time.Duration
	// Resync is how often the file is read without any event: a safety net for lost
	// events and for directories that cannot be watched (yet). Zero means DefaultResync.
	Resync time.Duration
	// Settle is how long an in-place write must be quiet before it is read. Zero means
	// DefaultSettle.
	Settle time.Duration
	// MaxBytes is the largest file read. Zero means DefaultMaxBytes.
	MaxBytes int64

	store     Store
	decoder   Decoder
	last      [sha256.Size]byte // fingerprint of the last delivered read
	delivered bool
	good      bool // some version of the file was decoded without error
	lastFile  os.FileInfo
}

// NewFile returns a File source for path that calls onUpdate after each read that
// changed something.
func NewFile(path string, onUpdate func(Update)) *File {
	return &File{Path: path, OnUpdate: onUpdate}
}

// Store is the File's object store, e.g. to seed the frontends' holders before Run.
func (f *File) Store() *Store { return &f.store }

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
	read := func() {
		if again := f.reload(path, w.sync()); again > 0 {
			debounce.Reset(again)
		}
	}
	read()
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
			read()
		case <-resync.C:
			read()
		}
	}
}

// maxWaitFactor bounds how long a stream of events can postpone a read, in Debounces.
const maxWaitFactor = 10

// reload reads the file and delivers an Update unless nothing changed since the last
// delivery. Watching is synced before reading, so a change between the two is not lost.
// While an in-place write has not settled it delivers nothing and returns how long to
// wait before reading again.
func (f *File) reload(path string, watchErr error) time.Duration {
	before, _ := os.Stat(path)
	data, readErr := readFile(path, or64(f.MaxBytes, DefaultMaxBytes))
	if readErr == nil {
		after, err := os.Stat(path)
		if err == nil {
			if wait := f.unsettled(before, after); wait > 0 {
				return wait
			}
			f.lastFile = after
		}
	}
	fp := fingerprint(data, readErr, watchErr)
	if f.delivered && fp == f.last {
		return 0
	}
	f.delivered, f.last = true, fp
	u := f.update(path, data, readErr, watchErr)
	if f.OnUpdate != nil {
		f.OnUpdate(u)
	}
	return 0
}

// unsettled says how long to wait before the content just read can be trusted as a
// whole: zero when it was renamed into place (writers rename complete files), or when it
// did not change while it was read and has been quiet for Settle.
func (f *File) unsettled(before, after os.FileInfo) time.Duration {
	settle := or(f.Settle, DefaultSettle)
	if before == nil || !sameVersion(before, after) {
		return settle // written to while we read it
	}
	if f.lastFile != nil && !os.SameFile(f.lastFile, after) {
		return 0 // a new file renamed over the path
	}
	if quiet := time.Since(after.ModTime()); quiet < settle {
		return settle - quiet
	}
	return 0
}

func sameVersion(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// errTooLarge is readFile's error for a file over the limit.
type errTooLarge struct{ size, limit int64 }

func (e errTooLarge) Error() string {
	return fmt.Sprintf("the file is larger than the limit of %d bytes (--max-input-bytes)", e.limit)
}

// readFile reads at most limit bytes: a file over the limit is refused without being
// read, since decoding it would cost several times its size.
func readFile(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if st, err := fh.Stat(); err == nil && st.Size() > limit {
		return nil, errTooLarge{st.Size(), limit}
	}
	data, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errTooLarge{int64(len(data)), limit}
	}
	return data, nil
}

// Read takes data as the file's content, read whole and settled, and returns the Update
// Run would deliver for it: the decoding, the store and the no-input rules without the
// watching. For fuzzing and tools.
func (f *File) Read(data []byte) Update { return f.update(f.Path, data, nil, nil) }

// update updates the store from one read of the file and returns what to deliver.
func (f *File) update(path string, data []byte, readErr, watchErr error) Update {
	var fileErrs []model.ObjectError
	keeping := "; keeping the last good contents"
	var tooLarge errTooLarge
	switch d := (Decoded{}); {
	case errors.As(readErr, &tooLarge):
		fileErrs = append(fileErrs, fileError(ReasonTooLarge, tooLarge.Error()+nothingOr(f.good, keeping)))
	case readErr != nil:
		msg := "cannot read: " + oneLine(unwrapPath(readErr).Error())
		switch {
		case f.good:
			msg += keeping
		case errors.Is(readErr, fs.ErrNotExist):
			msg += "; waiting for it to appear"
		}
		fileErrs = append(fileErrs, fileError(ReasonUnreadable, msg))
	default:
		if d = f.decoder.Decode(data); len(d.Errors) > 0 {
			for _, e := range d.Errors {
				e.Message += nothingOr(f.good, keeping)
				fileErrs = append(fileErrs, e)
			}
		} else if d.Documents == 0 {
			fileErrs = append(fileErrs, fileError(ReasonEmpty, "the file holds no document"+
				nothingOr(f.good, keeping)+"; to delete every object, write a List with no items"))
		} else {
			f.good = true
			f.store.Replace(d)
		}
	}
	if watchErr != nil {
		fileErrs = append(fileErrs, fileError(ReasonUnwatched, fmt.Sprintf(
			"%s; changes are picked up every %s", oneLine(watchErr.Error()), or(f.Resync, DefaultResync))))
	}
	for i := range fileErrs {
		fileErrs[i].Name = path
	}
	if !f.good {
		why := "no usable input yet"
		if len(fileErrs) > 0 {
			why = fileErrs[0].Error()
		}
		return Update{NoInput: why, Errors: fileErrs}
	}
	snap := f.store.Snapshot()
	snap.Errors = append(snap.Errors, fileErrs...)
	return Update{Snapshot: snap, Errors: fileErrs}
}

// nothingOr is what an error message ends with: how the last good contents are kept,
// or, before any, that nothing from the file is used.
func nothingOr(good bool, keeping string) string {
	if good {
		return keeping
	}
	return "; nothing from this file is used until it is fixed"
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
	s.Replace(d)
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

func or64(n, def int64) int64 {
	if n > 0 {
		return n
	}
	return def
}

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
