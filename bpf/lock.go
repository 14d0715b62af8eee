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

// lockDir holds one lock file per pin dir; bpffs itself cannot hold regular files.
const lockDir = "/run/sockmesh"

// PinLock is an exclusive hold on a pin dir: one agent per dir, and no cleanup under a
// running agent.
type PinLock struct{ f *os.File }

// ErrPinsInUse says another process holds the pin dir.
var ErrPinsInUse = errors.New("pin dir in use")

// LockPins takes the pin dir's lock without waiting.
func LockPins(dir string) (*PinLock, error) {
	if err := os.MkdirAll(lockDir, 0o700); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(lockDir, "pins"+strings.ReplaceAll(abs, "/", "_")+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by pid %s", ErrPinsInUse, dir, strings.TrimSpace(string(pid)))
		}
		return nil, err
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &PinLock{f: f}, nil
}

// Unlock releases the lock and removes its file.
func (l *PinLock) Unlock() error {
	// Remove while still holding the lock so no waiter locks a file about to vanish.
	err := os.Remove(l.f.Name())
	return errors.Join(err, l.f.Close())
}
