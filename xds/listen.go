package xds

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ParseListen splits an --xds-listen address: "unix:PATH" or "tcp:HOST:PORT".
func ParseListen(addr string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok && path != "" {
		return "unix", path, nil
	}
	if hostPort, ok := strings.CutPrefix(addr, "tcp:"); ok {
		if _, _, err := net.SplitHostPort(hostPort); err == nil {
			return "tcp", hostPort, nil
		}
	}
	return "", "", fmt.Errorf("--xds-listen %q: want unix:PATH or tcp:HOST:PORT", addr)
}

// Listen opens the --xds-listen address. It touches nothing but the socket's path, so
// the agent can open it before it changes anything else, and stop there if it fails.
//
// A unix socket is 0600, since whoever can talk to it can see every service. What is
// already at PATH is replaced only if it is a socket nobody answers on (left behind by
// an agent that died); a live socket, a file, a directory or a symbolic link there is
// an error, and is left as it is. Closing the listener removes the socket.
func Listen(addr string) (net.Listener, error) {
	network, address, err := ParseListen(addr)
	if err != nil {
		return nil, err
	}
	if network == "tcp" {
		return net.Listen("tcp", address)
	}
	return listenUnix(address)
}

// staleProbeTimeout bounds the dial that tells a live socket from a stale one. A live
// server on this node answers a connect at once; a full backlog fails fast too.
const staleProbeTimeout = time.Second

// maxUnixPath is the longest path bind(2) takes for a unix socket.
const maxUnixPath = len(syscall.RawSockaddrUnix{}.Path) - 1

// listenUnix binds the socket in a fresh 0700 directory beside path, makes it 0600
// there and only then links it at path, so it is never reachable with the mode bind
// gives it. (The umask would do the same, but it is process-wide and other goroutines
// create files meanwhile.) link(2) fails if something took path since it was checked,
// where rename(2) would replace it.
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	private, err := os.MkdirTemp(dir, ".xds")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(private) // holds the bound socket's first name, gone once linked
	bound := filepath.Join(private, "s")
	if len(bound) > maxUnixPath {
		return nil, fmt.Errorf("%s: directory path too long for a unix socket (made first as %s, over %d bytes)", path, bound, maxUnixPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // its name moves; Close removes path instead
	if err := os.Chmod(bound, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Link(bound, path); err != nil {
		ln.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s was created by another process while the socket was being made; not replacing it", path)
		}
		return nil, err
	}
	file, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &unixListener{UnixListener: ln, path: path, file: file}, nil
}

// removeStaleSocket clears path for a new socket: nothing there, or a socket that
// refuses connections. It never follows a symbolic link.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is %s, not a socket; not replacing it", path, describeFileType(fi.Mode()))
	}
	conn, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%s is in use by another process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: cannot tell whether another process serves on it: %w", path, err)
	}
	// Refused: nothing listens. Remove it only if it is still the socket just probed.
	if now, err := os.Lstat(path); err != nil || !os.SameFile(fi, now) {
		return fmt.Errorf("%s changed while it was checked; not replacing it", path)
	}
	return os.Remove(path)
}

func describeFileType(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "a device"
	default:
		return "a special file (" + m.Type().String() + ")"
	}
}

// unixListener is a unix socket listener known by path, its second name, which Close
// removes if it is still this socket (a successor may have replaced it meanwhile).
type unixListener struct {
	*net.UnixListener
	path   string
	file   os.FileInfo
	unlink sync.Once
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.unlink.Do(func() {
		if now, serr := os.Lstat(l.path); serr == nil && os.SameFile(l.file, now) {
			_ = os.Remove(l.path)
		}
	})
	return err
}
