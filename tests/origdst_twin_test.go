package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// The tuple twin: two network namespaces of the managed cgroup, each with the same
// addresses and its own proxy on the redirect address, each connecting from the same
// source address and port to a different L7 service. Both connections have the very
// same 4-tuple. Each proxy must learn its own client's original destination, whichever
// connects first and however late the proxies ask.

var (
	twinAddr  = netip.MustParseAddr("10.251.0.1")
	twinSrc   = netip.AddrPortFrom(twinAddr, 40001)
	twinProxy = netip.AddrPortFrom(twinAddr, relayPort)
	twinVIPs  = [2]netip.AddrPort{netip.MustParseAddrPort("10.96.0.71:80"), netip.MustParseAddrPort("10.96.0.72:80")}
)

func twinYAML() string {
	var b strings.Builder
	for i, vip := range twinVIPs {
		name := fmt.Sprintf("twin-%c", 'a'+i)
		fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: twins, annotations: {sockmesh.io/l7: "true"}}
spec:
  clusterIP: %s
  ports: [{name: http, port: %d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %s, namespace: twins, labels: {kubernetes.io/service-name: %s}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["10.251.0.%d"], nodeName: node-2}]
---
`, name, vip.Addr(), vip.Port(), name, name, 10+i)
	}
	return b.String()
}

// twinAddress gives host h the twins' shared address on its loopback (iproute2 with -n
// only enters the namespace; it never remounts /run/netns, as `ip netns add` would).
func twinAddress(t *testing.T, h *netlab.Host) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", filepath.Base(h.NetNS), "addr", "add", twinAddr.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add in %s: %v\n%s", h.Name, err, out)
	}
}

func TestOriginalDstOfTheSameTupleInTwoNamespacesIsEachOnesOwn(t *testing.T) {
	env := harness.NewEnv(t, "twin0", "twin1", "twin2", "twin3")
	for _, h := range env.Hosts("twin0", "twin1", "twin2", "twin3") {
		twinAddress(t, h)
	}
	a := env.StartAgent(t, env.WriteFile(t, "twins.yaml", twinYAML()),
		"--envoy-redirect", twinProxy.String(), "--node-name", "node-1")
	release := filepath.Join(env.Dir, "release")
	var proxies [2]*harness.Proc
	for round, order := range [][2]int{{0, 1}, {1, 0}} { // either twin may connect first
		_ = os.Remove(release)
		var ns [2]string
		for i := range ns {
			ns[i] = env.Host(fmt.Sprintf("twin%d", 2*round+i)).NetNS
			proxies[i] = env.OrigDstLate(t, ns[i], twinProxy, release)
		}
		for _, i := range order {
			env.DialFrom(t, ns[i], twinSrc, twinVIPs[i])
		}
		if err := os.WriteFile(release, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		for i, p := range proxies {
			ans := waitOrigDst(t, p)
			if ans.From != twinSrc.String() {
				t.Fatalf("round %d: twin %d's proxy saw a connection from %s, want %s: the tuples differ, so the test proves nothing", round, i, ans.From, twinSrc)
			}
			if ans.OrigDst != twinVIPs[i].String() {
				t.Errorf("round %d: twin %d dialled %s; its proxy's SO_ORIGINAL_DST says %q (errno %q)", round, i, twinVIPs[i], ans.OrigDst, ans.Errno)
			}
		}
	}
	if n := a.Metric(t, "sockmesh_origdst_lookups_total", map[string]string{"result": "hit"}); n != 4 {
		t.Errorf("sockmesh_origdst_lookups_total{result=hit} = %v, want 4", n)
	}
}

func waitOrigDst(t *testing.T, p *harness.Proc) harness.OrigDstAnswer {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, l := range p.Lines() {
			var ans harness.OrigDstAnswer
			if json.Unmarshal([]byte(l), &ans) == nil && ans.From != "" {
				return ans
			}
		}
	}
	t.Fatalf("the proxy never answered; it said %q", p.Lines())
	return harness.OrigDstAnswer{}
}
