package bpf_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// npFixture is the NodePort programs loaded into a test's pins, run with
// BPF_PROG_TEST_RUN inside a node namespace whose routes and neighbours the FIB lookups
// see: the node (eth0, .11) reaches the client (.10) and a made-up backend address on
// its subnet.
type npFixture struct {
	t       testing.TB
	node    *netlab.Host
	ifindex int
	lb      *bpf.Datapath
	np      *bpf.NodePort
	maps    bpf.NodePortMaps
	nextID  uint32
}

var (
	npClient4  = netip.MustParseAddr("10.200.0.10")
	npBackend4 = netip.MustParseAddr("10.200.0.50")
	npClient6  = netip.MustParseAddr("fd00:200::a")
	npBackend6 = netip.MustParseAddr("fd00:200::50")
	npExtIP4   = netip.MustParseAddr("192.0.2.7")
	clientMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	backendMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x50}
)

func newNPFixture(t testing.TB) *npFixture {
	t.Helper()
	env := harness.NewEnv(t, "node")
	f := &npFixture{t: t, node: env.Host("node"), nextID: 1}
	err := f.node.Do(func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		f.ifindex = eth.Attrs().Index
		// A node forwards: the FIB lookups of the programs refuse otherwise.
		for _, knob := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		for ip, mac := range map[netip.Addr]net.HardwareAddr{npClient4: clientMAC, npBackend4: backendMAC, npClient6: clientMAC, npBackend6: backendMAC} {
			fam := unix.AF_INET
			if ip.Is6() {
				fam = unix.AF_INET6
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: f.ifindex, Family: fam, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.lb, err = bpf.Load(env.BPFFS, bpf.DefaultLimits); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.lb.Close() })
	if f.np, err = bpf.LoadNodePort(env.BPFFS, bpf.DefaultLimits); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.np.Close() })
	f.maps = f.np.Maps()
	node4, _ := bpf.AddrFrom(f.node.IPv4)
	node6, _ := bpf.AddrFrom(f.node.IPv6)
	f.put(f.maps.Devices, uint32(f.ifindex), bpf.NPDevice{Addr4: npAddr(node4), Addr6: npAddr(node6)})
	f.put(f.maps.Addrs, npAddr(node4), uint32(f.ifindex))
	f.put(f.maps.Addrs, npAddr(node6), uint32(f.ifindex))
	return f
}

func npAddr(a bpf.LbAddr) bpf.NPLbAddr { return bpf.NPLbAddr(a) }

func (f *npFixture) put(m *ebpf.Map, k, v any) {
	f.t.Helper()
	if err := m.Put(k, v); err != nil {
		f.t.Fatalf("put %s: %v", m, err)
	}
}

// frontend programs a frontend (the zero address for a NodePort) with one backend;
// flags without SvcFlagExternal make it a cluster IP's.
func (f *npFixture) frontend(vip netip.Addr, family uint8, port uint16, proto uint8, backend netip.AddrPort, flags uint32) uint32 {
	f.t.Helper()
	id := f.nextID
	f.nextID++
	var key bpf.SvcKey
	if vip.IsValid() {
		key.Vip, _ = bpf.AddrFrom(vip)
	}
	key.Port, key.Proto, key.Family = bpf.PortToNet(port), proto, family
	f.put(f.lb.Maps().SmServices, key, bpf.SvcValue{Id: id, Count: 1, Flags: flags})
	lbm := f.lb.Maps()
	f.put(lbm.SmSlots, bpf.SlotKey{SvcId: id, Slot: 1}, id)
	be, fam := bpf.AddrFrom(backend.Addr())
	f.put(lbm.SmBackends, id, bpf.BackendValue{Addr: be, Port: bpf.PortToNet(backend.Port()), Proto: proto, Family: fam, SvcId: id, Slots: 1})
	return id
}

// packet is a crafted frame: gopacket lays it out and computes its checksums.
type packet struct {
	src, dst  netip.AddrPort
	udp       bool
	ipOptions bool // an IPv4 header with a router-alert option (IHL 6)
	noUDPSum  bool // an IPv4 UDP datagram without checksum
	tcpFlags  string
}

func (p packet) bytes(t testing.TB) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}}
	var ip gopacket.NetworkLayer
	var ipLayer gopacket.SerializableLayer
	proto := layers.IPProtocolTCP
	if p.udp {
		proto = layers.IPProtocolUDP
	}
	if p.src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		v4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: p.src.Addr().AsSlice(), DstIP: p.dst.Addr().AsSlice(), Id: 4242}
		if p.ipOptions {
			v4.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		}
		ip, ipLayer = v4, v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: p.src.Addr().AsSlice(), DstIP: p.dst.Addr().AsSlice()}
		ip, ipLayer = v6, v6
	}
	payload := gopacket.Payload([]byte("sockmesh nodeport test payload"))
	var l4 gopacket.SerializableLayer
	if p.udp {
		u := &layers.UDP{SrcPort: layers.UDPPort(p.src.Port()), DstPort: layers.UDPPort(p.dst.Port())}
		_ = u.SetNetworkLayerForChecksum(ip)
		l4 = u
	} else {
		tc := &layers.TCP{SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()), Seq: 1000, Window: 64000}
		for _, c := range p.tcpFlags {
			switch c {
			case 'S':
				tc.SYN = true
			case 'A':
				tc.ACK = true
			case 'F':
				tc.FIN = true
			case 'R':
				tc.RST = true
			}
		}
		_ = tc.SetNetworkLayerForChecksum(ip)
		l4 = tc
	}
	b := serialize(t, eth, ipLayer, l4, payload)
	if p.noUDPSum {
		off := 14 + 20 + 6
		if p.ipOptions {
			off += 4
		}
		binary.BigEndian.PutUint16(b[off:], 0)
	}
	return b
}

