package sockops

import (
	"errors"
	"net/netip"
	"strings"
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

func TestGateSpliceRunsTheCheckOnlyWhenAskedAndTurnsSplicingOffOnAnyDifference(t *testing.T) {
	ran := 0
	check := func(rep Report) func() Report {
		return func() Report { ran++; return rep }
	}
	like := Report{Findings: []Finding{{Receiver: ReceiverSpliced, Behaviour: "read", TCP: "x", Got: "x"}}}
	unlike := Report{Findings: append(like.Findings, Finding{Receiver: ReceiverInSockhash, Behaviour: "FIONREAD/SIOCINQ", TCP: "1000", Got: "0"})}

	c := bpf.Config{Splice: bpf.SpliceOff}
	if rep := GateSplice(&c, check(unlike)); rep != nil || ran != 0 || c.Splice != bpf.SpliceOff {
		t.Fatalf("off: report %v, check ran %d times, mode %d", rep, ran, c.Splice)
	}
	for _, mode := range []uint32{bpf.SpliceAuto, bpf.SpliceOn} {
		c := bpf.Config{Splice: mode}
		if rep := GateSplice(&c, check(like)); rep == nil || !rep.Safe() || c.Splice != mode {
			t.Fatalf("mode %d, kernel like TCP: report %+v, mode now %d", mode, rep, c.Splice)
		}
		c = bpf.Config{Splice: mode}
		rep := GateSplice(&c, check(unlike))
		if rep == nil || rep.Safe() || c.Splice != bpf.SpliceOff {
			t.Fatalf("mode %d, kernel unlike TCP: report %+v, mode now %d", mode, rep, c.Splice)
		}
		if s := rep.Summary(); !strings.Contains(s, "FIONREAD/SIOCINQ") || strings.Contains(s, "read:") {
			t.Fatalf("summary names the wrong rows: %s", s)
		}
		c = bpf.Config{Splice: mode}
		if rep := GateSplice(&c, check(Report{Err: errors.New("no sockhash")})); rep.Safe() || c.Splice != bpf.SpliceOff {
			t.Fatalf("mode %d, check failed to run: splicing stayed %d", mode, c.Splice)
		}
	}
}
