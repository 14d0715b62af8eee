package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// The NodePort structs, as bpf2go generated them.
type (
	CtKey      = nodeportCtKey
	CtForward  = nodeportCtForward
	CtReply    = nodeportCtReply
	NPConfig   = nodeportNpConfig
	NPDevice   = nodeportNpDevice
	NPRangeKey = nodeportNpRangeKey
	NPCounter  = nodeportNpCounter
	NPProg     = nodeportNpProg
	NPLbAddr   = nodeportLbAddr
)

// Flags of NodePort frontends and tracked flows.
const (
	CtFlagClosing = uint32(nodeportCtFlagsCT_F_CLOSING)
	CtFlagSNAT    = uint32(nodeportCtFlagsCT_F_SNAT)
)

// NodePort modes (np_config.mode): how a flow reaches a backend on another node.
const (
	NPModeSNAT   = uint32(nodeportNpModeNP_MODE_SNAT)
	NPModeDSR    = uint32(nodeportNpModeNP_MODE_DSR)
	NPModeHybrid = uint32(nodeportNpModeNP_MODE_HYBRID)
)

// NodePort counters: NPCounterSlots per program, program-major.
const (
	NPCounterSlots = 32
	NPCounters     = int(nodeportNpCounterNP_COUNTER_MAX)
	NPProgs        = int(nodeportNpProgNP_PROG_MAX)
)

// Programs and counters, for tests and metrics.
const (
	NPProgXDP       = nodeportNpProgNP_PROG_XDP
	NPProgTCIngress = nodeportNpProgNP_PROG_TC_INGRESS
	NPProgTCEgress  = nodeportNpProgNP_PROG_TC_EGRESS

	NPPass              = nodeportNpCounterNP_PASS
	NPNewFlow           = nodeportNpCounterNP_NEW_FLOW
	NPForward           = nodeportNpCounterNP_FORWARD
	NPReply             = nodeportNpCounterNP_REPLY
	NPICMPError         = nodeportNpCounterNP_ICMP_ERROR
	NPDSRLearned        = nodeportNpCounterNP_DSR_LEARNED
	NPDropDSROption     = nodeportNpCounterNP_DROP_DSR_OPTION
	NPToStack           = nodeportNpCounterNP_TO_STACK
	NPDropNoBackend     = nodeportNpCounterNP_DROP_NO_BACKEND
	NPDropSourceRange   = nodeportNpCounterNP_DROP_SOURCE_RANGE
	NPDropTTL           = nodeportNpCounterNP_DROP_TTL
	NPDropNoPort        = nodeportNpCounterNP_DROP_NO_PORT
	NPDropCTFull        = nodeportNpCounterNP_DROP_CT_FULL
	NPDropNoRoute       = nodeportNpCounterNP_DROP_NO_ROUTE
	NPDropMalformed     = nodeportNpCounterNP_DROP_MALFORMED
	NPDropForwardingOff = nodeportNpCounterNP_DROP_FORWARDING_OFF
)

// NPProgNames and NPCounterNames label the NodePort counters in metrics: the program,
// and the action (forward, reply, ...) or drop reason.
var (
	NPProgNames    = [...]string{NPProgXDP: "xdp", NPProgTCIngress: "tc_ingress", NPProgTCEgress: "tc_egress"}
	NPCounterNames = [...]string{
		NPPass: "pass", NPNewFlow: "new_flow", NPForward: "forward", NPReply: "reply", NPToStack: "to_stack",
		NPDropNoBackend: "drop_no_backend", NPDropSourceRange: "drop_source_range", NPDSRLearned: "dsr_learned", NPICMPError: "icmp_error", NPDropDSROption: "drop_dsr_option",
		NPDropTTL: "drop_ttl", NPDropNoPort: "drop_no_port", NPDropCTFull: "drop_ct_full",
		NPDropNoRoute: "drop_no_route", NPDropMalformed: "drop_malformed", NPDropForwardingOff: "drop_forwarding_off",
	}
)

// NodePort is the loaded NodePort programs (XDP, tc ingress, tc egress) and their maps,
// pinned beside socket-LB's, whose slots and backends they share.
type NodePort struct {
	dir  string
	objs nodeportObjects
}