// serialize lays layers out as gopacket does, lengths and checksums computed.
func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checksumOf has gopacket compute the 16-bit checksum at offset at of l serialized over
// payload (a pseudo-header, if any, set on l already).
func checksumOf(t testing.TB, l gopacket.SerializableLayer, payload []byte, at int) uint16 {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, l, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint16(buf.Bytes()[at:])
}

// toNode is the Ethernet header of a frame from the backend's side to the node.
func toNode(etherType layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: backendMAC, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}, EthernetType: etherType}
}

// result is a frame the program handed back, read by gopacket.
type result struct {
	action     uint32
	src, dst   netip.AddrPort
	ttl        uint8
	dstMAC     net.HardwareAddr
	l4Checksum uint16
	out        []byte
}

// run runs prog on the frame in the node namespace, as if it came in on eth0.
func (f *npFixture) run(prog *ebpf.Program, frame []byte, xdp bool) result {
	f.t.Helper()
	ret, out := f.exec(prog, frame, xdp)
	return parseResult(f.t, ret, out)
}

// exec runs prog on the frame and returns the action and the frame as it left.
func (f *npFixture) exec(prog *ebpf.Program, frame []byte, xdp bool) (uint32, []byte) {
	f.t.Helper()
	var ret uint32
	out := make([]byte, len(frame)+256)
	err := f.node.Do(func() error {
		opts := &ebpf.RunOptions{Data: frame, DataOut: out}
		if xdp {
			opts.Context = [6]uint32{1: uint32(len(frame)), 3: uint32(f.ifindex)} // xdp_md: data_end, ingress_ifindex
		} else {
			opts.Context = [11]uint32{10: uint32(f.ifindex)} // __sk_buff.ifindex
		}
		var err error
		ret, err = prog.Run(opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		f.t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, out
}

func parseResult(t testing.TB, action uint32, out []byte) result {
	t.Helper()
	r := result{action: action, out: out}
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	if e := pkt.ErrorLayer(); e != nil {
		t.Fatalf("gopacket cannot parse the program's output: %v", e.Error())
	}
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	r.dstMAC = eth.DstMAC
	var srcIP, dstIP net.IP
	var netLayer gopacket.NetworkLayer
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		srcIP, dstIP, r.ttl, netLayer = ip.SrcIP, ip.DstIP, ip.TTL, ip
		verifyIPv4Checksum(t, ip)
	case *layers.IPv6:
		srcIP, dstIP, r.ttl, netLayer = ip.SrcIP, ip.DstIP, ip.HopLimit, ip
	}
	sa, _ := netip.AddrFromSlice(srcIP)
	da, _ := netip.AddrFromSlice(dstIP)
	switch l4 := pkt.TransportLayer().(type) {
	case *layers.TCP:
		r.src, r.dst, r.l4Checksum = netip.AddrPortFrom(sa.Unmap(), uint16(l4.SrcPort)), netip.AddrPortFrom(da.Unmap(), uint16(l4.DstPort)), l4.Checksum
		verifyL4Checksum(t, netLayer, l4, l4.Checksum)
	case *layers.UDP:
		r.src, r.dst, r.l4Checksum = netip.AddrPortFrom(sa.Unmap(), uint16(l4.SrcPort)), netip.AddrPortFrom(da.Unmap(), uint16(l4.DstPort)), l4.Checksum
		if l4.Checksum != 0 {
			verifyL4Checksum(t, netLayer, l4, l4.Checksum)
		}
	default:
		t.Fatalf("no TCP or UDP in the output")
	}
	return r
}

// verifyIPv4Checksum has gopacket compute the header checksum of the header as the
// program left it and compares.
func verifyIPv4Checksum(t testing.TB, ip *layers.IPv4) {
	t.Helper()
	got := ip.Checksum
	cp := *ip
	buf := gopacket.NewSerializeBuffer()
	if err := cp.SerializeTo(buf, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
		t.Fatal(err)
	}
	if want := binary.BigEndian.Uint16(buf.Bytes()[10:]); got != want {
		t.Errorf("IPv4 header checksum %#04x, gopacket computes %#04x", got, want)
	}
}

// verifyL4Checksum has gopacket compute the TCP or UDP checksum of the segment as the
// program left it (pseudo-header from the rewritten IP header) and compares.
func verifyL4Checksum(t testing.TB, ip gopacket.NetworkLayer, l4 gopacket.Layer, got uint16) {
	t.Helper()
	var want uint16
	switch l := l4.(type) {
	case *layers.TCP:
		cp := *l
		_ = cp.SetNetworkLayerForChecksum(ip)
		want = checksumOf(t, &cp, l.Payload, 16)
	case *layers.UDP:
		cp := *l
		_ = cp.SetNetworkLayerForChecksum(ip)
		want = checksumOf(t, &cp, l.Payload, 6)
	}
	if got != want {
		t.Errorf("%v checksum %#04x, gopacket computes %#04x", l4.LayerType(), got, want)
	}
}

// counters names the non-zero NodePort counters, for failure messages.
func (f *npFixture) counters() map[string]uint64 {
	counts, err := f.maps.NPCounterValues()
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]uint64{}
	for p, row := range counts {
		for c, n := range row[:bpf.NPCounters] {
			if n != 0 {
				out[bpf.NPProgNames[p]+"/"+bpf.NPCounterNames[c]] = n
			}
		}
	}
	return out
}

const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
	xdpDrop       = 1
	xdpPass       = 2
	xdpTX         = 3
)

