package tests

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strconv"
)

// Generators of kube-proxy-like rule sets for BenchmarkKubeProxyBaselines: the same
// services and endpoints written the way kube-proxy writes them in its nftables mode
// (one `nft -f` transaction) and in its iptables mode (one iptables-restore input), for
// a full (cold) sync and for the partial sync that follows one endpoint change. The
// shape follows kube-proxy's proxiers for ClusterIP services with Cluster traffic
// policy, no session affinity, a cluster CIDR for the masquerade check, and the
// "large cluster" mode that kube-proxy's iptables proxier enters above 1000 endpoints.

// kpService is one ClusterIP service port with its endpoints.
type kpService struct {
	Namespace, Name, PortName string
	ClusterIP                 netip.Addr
	Port                      int
	Endpoints                 []netip.AddrPort
}

var (
	kpServiceBase = netip.MustParseAddr("10.96.0.0")  // service CIDR 10.96.0.0/12
	kpPodBase     = netip.MustParseAddr("10.128.0.0") // pod (cluster) CIDR 10.128.0.0/10
	kpNewPodBase  = netip.MustParseAddr("10.190.0.0") // fresh pod IPs for endpoint changes
)

const (
	kpClusterCIDR = "10.128.0.0/10"
	kpServiceCIDR = "10.96.0.0/12"
	kpTargetPort  = 8080
	kpMasqMark    = "0x4000"
	kpNFTTable    = "ip kube-proxy" // family and name, as in every kube-proxy nft command
)

// kpAddr returns base + n (IPv4).
func kpAddr(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// kpServices makes n services of per endpoints each: 100 services per namespace, one
// TCP port 80 each, endpoints on consecutive pod IPs at port 8080.
func kpServices(n, per int) []kpService {
	svcs := make([]kpService, n)
	for i := range svcs {
		s := kpService{
			Namespace: fmt.Sprintf("ns%d", i/100),
			Name:      fmt.Sprintf("svc%d", i),
			PortName:  "http",
			ClusterIP: kpAddr(kpServiceBase, i+1),
			Port:      80,
		}
		for j := 0; j < per; j++ {
			s.Endpoints = append(s.Endpoints, netip.AddrPortFrom(kpAddr(kpPodBase, i*per+j+1), kpTargetPort))
		}
		svcs[i] = s
	}
	return svcs
}

// kpChange replaces endpoint k%len of service svc with a fresh pod IP (a pod restarted
// elsewhere) and returns the old and new endpoint.
func kpChange(s *kpService, k int) (old, repl netip.AddrPort) {
	i := k % len(s.Endpoints)
	old = s.Endpoints[i]
	repl = netip.AddrPortFrom(kpAddr(kpNewPodBase, k+1), kpTargetPort)
	eps := append([]netip.AddrPort(nil), s.Endpoints...)
	eps[i] = repl
	s.Endpoints = eps
	return old, repl
}

func kpHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:])
}

// ---- nftables mode ----

func (s *kpService) nftBase() string {
	return fmt.Sprintf("%s/%s/tcp/%s", s.Namespace, s.Name, s.PortName)
}

// nftServiceChain is kube-proxy's cluster-policy chain name, "service-HASH-ns/name/tcp/port".
func (s *kpService) nftServiceChain() string {
	b := s.nftBase()
	return "service-" + kpHash(b)[:8] + "-" + b
}

// nftEndpointChain is "endpoint-HASH-ns/name/tcp/port__IP/port".
func (s *kpService) nftEndpointChain(ep netip.AddrPort) string {
	b := fmt.Sprintf("%s__%s/%d", s.nftBase(), ep.Addr(), ep.Port())
	return "endpoint-" + kpHash(b)[:8] + "-" + b
}

type kpLines struct{ bytes.Buffer }

func (l *kpLines) line(format string, a ...any) {
	fmt.Fprintf(&l.Buffer, format, a...)
	l.WriteByte('\n')
}

// nftAddFlush is kube-proxy's ensureChain: add the chain, then flush it, so it holds
// only what this transaction writes.
func (l *kpLines) nftAddFlush(chain string) {
	l.line("add chain %s %s", kpNFTTable, chain)
	l.line("flush chain %s %s", kpNFTTable, chain)
}

