// Package netlab is the little network the demo and the end-to-end tests share: hosts
// in their own network namespaces joined by veths, a cgroup v2 child to attach to, the
// demo's Service addresses and YAML, backend servers and probes. It is test and demo
// infrastructure, not part of the agent; one package, so the demo and the tests
// exercise the same thing.
package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is one network namespace on the env's switch. It has an IPv4 and an IPv6
// address on one subnet and no default route: nothing it sends can leave the env.
type Host struct {
	Name  string
	NetNS string // bind-mount path, /run/netns/NAME
	IPv4  netip.Addr
	IPv6  netip.Addr
}

// Env is a set of hosts joined by veths to a bridge in a switch namespace.
type Env struct {
	Prefix string
	Hosts  []*Host
	made   []string // namespace names, for Close
}

// Subnets of every env: private, and only ever configured inside the env's namespaces.
var (
	envPrefix4 = netip.MustParsePrefix("10.200.0.0/24")
	envPrefix6 = netip.MustParsePrefix("fd00:200::/64")
)

// NewEnv creates the switch namespace and one namespace per host name, named
// PREFIX-sw and PREFIX-NAME. On error it removes whatever it made.
func NewEnv(prefix string, names ...string) (env *Env, err error) {
	env = &Env{Prefix: prefix}
	defer func() {
		if err != nil {
			_ = env.Close()
			env = nil
		}
	}()
	sw, err := env.newNS(prefix + "-sw")
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	swh, err := netlink.NewHandleAt(sw)
	if err != nil {
		return nil, err
	}
	defer swh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := swh.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add bridge: %w", err)
	}
	if err := swh.LinkSetUp(br); err != nil {
		return nil, err
	}
	for i, name := range names {
		h := &Host{
			Name:  name,
			NetNS: filepath.Join("/run/netns", prefix+"-"+name),
			IPv4:  nthAddr(envPrefix4, 10+i),
			IPv6:  nthAddr(envPrefix6, 10+i),
		}
		if err := env.addHost(swh, br, h, i); err != nil {
			return nil, fmt.Errorf("host %s: %w", name, err)
		}
		env.Hosts = append(env.Hosts, h)
	}
	return env, nil
}

// Host returns the host with that name, or nil.
func (e *Env) Host(name string) *Host {
	for _, h := range e.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func (e *Env) newNS(name string) (netns.NsHandle, error) {
	var ns netns.NsHandle
	err := OnLockedThread(func() error {
		var err error
		ns, err = netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		e.made = append(e.made, name)
		return nil
	})
	return ns, err
}

func (e *Env) addHost(swh *netlink.Handle, br *netlink.Bridge, h *Host, i int) error {
	ns, err := e.newNS(filepath.Base(h.NetNS))
	if err != nil {
		return err
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("p%d", i), MasterIndex: br.Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := swh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	if err := swh.LinkSetUp(veth); err != nil {
		return err
	}
	hh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer hh.Close()
	for _, ifname := range []string{"lo", "eth0"} {
		l, err := hh.LinkByName(ifname)
		if err != nil {
			return err
		}
		if ifname == "eth0" {
			for _, a := range []netip.Prefix{netip.PrefixFrom(h.IPv4, envPrefix4.Bits()), netip.PrefixFrom(h.IPv6, envPrefix6.Bits())} {
				// NODAD: the address is usable at once, not after duplicate detection.
				addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
				if err := hh.AddrAdd(l, addr); err != nil {
					return fmt.Errorf("add %s: %w", a, err)
				}
			}
		}
		if err := hh.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// Close deletes every namespace the env made; veths and bridge go with them.
func (e *Env) Close() error {
	var errs []error
	for i := len(e.made) - 1; i >= 0; i-- {
		if err := netns.DeleteNamed(e.made[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", e.made[i], err))
		}
	}
	e.made = nil
	return errors.Join(errs...)
}

// Do runs fn on an OS thread that has joined h's network namespace. Sockets fn creates
// belong to that namespace for their whole life, whichever goroutine uses them later.
func (h *Host) Do(fn func() error) error {
	return OnLockedThread(func() error {
		ns, err := netns.GetFromPath(h.NetNS)
		if err != nil {
			return err
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", h.NetNS, err)
		}
		return fn()
	})
}

// OnLockedThread runs fn on a fresh locked OS thread that is thrown away afterwards, so a
// namespace switch can never leak to other goroutines.
func OnLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		errc <- fn()
	}()
	return <-errc
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for i := 0; i < n; i++ {
		a = a.Next()
	}
	return a
}