func TestNodePortSNATRewritesBothWaysWithValidChecksums(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	cases := []struct {
		name            string
		client, backend netip.Addr
		family          uint8
		pkt             packet
	}{
		{name: "tcp4", client: npClient4, backend: npBackend4, family: bpf.FamilyIPv4, pkt: packet{tcpFlags: "S"}},
		{name: "udp4", client: npClient4, backend: npBackend4, family: bpf.FamilyIPv4, pkt: packet{udp: true}},
		{name: "udp4-no-checksum", client: npClient4, backend: npBackend4, family: bpf.FamilyIPv4, pkt: packet{udp: true, noUDPSum: true}},
		{name: "tcp4-ip-options", client: npClient4, backend: npBackend4, family: bpf.FamilyIPv4, pkt: packet{tcpFlags: "S", ipOptions: true}},
		{name: "tcp6", client: npClient6, backend: npBackend6, family: bpf.FamilyIPv6, pkt: packet{tcpFlags: "S"}},
		{name: "udp6", client: npClient6, backend: npBackend6, family: bpf.FamilyIPv6, pkt: packet{udp: true}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			proto := uint8(unix.IPPROTO_TCP)
			if tc.pkt.udp {
				proto = unix.IPPROTO_UDP
			}
			nodePort := uint16(30000 + i)
			node := f.node.IPv4
			if tc.family == bpf.FamilyIPv6 {
				node = f.node.IPv6
			}
			backend := netip.AddrPortFrom(tc.backend, 8080)
			f.frontend(netip.Addr{}, tc.family, nodePort, proto, backend, bpf.SvcFlagExternal)

			in := tc.pkt
			in.src, in.dst = netip.AddrPortFrom(tc.client, 40000), netip.AddrPortFrom(node, nodePort)
			fwd := f.run(tcIn, in.bytes(t), false)
			if fwd.action != tcActRedirect {
				t.Fatalf("forward: tc action %d, want redirect (counters %v)", fwd.action, f.counters())
			}
			if fwd.dst != backend || fwd.src.Addr() != node || fwd.ttl != 63 {
				t.Fatalf("forward: %v -> %v ttl %d, want %v -> %v ttl 63", fwd.src, fwd.dst, fwd.ttl, node, backend)
			}
			if p := fwd.src.Port(); p < 32768 || p > 60999 {
				t.Fatalf("forward: SNAT source port %d outside the default range", p)
			}
			if tc.pkt.noUDPSum && fwd.l4Checksum != 0 {
				t.Fatalf("a datagram without checksum got one: %#04x", fwd.l4Checksum)
			}

			// The backend's reply to the SNAT address becomes the frontend's reply.
			back := packet{udp: tc.pkt.udp, tcpFlags: "SA", ipOptions: tc.pkt.ipOptions, noUDPSum: tc.pkt.noUDPSum}
			back.src, back.dst = backend, fwd.src
			rep := f.run(tcIn, back.bytes(t), false)
			if rep.action != tcActRedirect || rep.src != in.dst || rep.dst != in.src {
				t.Fatalf("reply: action %d %v -> %v, want redirect %v -> %v", rep.action, rep.src, rep.dst, in.dst, in.src)
			}

			// The next packet of the flow keeps its translation.
			in.tcpFlags = "A"
			again := f.run(tcIn, in.bytes(t), false)
			if again.src != fwd.src || again.dst != fwd.dst {
				t.Fatalf("second packet: %v -> %v, first was %v -> %v", again.src, again.dst, fwd.src, fwd.dst)
			}
		})
	}
	counts, err := f.maps.NPCounterValues()
	if err != nil {
		t.Fatal(err)
	}
	row := counts[bpf.NPProgTCIngress]
	if row[bpf.NPNewFlow] != uint64(len(cases)) || row[bpf.NPReply] != uint64(len(cases)) || row[bpf.NPForward] != uint64(len(cases)) {
		t.Fatalf("tc ingress counters new/reply/forward %d/%d/%d, want %d each", row[bpf.NPNewFlow], row[bpf.NPReply], row[bpf.NPForward], len(cases))
	}
}