// kpNFTBaseChains are the hooked chains, with kube-proxy's priorities (dstnat = -100,
// srcnat = 100).
var kpNFTBaseChains = []struct{ name, spec string }{
	{"filter-prerouting", "type filter hook prerouting priority -110"},
	{"filter-input", "type filter hook input priority -110"},
	{"filter-forward", "type filter hook forward priority -110"},
	{"filter-output", "type filter hook output priority -110"},
	{"filter-output-post-dnat", "type filter hook output priority -90"},
	{"nat-prerouting", "type nat hook prerouting priority -100"},
	{"nat-output", "type nat hook output priority -100"},
	{"nat-postrouting", "type nat hook postrouting priority 100"},
}

// kpNFTJumps are the jumps from the hooked chains to the regular top-level chains.
var kpNFTJumps = []struct{ from, to, match string }{
	{"filter-input", "nodeport-endpoints-check", "ct state new "},
	{"filter-input", "service-endpoints-check", "ct state new "},
	{"filter-forward", "service-endpoints-check", "ct state new "},
	{"filter-output", "service-endpoints-check", "ct state new "},
	{"filter-prerouting", "firewall-check", "ct state new "},
	{"filter-output", "firewall-check", "ct state new "},
	{"nat-output", "services", ""},
	{"nat-prerouting", "services", ""},
	{"nat-postrouting", "masquerading", ""},
	{"filter-forward", "cluster-ips-check", "ct state new "},
	{"filter-output-post-dnat", "cluster-ips-check", "ct state new "},
}

// kpNFTTopChains are the regular chains the table always has.
var kpNFTTopChains = []string{"nodeport-endpoints-check", "service-endpoints-check", "firewall-check",
	"services", "masquerading", "cluster-ips-check", "mark-for-masquerade", "reject-chain"}

// nftServiceRules writes the rules of one service's chain and of its endpoints'
// chains, as kube-proxy does for a service it (re)syncs.
func (l *kpLines) nftServiceRules(s *kpService) {
	svc := s.nftServiceChain()
	l.line("add rule %s %s ip daddr %s tcp dport %d ip saddr != %s jump mark-for-masquerade",
		kpNFTTable, svc, s.ClusterIP, s.Port, kpClusterCIDR)
	// The one deviation from kube-proxy. It writes `numgen random mod 10 vmap { 0 :
	// goto EP0, ... }`, an inline anonymous verdict map per service, and Linux (6.18
	// here) binds each anonymous set with a walk over the whole transaction so far
	// (__nft_set_trans_bind), so a cold load of N services costs O(N²) in the kernel:
	// 9 s at 2000 services, 256 s at 10000 (97% system time), about 40 min projected
	// at 30000. Here the same uniform choice is a cascade of numgen rules (1/10, then
	// 1/9, ..., then the last endpoint unconditionally), the nft twin of iptables'
	// statistic rules: same chains, same per-endpoint chains, no anonymous sets.
	n := len(s.Endpoints)
	for i, ep := range s.Endpoints {
		if i < n-1 {
			l.line("add rule %s %s numgen random mod %d 0 goto %s", kpNFTTable, svc, n-i, s.nftEndpointChain(ep))
		} else {
			l.line("add rule %s %s goto %s", kpNFTTable, svc, s.nftEndpointChain(ep))
		}
	}
	for _, ep := range s.Endpoints {
		c := s.nftEndpointChain(ep)
		l.line("add rule %s %s ip saddr %s jump mark-for-masquerade", kpNFTTable, c, ep.Addr())
		l.line("add rule %s %s meta l4proto tcp dnat to %s", kpNFTTable, c, ep)
	}
}

func (l *kpLines) nftServiceChains(s *kpService) {
	for _, ep := range s.Endpoints {
		l.nftAddFlush(s.nftEndpointChain(ep))
	}
	l.nftAddFlush(s.nftServiceChain())
}

