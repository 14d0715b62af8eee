package tests

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// trackConnections makes conntrack follow every new flow from h, so that "no entry for
// the ClusterIP" means something: the flows to the backends must show up.
func trackConnections(t *testing.T, h *netlab.Host) {
	t.Helper()
	rules := "table inet smtest {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}\n"
	cmd := exec.Command("nsenter", "--net="+h.NetNS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// conntrackDestinations lists the original destinations of h's conntrack entries.
func conntrackDestinations(t *testing.T, h *netlab.Host) map[netip.Addr]int {
	t.Helper()
	out := map[netip.Addr]int{}
	err := h.Do(func() error {
		nl, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer nl.Close()
		for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
			flows, err := nl.ConntrackTableList(netlink.ConntrackTable, fam)
			if err != nil {
				return err
			}
			for _, f := range flows {
				a, _ := netip.AddrFromSlice(f.Forward.DstIP)
				out[a.Unmap()]++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDNSToClusterIPAnswersFromClusterIPWithoutConntrack(t *testing.T) {
	env := harness.NewEnv(t, "backend-1", "backend-2")
	env.StartBackends(t, "backend-1", "backend-2")
	yaml := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1", "backend-2")))
	env.StartAgent(t, yaml)
	client := env.Host("client")
	trackConnections(t, client)

	const n = 100
	for _, vip := range []netip.Addr{vip4, vip6} {
		spreadFromVIP(t, env.Run(t, client, "dns", dnsTo(vip), n), dnsTo(vip), n)
	}
	dsts := conntrackDestinations(t, client)
	for _, vip := range []netip.Addr{vip4, vip6} {
		if dsts[vip] != 0 {
			t.Fatalf("conntrack has %d entries towards the ClusterIP %s", dsts[vip], vip)
		}
	}
	for _, b := range env.Hosts("backend-1", "backend-2") {
		if dsts[b.IPv4] == 0 || dsts[b.IPv6] == 0 {
			t.Fatalf("conntrack did not see the flows to %s at all (%v): the check above proves nothing", b.Name, dsts)
		}
	}
}