func TestNodePortXDPTranslatesAndSendsBack(t *testing.T) {
	f := newNPFixture(t)
	xdp, tcIn, _ := f.np.Programs()
	backend := netip.AddrPortFrom(npBackend4, 8080)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	in := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S", ipOptions: true}
	r := f.run(xdp, in.bytes(t), true)
	// Client and backend are both behind eth0: the frame goes back out where it came.
	if r.action != xdpTX || r.dst != backend || r.src.Addr() != f.node.IPv4 || r.ttl != 63 {
		t.Fatalf("XDP: action %d %v -> %v ttl %d (counters %v)", r.action, r.src, r.dst, r.ttl, f.counters())
	}
	if r.dstMAC.String() != backendMAC.String() {
		t.Fatalf("XDP: destination MAC %v, want the backend's neighbour entry %v", r.dstMAC, backendMAC)
	}
	// tc sees the same flow the XDP program recorded.
	in.tcpFlags = "A"
	again := f.run(tcIn, in.bytes(t), false)
	if again.action != tcActRedirect || again.src != r.src || again.dst != r.dst {
		t.Fatalf("tc after XDP: action %d %v -> %v, XDP gave %v -> %v", again.action, again.src, again.dst, r.src, r.dst)
	}
}

func TestNodePortLeavesOtherTrafficToTheStack(t *testing.T) {
	f := newNPFixture(t)
	xdp, tcIn, tcOut := f.np.Programs()
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, netip.AddrPortFrom(npBackend4, 8080), bpf.SvcFlagExternal)
	clusterIP := netip.MustParseAddr("10.96.0.10")
	f.frontend(clusterIP, bpf.FamilyIPv4, 80, unix.IPPROTO_TCP, netip.AddrPortFrom(npBackend4, 8080), 0)
	for _, p := range []packet{
		{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(clusterIP, 80), tcpFlags: "S"},     // a cluster IP is socket-LB's
		{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 22), tcpFlags: "S"},   // a port that is no NodePort
		{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(npBackend4, 30080), tcpFlags: "S"}, // not a node address
		{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30080), udp: true},    // TCP-only NodePort
	} {
		frame := p.bytes(t)
		if action, out := f.exec(xdp, frame, true); action != xdpPass || string(out) != string(frame) {
			t.Errorf("XDP changed or dropped %v -> %v (action %d)", p.src, p.dst, action)
		}
		for _, prog := range []*ebpf.Program{tcIn, tcOut} {
			if action, out := f.exec(prog, frame, false); action != tcActOK || string(out) != string(frame) {
				t.Errorf("tc changed or dropped %v -> %v (action %d)", p.src, p.dst, action)
			}
		}
	}
	// A later fragment of a datagram whose first fragment was never seen.
	later := udpFragments(t, netip.AddrPortFrom(npClient4, 40000), netip.AddrPortFrom(f.node.IPv4, 30080), 99)[1]
	for _, prog := range []*ebpf.Program{tcIn, tcOut} {
		if action, out := f.exec(prog, later, false); action != tcActOK || string(out) != string(later) {
			t.Errorf("tc changed or dropped an unknown datagram's later fragment (action %d)", action)
		}
	}
}

// udpFragments builds a UDP datagram of 100 payload bytes with its checksum and cuts
// it in two IPv4 fragments (id id): UDP header and 56 bytes, then the other 44.
func udpFragments(t testing.TB, src, dst netip.AddrPort, id uint16) [2][]byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), Id: id}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	payload := make([]byte, 100)
	for i := range payload {
		payload[i] = byte(i)
	}
	l4 := serialize(t, udp, gopacket.Payload(payload))
	var out [2][]byte
	for i, part := range [][]byte{l4[:64], l4[64:]} {
		frag := *ip
		if i == 0 {
			frag.Flags = layers.IPv4MoreFragments
		} else {
			frag.FragOffset = 64 / 8
		}
		out[i] = serialize(t, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}, EthernetType: layers.EthernetTypeIPv4},
			&frag, gopacket.Payload(part))
	}
	return out
}

// TestNodePortTranslatesFragmentsOfADatagram: the first fragment is translated and its
// ports recorded; the later one, without an L4 header, gets the same addresses. The
// datagram put back together has a UDP checksum gopacket accepts.
func TestNodePortTranslatesFragmentsOfADatagram(t *testing.T) {
	f := newNPFixture(t)
	xdp, tcIn, _ := f.np.Programs()
	backend := netip.AddrPortFrom(npBackend4, 9053)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30053, unix.IPPROTO_UDP, backend, bpf.SvcFlagExternal)
	frags := udpFragments(t, netip.AddrPortFrom(npClient4, 40000), netip.AddrPortFrom(f.node.IPv4, 30053), 4242)
	if action, _ := f.exec(xdp, frags[0], true); action != xdpPass {
		t.Fatalf("XDP on a fragment: action %d, want it left to tc", action)
	}
	var ips [2]*layers.IPv4
	var l4 []byte
	for i, frame := range frags {
		action, out := f.exec(tcIn, frame, false)
		if action != tcActRedirect {
			t.Fatalf("fragment %d: action %d, want redirect (counters %v)", i, action, f.counters())
		}
		ip := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		verifyIPv4Checksum(t, ip)
		if dst, _ := netip.AddrFromSlice(ip.DstIP); dst != backend.Addr() || ip.TTL != 63 {
			t.Fatalf("fragment %d to %v ttl %d, want the backend %v", i, dst, ip.TTL, backend.Addr())
		}
		if src, _ := netip.AddrFromSlice(ip.SrcIP); src != f.node.IPv4 {
			t.Fatalf("fragment %d from %v, want SNAT to %v", i, src, f.node.IPv4)
		}
		ips[i] = ip
		l4 = append(l4, ip.Payload...)
	}
	var udp layers.UDP
	if err := udp.DecodeFromBytes(l4, gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	if udp.DstPort != layers.UDPPort(backend.Port()) {
		t.Fatalf("reassembled datagram to port %d, want %d", udp.DstPort, backend.Port())
	}
	whole := *ips[0]
	whole.Flags, whole.FragOffset = 0, 0
	verifyL4Checksum(t, &whole, &udp, udp.Checksum)
}