// LoadNodePort loads the NodePort programs into dir. Load socket-LB (Load) first with
// the same limits: the backend tables are its pins.
func LoadNodePort(dir string, lim Limits) (*NodePort, error) {
	if _, err := EnsureBPFFS(dir); err != nil {
		return nil, err
	}
	spec, err := loadNodeport()
	if err != nil {
		return nil, fmt.Errorf("parse embedded NodePort object: %w", err)
	}
	spec.Maps[nodeportMapSmServices].MaxEntries = uint32(lim.MaxServices)
	spec.Maps[nodeportMapSmBackends].MaxEntries = uint32(lim.MaxBackends) + 1
	spec.Maps[nodeportMapSmSlots].MaxEntries = uint32(lim.MaxBackends)
	n := &NodePort{dir: dir}
	if err := LoadPinned(spec, &n.objs, dir, "NodePort"); err != nil {
		return nil, err
	}
	return n, nil
}

// NodePortMaps are the NodePort programs' own maps.
type NodePortMaps struct {
	Addrs, Devices, Ranges, Forward, Reply, Config, Counters *ebpf.Map
}

// Maps returns the loaded maps.
func (n *NodePort) Maps() NodePortMaps {
	m := n.objs.nodeportMaps
	return NodePortMaps{
		Addrs: m.SmNpAddrs, Devices: m.SmNpDevices, Ranges: m.SmNpRanges,
		Forward: m.SmCtForward, Reply: m.SmCtReply, Config: m.SmNpConfig, Counters: m.SmNpCounters,
	}
}

// Programs returns the XDP, tc ingress and tc egress programs.
func (n *NodePort) Programs() (xdp, tcIngress, tcEgress *ebpf.Program) {
	p := n.objs.nodeportPrograms
	return p.NodeportXdp, p.NodeportTcIngress, p.NodeportTcEgress
}

// NPCounterValues sums the NodePort counters over CPUs: [program][counter].
func (m NodePortMaps) NPCounterValues() ([NPProgs][NPCounterSlots]uint64, error) {
	var out [NPProgs][NPCounterSlots]uint64
	for p := 0; p < NPProgs; p++ {
		for c := 0; c < NPCounters; c++ {
			var per []uint64
			if err := m.Counters.Lookup(uint32(p*NPCounterSlots+c), &per); err != nil {
				return out, fmt.Errorf("read %s: %w", m.Counters, err)
			}
			for _, v := range per {
				out[p][c] += v
			}
		}
	}
	return out, nil
}

// Close releases the programs and maps; pins and attachments stay.
func (n *NodePort) Close() error { return n.objs.Close() }

// XDPMode is how the XDP program attaches.
type XDPMode string

// XDP modes of --xdp.
const (
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
	XDPOff     XDPMode = "off"
)

// DeviceLinks are the attachments of the NodePort programs to one device.
type DeviceLinks struct {
	Links []link.Link
	// NetlinkTC says the tc programs are netlink clsact filters, not links.
	NetlinkTC bool
	ifindex   int
	// XDP is the mode the XDP program runs in ("" when off); Fallback says what was
	// used instead of what was asked for, and why.
	XDP      XDPMode
	Fallback string
}

// Detach removes the attachments: unpins the links (detaching them) and removes the
// netlink tc filters.
func (d *DeviceLinks) Detach() error {
	var errs []error
	for _, l := range d.Links {
		errs = append(errs, l.Unpin())
	}
	if d.NetlinkTC {
		errs = append(errs, detachNetlinkTC(d.ifindex))
	}
	errs = append(errs, d.Close())
	return errors.Join(errs...)
}

