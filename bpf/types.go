package bpf

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// The C structs, as bpf2go generated them, under the names the rest of the agent uses.
type (
	SvcKey        = socklbSvcKey
	SvcValue      = socklbSvcValue
	SlotKey       = socklbSlotKey
	BackendValue  = socklbBackendValue
	AffinityKey   = socklbAffinityKey
	AffinityValue = socklbAffinityValue
	RevnatKey     = socklbRevnatKey
	RevnatValue   = socklbRevnatValue
	SvcName       = socklbSvcName
	LbAddr        = socklbLbAddr
	CounterID     = socklbCounterId
	Config        = socklbConfig
	OrigDst       = socklbOrigdst
)

// Service flags (svc_value.flags).
const (
	SvcFlagL7           = uint32(socklbSvcFlagsSVC_F_L7)
	SvcFlagExternal     = uint32(socklbSvcFlagsSVC_F_EXTERNAL)
	SvcFlagSourceRanges = uint32(socklbSvcFlagsSVC_F_SOURCE_RANGES)
	SvcFlagLoadBalancer = uint32(socklbSvcFlagsSVC_F_LOADBALANCER)
	SvcFlagMaglev       = uint32(socklbSvcFlagsSVC_F_MAGLEV)
)

// Splice modes (config.splice).
const (
	SpliceOff  = uint32(socklbSpliceModeSPLICE_OFF)
	SpliceOn   = uint32(socklbSpliceModeSPLICE_ON)
	SpliceAuto = uint32(socklbSpliceModeSPLICE_AUTO)
)

// Address families as the datapath stores them.
const (
	FamilyIPv4 = unix.AF_INET
	FamilyIPv6 = unix.AF_INET6
)

// CounterNames names the datapath's per-CPU counters, indexed by CounterID.
var CounterNames = [...]string{
	socklbCounterIdCNT_XLATE_TCP4:            "xlate_tcp4",
	socklbCounterIdCNT_XLATE_TCP6:            "xlate_tcp6",
	socklbCounterIdCNT_XLATE_UDP4:            "xlate_udp4",
	socklbCounterIdCNT_XLATE_UDP6:            "xlate_udp6",
	socklbCounterIdCNT_NO_BACKEND:            "no_backend",
	socklbCounterIdCNT_SLOT_MISS:             "slot_miss",
	socklbCounterIdCNT_BACKEND_MISS:          "backend_miss",
	socklbCounterIdCNT_AFFINITY_HIT:          "affinity_hit",
	socklbCounterIdCNT_REVNAT_HIT:            "revnat_hit",
	socklbCounterIdCNT_REVNAT_STALE:          "revnat_stale",
	socklbCounterIdCNT_REVNAT_UPDATE_FAIL:    "revnat_update_fail",
	socklbCounterIdCNT_REDIRECT:              "redirect",
	socklbCounterIdCNT_REDIRECT_NO_PROXY:     "redirect_no_proxy",
	socklbCounterIdCNT_ORIGDST_HIT:           "origdst_hit",
	socklbCounterIdCNT_ORIGDST_MISS:          "origdst_miss",
	socklbCounterIdCNT_SPLICE_SOCKS:          "splice_sockets",
	socklbCounterIdCNT_SPLICE_PAIRS:          "splice_pairs",
	socklbCounterIdCNT_SPLICE_MSGS:           "splice_messages",
	socklbCounterIdCNT_SPLICE_BYTES:          "splice_bytes",
	socklbCounterIdCNT_FALLBACK_SENT_EARLY:   "splice_fallback_sent_early",
	socklbCounterIdCNT_FALLBACK_SEQ_MISMATCH: "splice_fallback_seq_mismatch",
	socklbCounterIdCNT_FALLBACK_PEER_GONE:    "splice_fallback_peer_gone",
	socklbCounterIdCNT_FALLBACK_MAP_FULL:     "splice_fallback_map_full",
	socklbCounterIdCNT_ORIGDST_AMBIGUOUS:     "origdst_ambiguous",
}

// NumCounters is the size of the counter array.
const NumCounters = int(socklbCounterIdCNT_MAX)

// AddrFrom lays an address out as the datapath keys it: the address bytes in network
// order, IPv4 in the first word with the rest zero. Family says which one it is.
func AddrFrom(a netip.Addr) (LbAddr, uint8) {
	var out LbAddr
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		out.Addr[0] = binary.NativeEndian.Uint32(b[:])
		return out, FamilyIPv4
	}
	b := a.As16()
	for i := range out.Addr {
		out.Addr[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out, FamilyIPv6
}

// Addr turns a datapath address of the given family back into a netip.Addr.
func (a LbAddr) ToAddr(family uint8) netip.Addr {
	if family == FamilyIPv4 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], a.Addr[0])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	for i := range a.Addr {
		binary.NativeEndian.PutUint32(b[4*i:], a.Addr[i])
	}
	return netip.AddrFrom16(b)
}

// PortToNet returns a host-order port as the datapath stores it (network order in memory).
func PortToNet(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// PortFromNet is the inverse of PortToNet.
func PortFromNet(p uint16) uint16 { return PortToNet(p) }

// NameFrom packs a display name into the fixed-size C buffer, truncating if needed.
func NameFrom(s string) SvcName {
	var n SvcName
	for i := 0; i < len(s) && i < len(n.Name)-1; i++ {
		n.Name[i] = int8(s[i])
	}
	return n
}

// String returns the name up to its NUL.
func (n SvcName) String() string { return string(n.AppendTo(make([]byte, 0, len(n.Name)))) }

// AppendTo appends the name up to its NUL.
func (n SvcName) AppendTo(b []byte) []byte {
	for _, c := range n.Name {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return b
}
