package harness

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// StartSquid runs Debian's squid in h as an intercepting node proxy: it accepts the
// connections sockmesh redirects on listen, reads their original destination with
// getsockopt(SO_ORIGINAL_DST) as it does behind iptables REDIRECT, and forwards to it
// with mark on its upstream sockets (tcp_outgoing_mark), so they are load-balanced and
// never redirected again. It caches nothing and keeps its files in a dir of its own.
func (e *Env) StartSquid(t testing.TB, h *netlab.Host, listen netip.AddrPort, mark int) {
	t.Helper()
	// squid drops to its own user, which must reach and write its logs and pid file:
	// not under the test's private temp dir, so a dir of its own in /tmp.
	dir, err := os.MkdirTemp("", e.Prefix+"-squid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	// A forward-proxy port on loopback too: squid wants one beside the intercepting port.
	forward := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 3128)
	conf := fmt.Sprintf(`http_port %[2]s intercept
http_port %[3]s
tcp_outgoing_mark %#[4]x all
http_access allow all
cache deny all
cache_mem 8 MB
maximum_object_size 0 KB
pid_filename %[1]s/squid.pid
access_log stdio:%[1]s/access.log
cache_log %[1]s/cache.log
cache_store_log none
coredump_dir %[1]s
shutdown_lifetime 0 seconds
client_request_buffer_max_size 64 MB
request_body_max_size 0
forwarded_for delete
via off
`, dir, listen, forward, mark)
	path := filepath.Join(dir, "squid.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
			t.Logf("squid in %s, cache.log:\n%s", h.Name, tail(string(log)))
		}
	})
	// -N: no daemon, one process, so killing its group at cleanup stops it.
	e.StartProgram(t, h, forward, "squid", "-N", "-d", "1", "-f", path)
}
