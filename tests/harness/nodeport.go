package harness

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
)

// NodePortLab is a small cluster seen from outside: three node namespaces, a client and
// an outsider on one switch (the env's bridge), and behind each node k a pod namespace
// pod-k on 10.201.k.0/24 and fd00:201:k::/64, routed between the nodes. The client and
// the outsider reach the node addresses on the switch, and the lab's external addresses
// (ExternalIPs) through node-1.
type NodePortLab struct {
	*Env
	Client, Outsider *netlab.Host
	Nodes            []*netlab.Host // node-1, node-2, node-3
	Pods             []*netlab.Host // pod-1 behind node-1, ...
	// cgroups are the node agents' cgroups by node name: a program run in one is a
	// program on that node (its socket-LB hooks see it).
	cgroups map[string]*netlab.Cgroup
}

// ExternalIPs are the addresses the lab's client and outsider route through node-1: for
// externalIPs and LoadBalancer ingress IPs.
var ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("192.0.2.8"), netip.MustParseAddr("192.0.2.9")}

// NewNodePortLab builds the lab; everything goes with the env at cleanup.
func NewNodePortLab(t testing.TB) *NodePortLab {
	t.Helper()
	e := NewEnv(t, "node-1", "node-2", "node-3", "outsider")
	l := &NodePortLab{Env: e, Client: e.Host("client"), Outsider: e.Host("outsider"), Nodes: e.Hosts("node-1", "node-2", "node-3")}
	for k, node := range l.Nodes {
		pod := &netlab.Host{
			Name:  fmt.Sprintf("pod-%d", k+1),
			NetNS: filepath.Join("/run/netns", fmt.Sprintf("%s-pod-%d", e.Prefix, k+1)),
			IPv4:  netip.MustParseAddr(fmt.Sprintf("10.201.%d.10", k+1)),
			IPv6:  netip.MustParseAddr(fmt.Sprintf("fd00:201:%d::10", k+1)),
		}
		if err := addPod(t, node, pod, k+1); err != nil {
			t.Fatalf("pod %s: %v", pod.Name, err)
		}
		l.Pods = append(l.Pods, pod)
	}
	for k, node := range l.Nodes {
		err := node.Do(func() error {
			for _, knob := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
				if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
					return err
				}
			}
			for j, other := range l.Nodes {
				if j == k {
					continue
				}
				if err := addRoute(fmt.Sprintf("10.201.%d.0/24", j+1), other.IPv4); err != nil {
					return err
				}
				if err := addRoute(fmt.Sprintf("fd00:201:%d::/64", j+1), other.IPv6); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", node.Name, err)
		}
	}
	for _, h := range []*netlab.Host{l.Client, l.Outsider} {
		err := h.Do(func() error {
			for _, ip := range ExternalIPs {
				if err := addRoute(netip.PrefixFrom(ip, 32).String(), l.Nodes[0].IPv4); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
	}
	return l
}

func addRoute(dst string, via netip.Addr) error {
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		return err
	}
	if err := netlink.RouteAdd(&netlink.Route{Dst: n, Gw: via.AsSlice()}); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, via, err)
	}
	return nil
}

// addPod makes pod's namespace, joined to node by a veth (vpod in the node, eth0 in the
// pod) with the node as the pod's default gateway.
func addPod(t testing.TB, node, pod *netlab.Host, k int) error {
	name := filepath.Base(pod.NetNS)
	var podNS netns.NsHandle
	err := netlab.OnLockedThread(func() error {
		var err error
		podNS, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		return err
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	})
	defer podNS.Close()
	gw4 := netip.MustParseAddr(fmt.Sprintf("10.201.%d.1", k))
	gw6 := netip.MustParseAddr(fmt.Sprintf("fd00:201:%d::1", k))
	err = node.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vpod"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(podNS))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		return upWithAddrs("vpod", netip.PrefixFrom(gw4, 24), netip.PrefixFrom(gw6, 64))
	})
	if err != nil {
		return err
	}
	return pod.Do(func() error {
		if err := upWithAddrs("lo"); err != nil {
			return err
		}
		if err := upWithAddrs("eth0", netip.PrefixFrom(pod.IPv4, 24), netip.PrefixFrom(pod.IPv6, 64)); err != nil {
			return err
		}
		for _, gw := range []netip.Addr{gw4, gw6} {
			if err := netlink.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	})
}

func upWithAddrs(ifname string, addrs ...netip.Prefix) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("%s: add %s: %w", ifname, a, err)
		}
	}
	return netlink.LinkSetUp(l)
}

