package sockops

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKernelCheckConnectionsLiveInAPrivateNamespace: the check's loopback pairs (and the
// resets its rows provoke) belong to a namespace of their own, not the caller's.
func TestKernelCheckConnectionsLiveInAPrivateNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("privileged test cannot run in CI: needs root for unshare(CLONE_NEWNET)")
		}
		t.Skip("needs root for unshare(CLONE_NEWNET)")
	}
	pairs, shared := newPairFactory()
	defer pairs.stop()
	if shared != "" {
		t.Fatalf("no private namespace as root: %s", shared)
	}
	p, err := pairs.pair()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	here, err := newLoopbackPair()
	if err != nil {
		t.Fatal(err)
	}
	defer here.close()
	cookie := func(fd int) uint64 {
		t.Helper()
		c, err := getsockoptU64(fd, unix.SO_NETNS_COOKIE)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if cookie(p.snd) == cookie(here.snd) || cookie(p.snd) != cookie(p.rcv) {
		t.Fatalf("netns cookies: the check's pair %d/%d, the caller's %d: want the pair together, apart from the caller",
			cookie(p.snd), cookie(p.rcv), cookie(here.snd))
	}
	// The pair works: bytes cross it.
	if _, err := unix.Write(p.snd, []byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if n, err := unix.Read(p.rcv, buf); n != 1 || err != nil {
		t.Fatalf("read on the private pair: %d, %v", n, err)
	}
}