func TestNodePortLocalBackendKeepsClientAndEgressTranslatesBack(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, tcOut := f.np.Programs()
	backend := netip.AddrPortFrom(npBackend4, 8080)
	be, _ := bpf.AddrFrom(npBackend4)
	f.put(f.lb.Maps().SmLocal, be, uint8(1))
	f.frontend(npExtIP4, bpf.FamilyIPv4, 80, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	in := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(npExtIP4, 80), tcpFlags: "S"}
	r := f.run(tcIn, in.bytes(t), false)
	if r.action != tcActRedirect || r.src != in.src || r.dst != backend {
		t.Fatalf("to a local backend: action %d %v -> %v, want %v -> %v (counters %v)", r.action, r.src, r.dst, in.src, backend, f.counters())
	}
	back := packet{src: backend, dst: in.src, tcpFlags: "SA"}
	rep := f.run(tcOut, back.bytes(t), false)
	if rep.action != tcActOK || rep.src != in.dst || rep.dst != in.src || rep.ttl != 64 {
		t.Fatalf("egress reply: action %d %v -> %v ttl %d, want %v -> %v ttl 64", rep.action, rep.src, rep.dst, rep.ttl, in.dst, in.src)
	}
}

func TestNodePortDropsOutsideSourceRangesAndWithoutBackends(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	id := f.frontend(npExtIP4, bpf.FamilyIPv4, 80, unix.IPPROTO_TCP, netip.AddrPortFrom(npBackend4, 8080), bpf.SvcFlagExternal|bpf.SvcFlagSourceRanges)
	allowed, _ := bpf.AddrFrom(netip.MustParseAddr("10.200.0.0"))
	f.put(f.maps.Ranges, bpf.NPRangeKey{Prefixlen: 32 + 28, SvcId: id, Addr: npAddr(allowed)}, uint8(1))
	inside := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(npExtIP4, 80), tcpFlags: "S"}
	if r := f.run(tcIn, inside.bytes(t), false); r.action != tcActRedirect {
		t.Fatalf("a client inside the range: action %d (counters %v)", r.action, f.counters())
	}
	outside := inside
	outside.src = netip.AddrPortFrom(netip.MustParseAddr("10.200.0.77"), 40000)
	if r := f.run(tcIn, outside.bytes(t), false); r.action != tcActShot {
		t.Fatalf("a client outside the range: action %d, want drop", r.action)
	}
	var empty bpf.SvcKey
	empty.Port, empty.Proto, empty.Family = bpf.PortToNet(30090), unix.IPPROTO_UDP, bpf.FamilyIPv4
	f.put(f.lb.Maps().SmServices, empty, bpf.SvcValue{Id: 99, Flags: bpf.SvcFlagExternal})
	none := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30090), udp: true}
	if r := f.run(tcIn, none.bytes(t), false); r.action != tcActShot {
		t.Fatalf("a NodePort without backends: action %d, want drop", r.action)
	}
	c := f.counters()
	if c["tc_ingress/drop_source_range"] != 1 || c["tc_ingress/drop_no_backend"] != 1 {
		t.Fatalf("drop counters %v", c)
	}
}