// PrepareNativeXDP lets native XDP send frames to every veth of the lab: a veth
// delivers XDP_TX and XDP_REDIRECT frames only to a peer that runs XDP itself, so the
// switch ports, the client's, the outsider's and the pods' ends get a program that
// passes everything (the nodes' eth0 are the agents').
func (l *NodePortLab) PrepareNativeXDP(t testing.TB) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	attach := func(h *netlab.Host, ifnames ...string) {
		err := h.Do(func() error {
			for _, ifname := range ifnames {
				ifc, err := net.InterfaceByName(ifname)
				if err != nil {
					return err
				}
				lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
				if err != nil {
					return fmt.Errorf("%s: %w", ifname, err)
				}
				t.Cleanup(func() { lk.Close() })
			}
			return nil
		})
		if err != nil {
			t.Fatalf("XDP pass on %s: %v", h.Name, err)
		}
	}
	sw := &netlab.Host{Name: "switch", NetNS: filepath.Join("/run/netns", l.Prefix+"-sw")}
	var ports []string
	for i := range l.Env.Env.Hosts {
		ports = append(ports, fmt.Sprintf("p%d", i))
	}
	attach(sw, ports...)
	for _, h := range append([]*netlab.Host{l.Client, l.Outsider}, l.Pods...) {
		attach(h, "eth0")
		// A veth hands its packets over with the checksum left for a NIC to finish
		// (CHECKSUM_PARTIAL); XDP sees bytes, not that promise, and a frame it sends on
		// would arrive with the seed for a checksum. A real NIC delivers complete
		// checksums: so do the lab's senders, with TX checksum offload off.
		if err := h.Do(func() error { return setTxChecksum("eth0", false) }); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
	}
}

// setTxChecksum turns a device's TX checksum offload on or off (ethtool -K IF tx).
func setTxChecksum(ifname string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	const ethtoolSTXCSUM = 0x17
	val := struct{ cmd, data uint32 }{cmd: ethtoolSTXCSUM}
	if on {
		val.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = uintptr(unsafe.Pointer(&val))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("%s: set TX checksum offload: %w", ifname, errno)
	}
	return nil
}

// StartNodeAgent runs an agent inside node's network namespace, as a node's agent runs
// in the host's: its own pin dir and cgroup, the node name node.Name, NodePort devices
// eth0; metrics and readiness are read through its debug socket (its TCP listeners
// are in the node's namespace). extra flags go last.
func (l *NodePortLab) StartNodeAgent(t testing.TB, node *netlab.Host, yamlPath string, extra ...string) *Agent {
	t.Helper()
	a := l.LaunchNodeAgent(t, node, yamlPath, extra...)
	a.WaitReady(t)
	return a
}

// LaunchNodeAgent is StartNodeAgent without waiting for readiness.
func (l *NodePortLab) LaunchNodeAgent(t testing.TB, node *netlab.Host, yamlPath string, extra ...string) *Agent {
	t.Helper()
	pins := l.BPFFS + "-" + node.Name
	root, err := agent.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := netlab.NewCgroup(root, l.Prefix+"-"+node.Name)
	if err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	if cg != nil {
		if l.cgroups == nil {
			l.cgroups = map[string]*netlab.Cgroup{}
		}
		l.cgroups[node.Name] = cg
		t.Cleanup(func() {
			if err := bpf.Cleanup(pins); err != nil {
				t.Error(err)
			}
			if err := cg.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	debug := filepath.Join(os.TempDir(), l.Prefix+"-"+node.Name+"-debug.sock")
	args := append([]string{"--net=" + node.NetNS, "--", Binary(t), "agent", "--source", "file:" + yamlPath,
		"--cgroup", filepath.Join(root, l.Prefix+"-"+node.Name), "--bpffs", pins, "--node-name", node.Name,
		"--http-listen", "", "--xds-listen", "", "--debug-listen", "unix:" + debug, "--devices", "eth0"}, extra...)
	a := &Agent{cmd: exec.Command("nsenter", args...), Debug: debug, viaDebug: true, log: &syncBuffer{}, done: make(chan error, 1)}
	a.startAndReap(t)
	return a
}

// NodeCLI runs a sockmesh verb on node, in its network namespace (where the devices
// with its tc filters are) and on its pins and cgroup, and returns its output.
func (l *NodePortLab) NodeCLI(t testing.TB, node *netlab.Host, args ...string) string {
	t.Helper()
	root, err := agent.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	args = append(args, "--bpffs", l.BPFFS+"-"+node.Name, "--cgroup", filepath.Join(root, l.Prefix+"-"+node.Name))
	out, err := exec.Command("nsenter", append([]string{"--net=" + node.NetNS, "--", Binary(t)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("sockmesh %v on %s: %v\n%s", args, node.Name, err, out)
	}
	return string(out)
}

// RunOnNode runs a program in h's network namespace as a process on node: in node's
// agent cgroup, where its socket-LB hooks are attached.
func (l *NodePortLab) RunOnNode(t testing.TB, node, h *netlab.Host, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	cg := l.cgroups[node.Name]
	if cg == nil {
		t.Fatalf("no agent was started on %s", node.Name)
	}
	e := *l.Env
	e.Cgroup = cg
	return e.RunProgramE(t, timeout, h, name, args...)
}
