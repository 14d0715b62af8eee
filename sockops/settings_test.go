package sockops

import (
	"net/netip"
	"testing"

	"github.com/sockmesh/sockmesh/bpf"
)

func TestConfigCarriesRedirectMarkAndMode(t *testing.T) {
	s := Settings{
		Redirect: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:15001"), netip.MustParseAddrPort("[fd00::1]:15006")},
		Mark:     0x539,
		Splice:   SpliceOn,
	}
	c, local, err := s.Config()
	if err != nil {
		t.Fatal(err)
	}
	if c.EnvoyMark != 0x539 || c.Splice != bpf.SpliceOn || bpf.PortFromNet(c.Redirect4Port) != 15001 || bpf.PortFromNet(c.Redirect6Port) != 15006 {
		t.Fatalf("config %+v", c)
	}
	if c.Redirect4.ToAddr(bpf.FamilyIPv4) != netip.MustParseAddr("10.0.0.1") || c.Redirect6.ToAddr(bpf.FamilyIPv6) != netip.MustParseAddr("fd00::1") {
		t.Fatalf("redirect addresses %+v", c)
	}
	if len(local) != 2 {
		t.Fatalf("local %v", local)
	}
	if c, _, _ := (Settings{}).Config(); c.Splice != bpf.SpliceAuto || c.Redirect4Port != 0 {
		t.Fatalf("zero settings: %+v (auto, no listener: L7 fails closed)", c)
	}
	if _, _, err := (Settings{Splice: "sometimes"}).Config(); err == nil {
		t.Fatal("bad splice mode accepted")
	}
}
