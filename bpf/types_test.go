package bpf

import (
	"net/netip"
	"testing"
)

func TestAddrRoundTripAndLayout(t *testing.T) {
	for _, s := range []string{"10.96.0.10", "fd00:96::10", "::ffff:10.1.2.3"} {
		a := netip.MustParseAddr(s)
		lb, fam := AddrFrom(a)
		if got := lb.ToAddr(fam); got != a.Unmap() {
			t.Fatalf("%s round-trips to %s", s, got)
		}
	}
	// The datapath compares raw bytes with what the kernel hands over (network order).
	lb, fam := AddrFrom(netip.MustParseAddr("10.96.0.10"))
	b := [4]byte{byte(lb.Addr[0]), byte(lb.Addr[0] >> 8), byte(lb.Addr[0] >> 16), byte(lb.Addr[0] >> 24)}
	if fam != FamilyIPv4 || b != [4]byte{10, 96, 0, 10} || lb.Addr[1]|lb.Addr[2]|lb.Addr[3] != 0 {
		t.Fatalf("IPv4 layout %v family %d", lb, fam)
	}
	if p := PortToNet(80); p != 0x5000 || PortFromNet(p) != 80 {
		t.Fatalf("port 80 in network order = %#x", p)
	}
	if n := NameFrom("demo/web:http"); n.String() != "demo/web:http" {
		t.Fatalf("name round trip: %q", n.String())
	}
}