// Close closes the links' descriptors; pinned links stay attached.
func (d *DeviceLinks) Close() error {
	var errs []error
	for _, l := range d.Links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// Attach attaches tc ingress and egress (TCX links, or netlink clsact filters per tc),
// and XDP in the given mode (native falls back to generic where the driver lacks it).
// Links are pinned under dir/links/np-IFNAME-*, so the programs keep running while the
// agent is away; an existing pinned link is updated in place, never detached first.
func (n *NodePort) Attach(ifname string, ifindex int, xdp XDPMode, tc TCAttach) (*DeviceLinks, error) {
	xdpProg, tcIn, tcOut := n.Programs()
	out := &DeviceLinks{}
	fail := func(err error) (*DeviceLinks, error) {
		out.Close()
		return nil, err
	}
	dir := LinksDir(n.dir)
	tcx := []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{{"tc-ingress", tcIn, ebpf.AttachTCXIngress}, {"tc-egress", tcOut, ebpf.AttachTCXEgress}}
	for _, a := range tcx {
		if tc == TCNetlink {
			break
		}
		l, err := pinnedLink(dir, npLinkPrefix+ifname+"-"+a.name, a.prog, func() (link.Link, error) {
			return link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.prog, Attach: a.attach})
		})
		if errors.Is(err, ebpf.ErrNotSupported) && tc == TCAuto {
			// TCX came with Linux 6.6: netlink clsact filters instead, for both.
			out.Fallback = fmt.Sprintf("no TCX on this kernel (%v); netlink tc filters on %s instead", err, ifname)
			for _, l := range out.Links {
				_ = l.Unpin()
				_ = l.Close()
			}
			out.Links, tc = nil, TCNetlink
			break
		}
		if err != nil {
			return fail(fmt.Errorf("attach %s: %w", a.name, err))
		}
		out.Links = append(out.Links, l)
	}
	if tc == TCNetlink {
		// One kind of attachment at a time: links an earlier run pinned here go.
		for _, name := range []string{"tc-ingress", "tc-egress"} {
			_ = os.Remove(filepath.Join(dir, npLinkPrefix+ifname+"-"+name))
		}
		if err := attachNetlinkTC(ifindex, tcIn, tcOut); err != nil {
			return fail(fmt.Errorf("attach tc (netlink): %w", err))
		}
		out.NetlinkTC, out.ifindex = true, ifindex
	} else if err := detachNetlinkTC(ifindex); err != nil {
		return fail(fmt.Errorf("remove an earlier run's netlink tc filters: %w", err))
	}
	if xdp == XDPOff || xdp == "" {
		return out, nil
	}
	attachXDP := func(mode XDPMode) (link.Link, error) {
		flags := link.XDPDriverMode
		if mode == XDPGeneric {
			flags = link.XDPGenericMode
		}
		return pinnedLink(dir, npLinkPrefix+ifname+"-xdp", xdpProg, func() (link.Link, error) {
			return link.AttachXDP(link.XDPOptions{Program: xdpProg, Interface: ifindex, Flags: flags})
		})
	}
	l, err := attachXDP(xdp)
	if err != nil && xdp == XDPNative {
		out.Fallback = strings.TrimPrefix(out.Fallback+"; ", "; ") + fmt.Sprintf("native XDP on %s failed (%v); generic XDP instead", ifname, err)
		xdp = XDPGeneric
		l, err = attachXDP(xdp)
	}
	if err != nil {
		return fail(fmt.Errorf("attach XDP (%s): %w", xdp, err))
	}
	out.Links = append(out.Links, l)
	out.XDP = xdp
	return out, nil
}

// npLinkPrefix starts the pin names of NodePort links: np-IFNAME-{tc-ingress,tc-egress,xdp}.
const npLinkPrefix = "np-"

// DetachNodePortExcept unpins (detaching) the NodePort links in dir of devices not in
// keep: a device dropped from --devices keeps no programs of an earlier run. It returns
// the devices detached.
func DetachNodePortExcept(dir string, keep []string) ([]string, error) {
	entries, err := os.ReadDir(LinksDir(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var gone []string
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), npLinkPrefix)
		if !ok {
			continue
		}
		i := strings.LastIndex(rest, "-tc-")
		if i < 0 {
			i = strings.LastIndex(rest, "-xdp")
		}
		if i < 0 || slices.Contains(keep, rest[:i]) {
			continue
		}
		if err := os.Remove(filepath.Join(LinksDir(dir), e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(gone, rest[:i]) {
			gone = append(gone, rest[:i])
		}
	}
	return gone, errors.Join(errs...)
}

// pinnedLink adopts the link pinned at dir/name, pointing it at prog, or makes one with
// attach and pins it.
func pinnedLink(dir, name string, prog *ebpf.Program, attach func() (link.Link, error)) (link.Link, error) {
	path := filepath.Join(dir, name)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		if err := l.Update(prog); err == nil {
			return l, nil
		}
		// A link of a device that went away, or of another kind: replace it.
		_ = l.Unpin()
		_ = l.Close()
	}
	if _, err := EnsureBPFFS(dir); err != nil {
		return nil, err
	}
	l, err := attach()
	if err != nil {
		return nil, err
	}
	if err := l.Pin(path); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("pin %s: %w", path, err)
	}
	return l, nil
}
