package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TCAttach is how the NodePort tc programs attach to a device.
type TCAttach string

// --tc-attach values: TCX links (Linux 6.6+, pinned, updated in place), netlink clsact
// filters (older kernels: they stay on the device after the agent exits, as pins
// would), or TCX with netlink where the kernel has no TCX.
const (
	TCAuto    TCAttach = "auto"
	TCX       TCAttach = "tcx"
	TCNetlink TCAttach = "netlink"
)

// npFilterPrefix names sockmesh's netlink tc filters: sockmesh-np-ingress, -egress.
const npFilterPrefix = "sockmesh-np-"

// npFilterPriority and the handle are fixed, so a restarted agent replaces its filters
// in place.
const npFilterPriority = 1

// attachNetlinkTC puts the ingress and egress programs on ifindex as clsact filters in
// direct-action mode, replacing sockmesh's earlier ones atomically.
func attachNetlinkTC(ifindex int, ingress, egress *ebpf.Program) error {
	qdisc := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	for _, f := range []struct {
		parent uint32
		prog   *ebpf.Program
		name   string
	}{{netlink.HANDLE_MIN_INGRESS, ingress, "ingress"}, {netlink.HANDLE_MIN_EGRESS, egress, "egress"}} {
		filter := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: f.parent, Handle: netlink.MakeHandle(0, 1),
				Protocol: unix.ETH_P_ALL, Priority: npFilterPriority},
			Fd: f.prog.FD(), Name: npFilterPrefix + f.name, DirectAction: true,
		}
		if err := netlink.FilterReplace(filter); err != nil {
			return fmt.Errorf("tc %s filter: %w", f.name, err)
		}
	}
	return nil
}

// ourFilters lists sockmesh's tc filters on l, ingress and egress.
func ourFilters(l netlink.Link) ([]netlink.Filter, error) {
	var out []netlink.Filter
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := netlink.FilterList(l, parent)
		if err != nil {
			return out, err
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, npFilterPrefix) {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// detachNetlinkTC removes sockmesh's tc filters from ifindex (the qdisc stays: other
// tools may use it).
func detachNetlinkTC(ifindex int) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil // the device is gone, and its filters with it
	}
	return detachFilters(l)
}

func detachFilters(l netlink.Link) error {
	filters, err := ourFilters(l)
	errs := []error{err}
	for _, f := range filters {
		if err := netlink.FilterDel(f); err != nil {
			errs = append(errs, fmt.Errorf("%s: remove tc filter %s: %w", l.Attrs().Name, f.(*netlink.BpfFilter).Name, err))
		}
	}
	return errors.Join(errs...)
}

// DetachNetlinkTCExcept removes sockmesh's netlink tc filters from the devices of this
// network namespace not named in keep (nil: from every device), as `sockmesh cleanup`
// and an agent whose --devices shrank do. It returns the devices it cleared.
func DetachNetlinkTCExcept(keep []string) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var gone []string
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if slices.Contains(keep, name) {
			continue
		}
		if filters, _ := ourFilters(l); len(filters) == 0 {
			continue
		}
		if err := detachFilters(l); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, name)
	}
	return gone, errors.Join(errs...)
}