func TestNodePortSNATPortsDoNotCollide(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	// Two source ports to hand out: two clients get one each, the third finds none.
	f.put(f.maps.Config, uint32(0), bpf.NPConfig{SnatPortMin: 40000, SnatPortMax: 40001})
	backend := netip.AddrPortFrom(npBackend4, 8080)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	seen := map[uint16]bool{}
	for i := 0; i < 3; i++ {
		in := packet{src: netip.AddrPortFrom(npClient4, uint16(50000+i)), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S"}
		r := f.run(tcIn, in.bytes(t), false)
		if i < 2 {
			if r.action != tcActRedirect || seen[r.src.Port()] {
				t.Fatalf("client %d: action %d port %d (taken: %v)", i, r.action, r.src.Port(), seen)
			}
			seen[r.src.Port()] = true
			continue
		}
		if r.action != tcActShot || f.counters()["tc_ingress/drop_no_port"] != 1 {
			t.Fatalf("third client with no port left: action %d counters %v", r.action, f.counters())
		}
	}
}

// TestNodePortDSRCarriesTheFrontendToTheBackendsNode plays both nodes of a DSR flow on
// one set of maps: the entry node keeps the client's address and adds the frontend as
// an IPv4 option to the SYN (checksums verified by gopacket, the option parsed by it);
// the backend's node learns the flow from that option, and its egress gives the
// backend's reply the frontend as source, straight to the client.
func TestNodePortDSRCarriesTheFrontendToTheBackendsNode(t *testing.T) {
	f := newNPFixture(t)
	xdp, tcIn, tcOut := f.np.Programs()
	f.put(f.maps.Config, uint32(0), bpf.NPConfig{Mode: bpf.NPModeDSR})
	backend := netip.AddrPortFrom(npBackend4, 8080)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	syn := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S"}

	// XDP cannot grow the SYN: it leaves it to tc untouched.
	if action, out := f.exec(xdp, syn.bytes(t), true); action != xdpPass || string(out) != string(syn.bytes(t)) {
		t.Fatalf("XDP on a DSR SYN: action %d, changed %v", action, string(out) != string(syn.bytes(t)))
	}
	r := f.run(tcIn, syn.bytes(t), false)
	if r.action != tcActRedirect || r.src != syn.src || r.dst != backend {
		t.Fatalf("DSR forward: action %d %v -> %v, want the client to %v (counters %v)", r.action, r.src, r.dst, backend, f.counters())
	}
	ip := gopacket.NewPacket(r.out, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip.IHL != 7 || len(ip.Options) == 0 || ip.Options[0].OptionType != 0x9a || ip.Options[0].OptionLength != 8 {
		t.Fatalf("DSR SYN: IHL %d options %+v, want the 8-byte option 0x9a", ip.IHL, ip.Options)
	}
	opt := ip.Options[0].OptionData
	if port, addr := binary.BigEndian.Uint16(opt[:2]), netip.AddrFrom4([4]byte(opt[2:6])); port != 30080 || addr != f.node.IPv4 {
		t.Fatalf("DSR option carries %v:%d, want the frontend %v:30080", addr, port, f.node.IPv4)
	}
	// The next packets of the flow go without the option, through XDP too.
	ack := syn
	ack.tcpFlags = "A"
	if r := f.run(xdp, ack.bytes(t), true); r.action != xdpTX || r.src != syn.src || r.dst != backend {
		t.Fatalf("DSR ACK in XDP: action %d %v -> %v", r.action, r.src, r.dst)
	}

	// The backend's node: the backend is local there.
	be, _ := bpf.AddrFrom(npBackend4)
	f.put(f.lb.Maps().SmLocal, be, uint8(1))
	if action, _ := f.exec(tcIn, r.out, false); action != tcActOK || f.counters()["tc_ingress/dsr_learned"] != 1 {
		t.Fatalf("backend's node on the DSR SYN: action %d counters %v", action, f.counters())
	}
	synAck := packet{src: backend, dst: syn.src, tcpFlags: "SA"}
	rep := f.run(tcOut, synAck.bytes(t), false)
	if rep.action != tcActOK || rep.src != syn.dst || rep.dst != syn.src {
		t.Fatalf("backend's reply on egress: action %d %v -> %v, want %v -> %v", rep.action, rep.src, rep.dst, syn.dst, syn.src)
	}
}

func TestNodePortHybridKeepsUDPOnSNAT(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	f.put(f.maps.Config, uint32(0), bpf.NPConfig{Mode: bpf.NPModeHybrid})
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30053, unix.IPPROTO_UDP, netip.AddrPortFrom(npBackend4, 9053), bpf.SvcFlagExternal)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, netip.AddrPortFrom(npBackend4, 80), bpf.SvcFlagExternal)
	udp := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30053), udp: true}
	if r := f.run(tcIn, udp.bytes(t), false); r.src.Addr() != f.node.IPv4 {
		t.Fatalf("hybrid UDP: source %v, want SNAT to the node", r.src)
	}
	tcp := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S"}
	if r := f.run(tcIn, tcp.bytes(t), false); r.src != tcp.src {
		t.Fatalf("hybrid TCP: source %v, want the client (DSR)", r.src)
	}
}

