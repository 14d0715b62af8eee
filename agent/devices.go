package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// deviceManager attaches the NodePort programs to the --devices and keeps the maps
// that name the node's NodePort addresses (where NodePorts answer, what SNAT rewrites
// to) in step with the kernel's links and addresses. A device that is missing or will
// not take the programs is an error naming it; the others are served, and the next
// sync tries again.
type deviceManager struct {
	np    *bpf.NodePort
	maps  bpf.NodePortMaps
	names []string
	xdp   bpf.XDPMode
	tc    bpf.TCAttach
	log   *slog.Logger
	obs   lbmap.Observer // map writes, for metrics; set before the first sync

	mu       sync.Mutex
	attached map[string]*attachedDevice
	errs     []model.ObjectError
}

type attachedDevice struct {
	ifindex int
	links   *bpf.DeviceLinks
}

func newDeviceManager(np *bpf.NodePort, names []string, xdp bpf.XDPMode, tc bpf.TCAttach, log *slog.Logger) *deviceManager {
	return &deviceManager{np: np, maps: np.Maps(), names: names, xdp: xdp, tc: tc, log: log, attached: map[string]*attachedDevice{}}
}

// Errors are the device errors of the last sync.
func (d *deviceManager) Errors() []model.ObjectError {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.errs)
}

// sync attaches to devices that appeared (or came back with another ifindex) and
// rewrites the address maps to the devices' addresses now.
func (d *deviceManager) sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []model.ObjectError
	// complete says every device's addresses were read: only then may entries that
	// are not wanted go (a failed read keeps what the last one wrote).
	complete := true
	addrs := map[bpf.NPLbAddr]uint32{}
	devs := map[uint32]bpf.NPDevice{}
	for _, name := range d.names {
		l, err := netlink.LinkByName(name)
		if err != nil {
			errs = append(errs, deviceError(name, "device_not_found", fmt.Sprintf("no such network device (%v); NodePorts are not served on it until it appears", err)))
			d.detach(name)
			continue
		}
		ifindex := l.Attrs().Index
		if cur := d.attached[name]; cur == nil || cur.ifindex != ifindex {
			d.detach(name)
			links, err := d.np.Attach(name, ifindex, d.xdp, d.tc)
			if err != nil {
				errs = append(errs, deviceError(name, "device_attach", fmt.Sprintf("%v; NodePorts are not served on it", err)))
				continue
			}
			if links.Fallback != "" {
				d.log.Warn("NodePort attach fallback", "device", name, "detail", links.Fallback)
			}
			d.log.Info("NodePort programs attached", "device", name, "ifindex", ifindex, "xdp", string(links.XDP), "netlinkTC", links.NetlinkTC)
			d.attached[name] = &attachedDevice{ifindex: ifindex, links: links}
		}
		list, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			errs = append(errs, deviceError(name, "device_addresses", fmt.Sprintf("read addresses: %v; its last addresses are kept", err)))
			complete = false
			continue
		}
		var dev bpf.NPDevice
		for _, a := range list {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || ip.IsLinkLocalUnicast() {
				continue // NodePorts are not served on link-local addresses, as kube-proxy's
			}
			ip = ip.Unmap()
			key, fam := bpf.AddrFrom(ip)
			addrs[bpf.NPLbAddr(key)] = uint32(ifindex)
			// SNAT uses the device's first address of each family.
			if fam == bpf.FamilyIPv4 && dev.Addr4 == (bpf.NPLbAddr{}) {
				dev.Addr4 = bpf.NPLbAddr(key)
			} else if fam == bpf.FamilyIPv6 && dev.Addr6 == (bpf.NPLbAddr{}) {
				dev.Addr6 = bpf.NPLbAddr(key)
			}
		}
		devs[uint32(ifindex)] = dev
	}
	d.errs = errs
	for _, e := range errs {
		d.log.Error("NodePort device", "device", e.Name, "reason", e.Reason, "err", e.Message)
	}
	return errors.Join(replaceMap(d.maps.Addrs, addrs, complete, d.obs), replaceMap(d.maps.Devices, devs, complete, d.obs))
}

