package xds

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// listenMustFail checks that Listen refuses path with an error naming it and what is
// there.
func listenMustFail(t *testing.T, path, want string) {
	t.Helper()
	ln, err := Listen("unix:" + path)
	if err == nil {
		ln.Close()
		t.Fatalf("Listen succeeded; want an error naming %s and %q", path, want)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Listen: %v; want an error naming %s and %q", err, path, want)
	}
}

func TestListenLeavesARegularFileAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xds.sock")
	const content = "somebody's data\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	listenMustFail(t, path, "a regular file")
	if got, err := os.ReadFile(path); err != nil || string(got) != content {
		t.Fatalf("the file now holds %q (%v); want it unchanged", got, err)
	}
}

func TestListenLeavesADirectoryAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xds.sock")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	listenMustFail(t, path, "a directory")
	if fi, err := os.Lstat(path); err != nil || !fi.IsDir() {
		t.Fatalf("the directory is gone: %v, %v", fi, err)
	}
}

// A symbolic link is not followed, even to a stale socket, and stays as it is.
func TestListenLeavesASymlinkAlone(t *testing.T) {
	dir := t.TempDir()
	target, path := filepath.Join(dir, "target.sock"), filepath.Join(dir, "xds.sock")
	staleSocket(t, target)
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	listenMustFail(t, path, "a symbolic link")
	if got, err := os.Readlink(path); err != nil || got != target {
		t.Fatalf("the link now points at %q (%v)", got, err)
	}
	if fi, err := os.Lstat(target); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("the link's target changed: %v, %v", fi, err)
	}
}

// A live socket belongs to a running server, maybe another agent: it is left serving.
func TestListenRefusesASocketInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xds.sock")
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	listenMustFail(t, path, "in use by another process")
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("the other server's socket no longer answers: %v", err)
	}
	c.Close()
}

// A socket nobody listens on, left by an agent that died, is replaced; the new one is
// owner-only, serves ADS, and is removed when the server stops.
func TestListenReplacesAStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xds.sock")
	staleSocket(t, path)
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, %v; want a socket with mode 0600", fi, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("the directory holds %v; want the socket alone", entries)
	}
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)), Stats{}, nil, Limits{})
	go func() { _ = srv.Serve(ln) }()
	if _, err := srv.Update(context.Background(), scaled(2, 0)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := dialADS(t, path).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	if resp, err := stream.Recv(); err != nil || len(resp.Resources) != 2 {
		t.Fatalf("over the replaced socket: %v, %v; want the 2 clusters", resp, err)
	}
	srv.Stop()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket outlived the server: %v", err)
	}
}

// staleSocket leaves a socket file at path with nothing listening on it.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}