// TestNodePortICMPErrorReachesTheClient: a router between this node and the backend
// answers a SNATed packet with "fragmentation needed"; the error goes on to the client,
// quoting the packet as the client sent it. gopacket checks the outer IPv4, ICMP and
// quoted IPv4 checksums.
func TestNodePortICMPErrorReachesTheClient(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	backend := netip.AddrPortFrom(npBackend4, 8080)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	in := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S"}
	fwd := f.run(tcIn, in.bytes(t), false)
	if fwd.action != tcActRedirect {
		t.Fatalf("forward: action %d", fwd.action)
	}
	router := netip.MustParseAddr("10.200.0.60")
	quoted := fwd.out[14:] // the packet as it left this node: SNAT source, backend destination
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded), Seq: 1400}
	frame := serialize(t, toNode(layers.EthernetTypeIPv4),
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: router.AsSlice(), DstIP: f.node.IPv4.AsSlice()},
		icmp, gopacket.Payload(quoted))
	action, out := f.exec(tcIn, frame, false)
	if action != tcActRedirect {
		t.Fatalf("ICMP error: action %d, want redirect (counters %v)", action, f.counters())
	}
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	outer, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	gotICMP, _ := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if outer == nil || gotICMP == nil {
		t.Fatalf("output is no ICMPv4 packet: %v", pkt)
	}
	verifyIPv4Checksum(t, outer)
	if dst, _ := netip.AddrFromSlice(outer.DstIP); dst != npClient4 || outer.TTL != 63 {
		t.Fatalf("ICMP error to %v ttl %d, want the client %v ttl 63", dst, outer.TTL, npClient4)
	}
	// The ICMP checksum, as gopacket computes it over the message as it left.
	cp := *gotICMP
	if want := checksumOf(t, &cp, gotICMP.Payload, 2); gotICMP.Checksum != want {
		t.Errorf("ICMP checksum %#04x, gopacket computes %#04x", gotICMP.Checksum, want)
	}
	var q layers.IPv4
	if err := q.DecodeFromBytes(gotICMP.Payload, gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	verifyIPv4Checksum(t, &q)
	qs, _ := netip.AddrFromSlice(q.SrcIP)
	qd, _ := netip.AddrFromSlice(q.DstIP)
	sport, dport := binary.BigEndian.Uint16(q.Payload[0:]), binary.BigEndian.Uint16(q.Payload[2:])
	if netip.AddrPortFrom(qs, sport) != in.src || netip.AddrPortFrom(qd, dport) != in.dst {
		t.Fatalf("quoted packet %v:%d -> %v:%d, want the client's %v -> %v", qs, sport, qd, dport, in.src, in.dst)
	}
	if f.counters()["tc_ingress/icmp_error"] != 1 {
		t.Fatalf("counters %v", f.counters())
	}
}

// TestNodePortMaglevPicksByTheFlow: with the Maglev flag a flow's backend follows from
// its tuple, not from chance: flows tracked afresh (their conntrack forgotten, as on
// another node) go to the same backends again.
func TestNodePortMaglevPicksByTheFlow(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	f.put(f.maps.Config, uint32(0), bpf.NPConfig{MaglevSeed: 42})
	id := f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, netip.AddrPortFrom(npBackend4, 8080), bpf.SvcFlagExternal|bpf.SvcFlagMaglev)
	// A 251-entry table over two backends, alternating.
	lbm := f.lb.Maps()
	other, fam := bpf.AddrFrom(npClient4) // any second address the FIB reaches
	f.put(lbm.SmBackends, uint32(100), bpf.BackendValue{Addr: other, Port: bpf.PortToNet(8080), Proto: unix.IPPROTO_TCP, Family: fam, SvcId: id})
	var key bpf.SvcKey
	key.Port, key.Proto, key.Family = bpf.PortToNet(30080), unix.IPPROTO_TCP, bpf.FamilyIPv4
	f.put(lbm.SmServices, key, bpf.SvcValue{Id: id, Count: 251, Flags: bpf.SvcFlagExternal | bpf.SvcFlagMaglev})
	for slot := uint32(1); slot <= 251; slot++ {
		be := id
		if slot%2 == 0 {
			be = 100
		}
		f.put(lbm.SmSlots, bpf.SlotKey{SvcId: id, Slot: slot}, be)
	}
	picks := func() []netip.AddrPort {
		var out []netip.AddrPort
		for port := uint16(41000); port < 41024; port++ {
			syn := packet{src: netip.AddrPortFrom(npClient4, port), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S"}
			r := f.run(tcIn, syn.bytes(t), false)
			out = append(out, r.dst)
		}
		return out
	}
	first := picks()
	var (
		k    bpf.CtKey
		v    bpf.CtForward
		keys []bpf.CtKey
	)
	it := f.maps.Forward.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := f.maps.Forward.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	again := picks()
	seen := map[netip.AddrPort]bool{}
	for i := range first {
		seen[first[i]] = true
		if first[i] != again[i] {
			t.Fatalf("flow %d went to %v, then afresh to %v: Maglev must follow the tuple", i, first[i], again[i])
		}
	}
	if len(seen) != 2 {
		t.Fatalf("24 flows all went to %v: the hash does not spread them", seen)
	}
}