// kpNFTCold is the transaction of kube-proxy's first (full) sync: the table, its
// hooked and top-level chains, sets and verdict maps, then for every service its
// chains (each added and flushed), its cluster-ips and service-ips elements (ip .
// proto . port : goto service chain) and the rules: the service chain's masquerade
// check and random choice of an endpoint chain, each endpoint chain's hairpin
// masquerade mark and dnat.
func kpNFTCold(svcs []kpService) []byte {
	var l kpLines
	t := kpNFTTable
	l.line(`add table %s { comment "rules for kube-proxy" ; }`, t)
	for _, c := range kpNFTBaseChains {
		l.line("add chain %s %s { %s ; }", t, c.name, c.spec)
		l.line("flush chain %s %s", t, c.name)
	}
	for _, c := range kpNFTTopChains {
		l.nftAddFlush(c)
	}
	for _, j := range kpNFTJumps {
		l.line("add rule %s %s %sjump %s", t, j.from, j.match, j.to)
	}
	l.line("add rule %s mark-for-masquerade mark set mark or %s", t, kpMasqMark)
	l.line("add rule %s masquerading mark and %s == 0 return", t, kpMasqMark)
	l.line("add rule %s masquerading mark set mark xor %s", t, kpMasqMark)
	l.line("add rule %s masquerading masquerade fully-random", t)
	l.line(`add set %s cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }`, t)
	l.line(`add rule %s cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"`, t)
	l.line(`add rule %s cluster-ips-check ip daddr { %s } drop comment "Drop traffic to unallocated ClusterIPs"`, t, kpServiceCIDR)
	l.line(`add map %s no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }`, t)
	l.line(`add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }`, t)
	l.line("add rule %s reject-chain reject", t)
	l.line("add rule %s service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services", t)
	l.line("add rule %s nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports", t)
	l.line(`add map %s firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }`, t)
	l.line("add rule %s firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips", t)
	l.line(`add map %s service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`, t)
	l.line(`add map %s service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }`, t)
	l.line("add rule %s services ip daddr . meta l4proto . th dport vmap @service-ips", t)
	l.line("add rule %s services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports", t)
	// A full sync rebuilds the sets and maps from empty.
	l.line("flush set %s cluster-ips", t)
	for _, m := range []string{"service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports", "firewall-ips"} {
		l.line("flush map %s %s", t, m)
	}
	for i := range svcs {
		s := &svcs[i]
		l.nftServiceChains(s)
		l.line("add element %s cluster-ips { %s }", t, s.ClusterIP)
		l.line("add element %s service-ips { %s . tcp . %d : goto %s }", t, s.ClusterIP, s.Port, s.nftServiceChain())
		l.nftServiceRules(s)
	}
	return l.Bytes()
}

// kpNFTChange is kube-proxy's partial sync after one endpoint of s changed (s already
// holds the new endpoints): only that service's chains are re-added, flushed and
// rewritten (its service chain and all its endpoint chains); the map elements are
// unchanged, so none are written; the replaced endpoint's chain is now stale and is
// flushed (kube-proxy deletes stale chains in a later transaction, a second on).
func kpNFTChange(s *kpService, old netip.AddrPort) []byte {
	var l kpLines
	l.nftServiceChains(s)
	l.nftServiceRules(s)
	l.line("flush chain %s %s", kpNFTTable, s.nftEndpointChain(old))
	return l.Bytes()
}

// ---- iptables mode ----

func (s *kpService) iptName() string { return s.Namespace + "/" + s.Name + ":" + s.PortName }

// iptSVC is "KUBE-SVC-" and 16 base32 characters of a hash of the service port.
func (s *kpService) iptSVC() string { return "KUBE-SVC-" + kpHash(s.iptName() + "tcp")[:16] }

func (s *kpService) iptSEP(ep netip.AddrPort) string {
	return "KUBE-SEP-" + kpHash(s.iptName() + "tcp" + ep.String())[:16]
}

