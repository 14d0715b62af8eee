package agent

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/sockmesh/sockmesh/bpf"
)

// datapathConfig turns the flags into the datapath's runtime settings, and returns the
// redirect addresses (always local, for splicing).
func datapathConfig(cfg Config, log *slog.Logger) (bpf.Config, []netip.Addr, error) {
	addrs, err := cfg.RedirectAddrs()
	if err != nil {
		return bpf.Config{}, nil, err
	}
	if len(addrs) == 0 {
		ip, err := nodeIPv4()
		if err != nil {
			log.Warn("no --envoy-redirect and no node IPv4 address found: connections to L7 services will be refused", "err", err)
		} else {
			addrs = []netip.AddrPort{netip.AddrPortFrom(ip, DefaultEnvoyPort)}
		}
	}
	c := bpf.Config{EnvoyMark: cfg.EnvoyMark, Splice: spliceMode(cfg.Splice)}
	var local []netip.Addr
	for _, ap := range addrs {
		a, fam := bpf.AddrFrom(ap.Addr())
		if fam == bpf.FamilyIPv4 {
			c.Redirect4, c.Redirect4Port = a, bpf.PortToNet(ap.Port())
		} else {
			c.Redirect6, c.Redirect6Port = a, bpf.PortToNet(ap.Port())
		}
		local = append(local, ap.Addr())
	}
	return c, local, nil
}

// spliceMode maps --splice to the datapath's switch. auto splices only app <-> Envoy
// connections; the README gives the measurements and the splice(2) caveat behind it.
func spliceMode(flag string) uint32 {
	switch flag {
	case "off":
		return bpf.SpliceOff
	case "on":
		return bpf.SpliceOn
	}
	return bpf.SpliceAuto
}

// nodeIPv4 is the source address the kernel would use towards the outside world: the
// node IP of a Kubernetes node. It is a route lookup; nothing is sent.
func nodeIPv4() (netip.Addr, error) {
	routes, err := netlink.RouteGet([]byte{192, 0, 2, 1}) // TEST-NET-1: any non-local address
	if err != nil {
		return netip.Addr{}, err
	}
	for _, r := range routes {
		if a, ok := netip.AddrFromSlice(r.Src); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no route with a source address")
}
