package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockDir holds one lock file per pin dir (bpffs itself cannot hold regular files), with
// the holder's pid in it for the "held by" message.
const lockDir = "/run/sockmesh"

// PinLock is an exclusive hold on a pin dir: one agent per dir, and no cleanup under a
// running agent. It is two flocks. One is on the directory itself, which every path to
// it shares (a symlink, a bind mount, a relative path). The other is on a file in
// lockDir named by the resolved path, which a dir removed and made again under a running
// agent does not escape.
type PinLock struct {
	dir     string
	dirFile *os.File
	pidFile *os.File
}

// ErrPinsInUse says another process holds the pin dir.
var ErrPinsInUse = errors.New("pin dir in use")

// LockPins takes the pin dir's lock without waiting. The dir must exist on a bpf
// filesystem, since the lock is on the directory itself: EnsureBPFFS makes it first.
// Pin under Dir, the path the lock resolved.
func LockPins(dir string) (*PinLock, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("lock pin dir %s: %w", dir, err)
	}
	name := describePath(dir, resolved)
	if err := checkBPFFS(resolved); err != nil {
		return nil, fmt.Errorf("pin dir %s: %w", name, err)
	}
	pidPath := pidFilePath(resolved)
	d, err := os.OpenFile(resolved, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("lock pin dir %s: %w", name, err)
	}
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		d.Close()
		return nil, lockError(name, pidPath, err)
	}
	if err := os.MkdirAll(lockDir, 0o700); err != nil {
		d.Close()
		return nil, fmt.Errorf("lock pin dir %s: %w", name, err)
	}
	f, err := lockFile(pidPath)
	if err != nil {
		d.Close()
		return nil, lockError(name, pidPath, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("write %s: %w", pidPath, err), os.Remove(pidPath), f.Close(), d.Close())
	}
	return &PinLock{dir: resolved, dirFile: d, pidFile: f}, nil
}

// Dir is the locked pin dir with symlinks resolved.
func (l *PinLock) Dir() string { return l.dir }

// Unlock releases the lock and removes its pid file.
func (l *PinLock) Unlock() error {
	if l.pidFile == nil {
		return nil
	}
	// Remove while still holding the lock, so the file never names a pid that let go.
	err := os.Remove(l.pidFile.Name())
	err = errors.Join(err, l.pidFile.Close(), l.dirFile.Close())
	l.pidFile, l.dirFile = nil, nil
	return err
}

// pidFilePath names the lock file of a resolved pin dir. The escaping keeps distinct
// dirs apart ("/a_b" and "/a/b") while common paths read as before.
func pidFilePath(resolved string) string {
	name := strings.NewReplacer("%", "%25", "_", "%5F", "/", "_").Replace(resolved)
	return filepath.Join(lockDir, "pins"+name+".lock")
}

// lockFile opens and flocks path. A holder that unlocks removes the file; when that
// happens between our open and flock, the lock taken is on a file no one else opens,
// so take the one now at path instead.
func lockFile(path string) (*os.File, error) {
	for range 5 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return nil, err
		}
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &named) == nil &&
			held.Dev == named.Dev && held.Ino == named.Ino {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("lock file %s keeps being replaced", path)
}

func lockError(name, pidPath string, err error) error {
	if !errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("lock pin dir %s: %w", name, err)
	}
	// The pid file is keyed by path: a holder that came in by another path (a bind
	// mount) wrote its pid elsewhere.
	holder := "another process"
	if pid, _ := os.ReadFile(pidPath); len(strings.TrimSpace(string(pid))) > 0 {
		holder = "pid " + strings.TrimSpace(string(pid))
	}
	return fmt.Errorf("%w: %s is held by %s", ErrPinsInUse, name, holder)
}
