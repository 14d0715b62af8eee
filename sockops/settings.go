// Package sockops owns the L7 redirect and splice settings of the datapath: where
// Envoy's redirect listener is, which mark Envoy's own sockets carry, and which local
// socket pairs are spliced. The programs themselves (bpf/sockops.c and the redirect in
// bpf/sock_lb.c) are loaded and attached with the rest of the datapath by package bpf.
package sockops

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/sockmesh/sockmesh/bpf"
)

// Splice modes, as the --splice flag names them.
const (
	SpliceAuto = "auto" // app <-> Envoy connections only (see README for why)
	SpliceOn   = "on"   // every local pair
	SpliceOff  = "off"
)

// SpliceBudget is the default of Settings.Budget.
const SpliceBudget = 1 << 20

// Settings is what the agent was told about Envoy and splicing.
type Settings struct {
	Redirect []netip.AddrPort // Envoy's redirect listener, at most one per family
	Mark     uint32           // SO_MARK of Envoy's own sockets
	Splice   string           // SpliceAuto, SpliceOn or SpliceOff
	// Budget is how many bytes a direction may splice into its receiver (more if the
	// receiver's SO_RCVBUF is larger) before it goes back to TCP for good: the bound on
	// kernel memory one stalled reader can pin, since spliced bytes bypass the receive
	// window. Zero means SpliceBudget.
	Budget uint32
}

// Config turns the settings into the datapath's runtime config, and returns the
// addresses that are local to this node because Envoy listens there.
func (s Settings) Config() (bpf.Config, []netip.Addr, error) {
	c := bpf.Config{EnvoyMark: s.Mark, SpliceBudget: s.Budget}
	if c.SpliceBudget == 0 {
		c.SpliceBudget = SpliceBudget
	}
	switch s.Splice {
	case SpliceOff:
		c.Splice = bpf.SpliceOff
	case SpliceOn:
		c.Splice = bpf.SpliceOn
	case SpliceAuto, "":
		c.Splice = bpf.SpliceAuto
	default:
		return bpf.Config{}, nil, fmt.Errorf("--splice %q: want auto, on or off", s.Splice)
	}
	var local []netip.Addr
	for _, ap := range s.Redirect {
		a, fam := bpf.AddrFrom(ap.Addr())
		if fam == bpf.FamilyIPv4 {
			c.Redirect4, c.Redirect4Port = a, bpf.PortToNet(ap.Port())
		} else {
			c.Redirect6, c.Redirect6Port = a, bpf.PortToNet(ap.Port())
		}
		local = append(local, ap.Addr().Unmap())
	}
	return c, local, nil
}

// NodeIPv4 is the source address the kernel would use towards the outside world: a
// Kubernetes node's IP. It is a route lookup; nothing is sent.
func NodeIPv4() (netip.Addr, error) {
	routes, err := netlink.RouteGet([]byte{192, 0, 2, 1}) // TEST-NET-1: any non-local address
	if err != nil {
		return netip.Addr{}, err
	}
	for _, r := range routes {
		if a, ok := netip.AddrFromSlice(r.Src); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, errors.New("no route with a source address")
}
