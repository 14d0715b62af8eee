package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Flow is one NodePort flow the datapath tracks, as `sockmesh ct list` shows it: the
// client's packets to Frontend go to Backend, with the source rewritten to NAT when
// the backend is on another node (SNAT).
type Flow struct {
	Protocol string         `json:"protocol"`
	Client   netip.AddrPort `json:"client"`
	Frontend netip.AddrPort `json:"frontend"`
	Backend  netip.AddrPort `json:"backend"`
	NAT      netip.AddrPort `json:"nat,omitzero"`
	// Idle is how long ago the flow last passed (to the second); Closing says a FIN or
	// RST passed and the short timeout applies.
	Idle    time.Duration `json:"idleNanoseconds"`
	Closing bool          `json:"closing,omitempty"`
	SvcID   uint32        `json:"serviceId"`
}

// ReadFlows reads the tracked flows from the NodePort conntrack pinned in dir, ordered
// by client. A dir without NodePort pins (no --devices yet) has no flows.
func ReadFlows(dir string) ([]Flow, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sm_ct_forward"), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open NodePort conntrack in %s: %w", dir, err)
	}
	defer m.Close()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, err
	}
	now := uint64(ts.Nano())
	var (
		k   CtKey
		v   CtForward
		out []Flow
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fam := k.Family
		f := Flow{
			Protocol: protocolName(k.Proto),
			Client:   netip.AddrPortFrom(LbAddr(k.Saddr).ToAddr(fam), PortFromNet(k.Sport)),
			Frontend: netip.AddrPortFrom(LbAddr(k.Daddr).ToAddr(fam), PortFromNet(k.Dport)),
			Backend:  netip.AddrPortFrom(LbAddr(v.Backend).ToAddr(fam), PortFromNet(v.BackendPort)),
			Closing:  v.Flags&CtFlagClosing != 0,
			SvcID:    v.SvcId,
		}
		if v.Flags&CtFlagSNAT != 0 {
			f.NAT = netip.AddrPortFrom(LbAddr(v.NatAddr).ToAddr(fam), PortFromNet(v.NatPort))
		}
		if now > v.LastSeenNs {
			f.Idle = time.Duration(now - v.LastSeenNs).Truncate(time.Second)
		}
		out = append(out, f)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", m, err)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Client.Compare(out[j].Client); c != 0 {
			return c < 0
		}
		return out[i].Frontend.Compare(out[j].Frontend) < 0
	})
	return out, nil
}

func protocolName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "TCP"
	case unix.IPPROTO_UDP:
		return "UDP"
	}
	return fmt.Sprint(p)
}
