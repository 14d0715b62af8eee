// Package sockops owns the splice and the L7 redirect's bookkeeping: the sock_ops,
// sk_msg, cgroup/getsockopt and sock_release programs (sockops.c, bpf2go output
// committed) with their Go side: loading and attaching them beside socket-LB, the
// settings (Envoy's redirect listener, the mark on Envoy's own sockets, the splice
// mode), and the kernel check that decides whether splicing may run at all. The
// redirect itself, at connect(), is socket-LB's (bpf/sock_lb.c).
package sockops

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/sockmesh/sockmesh/bpf"
)

// Splice modes, as the --splice flag names them.
// auto and on splice only where CheckKernel finds every receiver like TCP.
const (
	SpliceAuto = "auto" // app -> Envoy only: Envoy's accepted socket is the one spliced receiver
	SpliceOn   = "on"   // every local pair, both directions
	SpliceOff  = "off"
)

// Settings is what the agent was told about Envoy and splicing.
type Settings struct {
	Redirect []netip.AddrPort // Envoy's redirect listener, at most one per family
	Mark     uint32           // SO_MARK of Envoy's own sockets
	Splice   string           // SpliceAuto, SpliceOn or SpliceOff
}

// Config turns the settings into the datapath's runtime config, and returns the
// addresses that are local to this node because Envoy listens there.
func (s Settings) Config() (bpf.Config, []netip.Addr, error) {
	c := bpf.Config{EnvoyMark: s.Mark}
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

// GateSplice leaves splicing in c on only if the kernel check finds that every receiver
// a splice creates behaves like TCP; otherwise it turns it off. The check runs only when
// c asks for splicing; the report is nil when it did not run.
func GateSplice(c *bpf.Config, check func() Report) *Report {
	if c.Splice == bpf.SpliceOff {
		return nil
	}
	rep := check()
	if !rep.Safe() {
		c.Splice = bpf.SpliceOff
	}
	return &rep
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