// detach forgets a device's attachments and removes them, so a device that is gone or
// renumbered keeps no programs of ours.
func (d *deviceManager) detach(name string) {
	cur := d.attached[name]
	if cur == nil {
		return
	}
	_ = cur.links.Detach()
	delete(d.attached, name)
}

// watch re-syncs when links or addresses change, until done closes.
func (d *deviceManager) watch(done <-chan struct{}) {
	links := make(chan netlink.LinkUpdate, 16)
	addrs := make(chan netlink.AddrUpdate, 16)
	if err := netlink.LinkSubscribe(links, done); err != nil {
		d.log.Error("NodePort devices: no link notifications; devices are re-read at map repair", "err", err)
	}
	if err := netlink.AddrSubscribe(addrs, done); err != nil {
		d.log.Error("NodePort devices: no address notifications; addresses are re-read at map repair", "err", err)
	}
	for {
		select {
		case <-done:
			return
		case _, ok := <-links:
			if !ok {
				links = nil
				continue
			}
		case _, ok := <-addrs:
			if !ok {
				addrs = nil
				continue
			}
		}
		if err := d.sync(); err != nil {
			d.log.Error("NodePort devices: sync", "err", err)
		}
	}
}

// Close closes the links' descriptors; the pinned links keep the programs attached
// while the agent is away.
func (d *deviceManager) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.attached {
		_ = a.links.Close()
	}
}

// KindDevice is the kind of errors about a --devices network device.
const KindDevice = "Device"

func deviceError(name, reason, msg string) model.ObjectError {
	return model.ObjectError{Kind: KindDevice, Name: name, Reason: reason, Message: msg}
}

// replaceMap makes a small kernel map hold want, writing only the entries that differ
// (a restart over the same devices writes nothing), and, with prune, nothing else; it
// reports what it wrote and removed to obs.
func replaceMap[K comparable, V comparable](m *ebpf.Map, want map[K]V, prune bool, obs lbmap.Observer) error {
	var (
		k   K
		v   V
		cur = map[K]V{}
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		cur[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", m, err)
	}
	name := m.String()
	if info, err := m.Info(); err == nil {
		name = info.Name
	}
	written, removed := 0, 0
	var err error
	for k, v := range want {
		if old, ok := cur[k]; ok && old == v {
			continue
		}
		if err = m.Put(k, v); err != nil {
			err = fmt.Errorf("write %s: %w", name, err)
			break
		}
		written++
	}
	if err == nil && prune {
		for k := range cur {
			if _, ok := want[k]; ok {
				continue
			}
			if derr := m.Delete(k); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
				err = fmt.Errorf("delete from %s: %w", name, derr)
				break
			}
			removed++
		}
	}
	if obs != nil {
		if written > 0 || err != nil {
			obs.MapOp(name, "update", written, err)
		}
		if removed > 0 {
			obs.MapOp(name, "delete", removed, nil)
		}
	}
	return err
}

// npConfig is the datapath's NodePort settings: SNAT ports in Linux's default
// ephemeral range, Cilium's conntrack timeouts (TCP 6h, closing 10s, UDP 60s).
func npConfig(cfg *Config) bpf.NPConfig {
	return bpf.NPConfig{SnatPortMin: 32768, SnatPortMax: 60999, TcpTimeout: 21600, TcpClosingTimeout: 10, UdpTimeout: 60,
		Mode: cfg.npMode(), MaglevSeed: cfg.MaglevSeed}
}

var npPacketsDesc = prometheus.NewDesc("sockmesh_nodeport_packets_total",
	"Packets the NodePort programs handled, by program (xdp, tc_ingress, tc_egress) and action or drop reason.",
	[]string{"program", "action"}, nil)

// nodePortCollector reads the NodePort counters at scrape.
type nodePortCollector struct{ maps bpf.NodePortMaps }

func (c nodePortCollector) Describe(ch chan<- *prometheus.Desc) { ch <- npPacketsDesc }

func (c nodePortCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.maps.NPCounterValues()
	if err != nil {
		return
	}
	for p, row := range counts {
		for i, name := range bpf.NPCounterNames {
			if name != "" {
				ch <- prometheus.MustNewConstMetric(npPacketsDesc, prometheus.CounterValue, float64(row[i]), bpf.NPProgNames[p], name)
			}
		}
	}
}
