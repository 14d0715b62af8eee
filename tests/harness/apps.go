package harness

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Servers from Debian as test backends and proxies: each gets its own scratch dir for
// config, pid, logs and temp files, runs in the foreground as one process (so killing its
// group at cleanup stops it) and writes nothing outside that dir.

// nginxConf is a whole nginx.conf for one single-process nginx whose state lives in dir;
// servers is the text of its server blocks.
func nginxConf(dir, servers string) string {
	return fmt.Sprintf(`daemon off;
master_process off;
user root;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 1024; }
http {
	access_log off;
	default_type application/octet-stream;
	client_body_temp_path %[1]s/client_body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, servers)
}

// StartNginx runs nginx in h with the given server blocks and waits until it accepts
// connections on ready. Its error log is printed if the test fails: a stalled request
// leaves its traces there.
func (e *Env) StartNginx(t testing.TB, h *netlab.Host, ready netip.AddrPort, servers string) {
	t.Helper()
	dir := filepath.Join(e.Dir, "nginx-"+h.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(dir, servers)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx in %s, error log:\n%s", h.Name, tail(string(log)))
		}
	})
	// -e: the startup log goes to dir too, not to the system's /var/log/nginx.
	e.StartProgram(t, h, ready, "nginx", "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
}

// StartRedis runs redis-server in h on addr with persistence off and its dir in the env.
func (e *Env) StartRedis(t testing.TB, h *netlab.Host, addr netip.AddrPort) {
	t.Helper()
	dir := filepath.Join(e.Dir, "redis-"+h.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.StartProgram(t, h, addr, "redis-server", "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--bind", addr.Addr().String(), "--port", fmt.Sprint(addr.Port()),
		"--dir", dir, "--daemonize", "no", "--logfile", "")
}

// StartIperf3 runs a persistent iperf3 server in h on addr. Not one-off (-1): the
// readiness probe is a connection too, and each client run is another.
func (e *Env) StartIperf3(t testing.TB, h *netlab.Host, addr netip.AddrPort) {
	t.Helper()
	e.StartProgram(t, h, addr, "iperf3", "-s", "-B", addr.Addr().String(), "-p", fmt.Sprint(addr.Port()))
}

// WriteRandomFile writes size random bytes to path (random, so that nothing along the
// way can compress or dedupe them) and returns their sha256 in hex.
func WriteRandomFile(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// FileSHA256 is the sha256 of a file's contents in hex, and its size.
func FileSHA256(t testing.TB, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}