// iptFilter is the filter-table part of every kube-proxy restore (it has no per-service
// rules while every service has endpoints).
func (l *kpLines) iptFilter() {
	l.line("*filter")
	for _, c := range []string{"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"} {
		l.line(":%s - [0:0]", c)
	}
	l.line(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s -j ACCEPT`, kpMasqMark, kpMasqMark)
	l.line(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	l.line("COMMIT")
}

func (l *kpLines) iptServiceChains(s *kpService) {
	l.line(":%s - [0:0]", s.iptSVC())
	for _, ep := range s.Endpoints {
		l.line(":%s - [0:0]", s.iptSEP(ep))
	}
}

// iptServiceRules writes the KUBE-SVC chain (masquerade check for traffic from outside
// the cluster CIDR, then one statistic-random rule per endpoint with probability
// 1/remaining, the last unconditional) and the KUBE-SEP chains (hairpin mark, DNAT).
// In large-cluster mode kube-proxy leaves the comments off these rules.
func (l *kpLines) iptServiceRules(s *kpService) {
	svc := s.iptSVC()
	l.line(`-A %s -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s --dport %d ! -s %s -j KUBE-MARK-MASQ`,
		svc, s.iptName(), s.ClusterIP, s.Port, kpClusterCIDR)
	n := len(s.Endpoints)
	for i, ep := range s.Endpoints {
		if i < n-1 {
			l.line("-A %s -m statistic --mode random --probability %s -j %s", svc,
				strconv.FormatFloat(1/float64(n-i), 'f', 10, 64), s.iptSEP(ep))
		} else {
			l.line("-A %s -j %s", svc, s.iptSEP(ep))
		}
	}
	for _, ep := range s.Endpoints {
		sep := s.iptSEP(ep)
		l.line("-A %s -s %s -j KUBE-MARK-MASQ", sep, ep.Addr())
		l.line("-A %s -m tcp -p tcp -j DNAT --to-destination %s", sep, ep)
	}
}

// iptNAT writes the nat table: the top-level chains (always), the chains and rules of
// the services in full, and the KUBE-SERVICES dispatch rules of every service (always:
// kube-proxy rewrites KUBE-SERVICES on each sync, partial or not).
func (l *kpLines) iptNAT(svcs []kpService, full []*kpService, jumps bool) {
	l.line("*nat")
	for _, c := range []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} {
		l.line(":%s - [0:0]", c)
	}
	for _, s := range full {
		l.iptServiceChains(s)
	}
	if jumps {
		// kube-proxy installs these with `iptables -I` before its first restore; here
		// they ride along in the cold restore.
		l.line(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
		l.line(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
		l.line(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	}
	l.line("-A KUBE-POSTROUTING -m mark ! --mark %s/%s -j RETURN", kpMasqMark, kpMasqMark)
	l.line("-A KUBE-POSTROUTING -j MARK --xor-mark %s", kpMasqMark)
	l.line(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	l.line("-A KUBE-MARK-MASQ -j MARK --or-mark %s", kpMasqMark)
	for i := range svcs {
		s := &svcs[i]
		l.line(`-A KUBE-SERVICES -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s --dport %d -j %s`,
			s.iptName(), s.ClusterIP, s.Port, s.iptSVC())
	}
	for _, s := range full {
		l.iptServiceRules(s)
	}
	l.line(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	l.line("COMMIT")
}

// kpIPTCold is the iptables-restore input of kube-proxy's first sync: every chain and
// rule of every service.
func kpIPTCold(svcs []kpService) []byte {
	var l kpLines
	l.iptFilter()
	full := make([]*kpService, len(svcs))
	for i := range svcs {
		full[i] = &svcs[i]
	}
	l.iptNAT(svcs, full, true)
	return l.Bytes()
}

// kpIPTChange is the iptables-restore --noflush input of kube-proxy's partial sync
// after one endpoint of changed (already updated, one of svcs) changed: the filter
// top-level chains, the nat top-level chains with all their rules — KUBE-SERVICES
// with one rule per service, so it grows with N — and the changed service's KUBE-SVC
// chain and all its KUBE-SEP chains. In large-cluster mode kube-proxy leaves the
// stale KUBE-SEP chain in place (unreferenced) until a periodic cleanup, so it is not
// in the input.
func kpIPTChange(svcs []kpService, changed *kpService) []byte {
	var l kpLines
	l.iptFilter()
	l.iptNAT(svcs, []*kpService{changed}, false)
	return l.Bytes()
}