// TestNodePortDSRv6CarriesTheFrontendInADestinationOption is the IPv6 half: the SYN
// gets a Destination Options header holding the frontend (gopacket parses it and checks
// the TCP checksum), the backend's node learns the flow from it and its egress answers
// from the frontend.
func TestNodePortDSRv6CarriesTheFrontendInADestinationOption(t *testing.T) {
	f := newNPFixture(t)
	xdp, tcIn, tcOut := f.np.Programs()
	f.put(f.maps.Config, uint32(0), bpf.NPConfig{Mode: bpf.NPModeDSR})
	backend := netip.AddrPortFrom(npBackend6, 8080)
	f.frontend(netip.Addr{}, bpf.FamilyIPv6, 30080, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	syn := packet{src: netip.AddrPortFrom(npClient6, 40000), dst: netip.AddrPortFrom(f.node.IPv6, 30080), tcpFlags: "S"}
	if action, _ := f.exec(xdp, syn.bytes(t), true); action != xdpPass {
		t.Fatalf("XDP on a DSR SYN: action %d, want it left to tc", action)
	}
	r := f.run(tcIn, syn.bytes(t), false)
	if r.action != tcActRedirect || r.src != syn.src || r.dst != backend || r.ttl != 63 {
		t.Fatalf("DSR forward: action %d %v -> %v hop limit %d (counters %v)", r.action, r.src, r.dst, r.ttl, f.counters())
	}
	pkt := gopacket.NewPacket(r.out, layers.LayerTypeEthernet, gopacket.Default)
	dst, _ := pkt.Layer(layers.LayerTypeIPv6Destination).(*layers.IPv6Destination)
	if dst == nil || len(dst.Options) == 0 || dst.Options[0].OptionType != 0x1b || len(dst.Options[0].OptionData) != 18 {
		t.Fatalf("DSR SYN: destination options %+v, want option 0x1b of 18 bytes", dst)
	}
	opt := dst.Options[0].OptionData
	if port, addr := binary.BigEndian.Uint16(opt[:2]), netip.AddrFrom16([16]byte(opt[2:18])); port != 30080 || addr != f.node.IPv6 {
		t.Fatalf("DSR option carries [%v]:%d, want the frontend [%v]:30080", addr, port, f.node.IPv6)
	}
	be, _ := bpf.AddrFrom(npBackend6)
	f.put(f.lb.Maps().SmLocal, be, uint8(1))
	if action, _ := f.exec(tcIn, r.out, false); action != tcActOK || f.counters()["tc_ingress/dsr_learned"] != 1 {
		t.Fatalf("backend's node on the DSR SYN: action %d counters %v", action, f.counters())
	}
	rep := f.run(tcOut, packet{src: backend, dst: syn.src, tcpFlags: "SA"}.bytes(t), false)
	if rep.action != tcActOK || rep.src != syn.dst || rep.dst != syn.src {
		t.Fatalf("backend's reply on egress: action %d %v -> %v, want %v -> %v", rep.action, rep.src, rep.dst, syn.dst, syn.src)
	}
}

// TestNodePortICMPv6PacketTooBigReachesTheClient: IPv6 routers never fragment, so a
// client whose packets are too big for the path to the backend stalls unless the
// error reaches it. gopacket checks the ICMPv6 checksum (over its pseudo-header).
func TestNodePortICMPv6PacketTooBigReachesTheClient(t *testing.T) {
	f := newNPFixture(t)
	_, tcIn, _ := f.np.Programs()
	f.frontend(netip.Addr{}, bpf.FamilyIPv6, 30080, unix.IPPROTO_TCP, netip.AddrPortFrom(npBackend6, 8080), bpf.SvcFlagExternal)
	in := packet{src: netip.AddrPortFrom(npClient6, 40000), dst: netip.AddrPortFrom(f.node.IPv6, 30080), tcpFlags: "S"}
	fwd := f.run(tcIn, in.bytes(t), false)
	if fwd.action != tcActRedirect || fwd.src.Addr() != f.node.IPv6 {
		t.Fatalf("forward: action %d from %v", fwd.action, fwd.src)
	}
	router := netip.MustParseAddr("fd00:200::60")
	outer := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: router.AsSlice(), DstIP: f.node.IPv6.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0)}
	_ = icmp.SetNetworkLayerForChecksum(outer)
	mtu := []byte{0, 0, 0x05, 0x00} // MTU 1280
	frame := serialize(t, toNode(layers.EthernetTypeIPv6), outer, icmp, gopacket.Payload(append(mtu, fwd.out[14:]...)))
	action, out := f.exec(tcIn, frame, false)
	if action != tcActRedirect {
		t.Fatalf("ICMPv6 error: action %d, want redirect (counters %v)", action, f.counters())
	}
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	gotIP, _ := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	gotICMP, _ := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if gotIP == nil || gotICMP == nil {
		t.Fatalf("output is no ICMPv6 packet: %v", pkt)
	}
	if dst, _ := netip.AddrFromSlice(gotIP.DstIP); dst != npClient6 || gotIP.HopLimit != 63 {
		t.Fatalf("ICMPv6 error to %v hop limit %d, want the client %v, 63", dst, gotIP.HopLimit, npClient6)
	}
	cp := *gotICMP
	_ = cp.SetNetworkLayerForChecksum(gotIP)
	if want := checksumOf(t, &cp, gotICMP.Payload, 2); gotICMP.Checksum != want {
		t.Errorf("ICMPv6 checksum %#04x, gopacket computes %#04x", gotICMP.Checksum, want)
	}
	quoted := gotICMP.Payload[4:] // after the MTU
	var q layers.IPv6
	if err := q.DecodeFromBytes(quoted, gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	qs, _ := netip.AddrFromSlice(q.SrcIP)
	qd, _ := netip.AddrFromSlice(q.DstIP)
	sport, dport := binary.BigEndian.Uint16(q.Payload[0:]), binary.BigEndian.Uint16(q.Payload[2:])
	if netip.AddrPortFrom(qs, sport) != in.src || netip.AddrPortFrom(qd, dport) != in.dst {
		t.Fatalf("quoted packet [%v]:%d -> [%v]:%d, want the client's %v -> %v", qs, sport, qd, dport, in.src, in.dst)
	}
}
