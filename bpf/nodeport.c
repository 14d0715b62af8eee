//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* North-south load balancing on NodePort devices: a packet from outside to a NodePort,
 * externalIP or LoadBalancer IP is translated to a backend and routed on from XDP or tc,
 * before the stack sees it; the reply is translated back. A remote backend gets the
 * node's address as source (SNAT, with a source port handed out here), so its reply
 * returns through this node; a backend on this node sees the client's address and its
 * reply is translated back on the device's egress. Both directions are tracked in LRU
 * maps that outlive the agent (they are pinned), so a restart keeps every flow. */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include "shared_maps.h"
#include "lb_maps.h"
#include "nodeport.h"

/* The address SNAT uses when a flow leaves through a device, by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct np_device);
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_np_devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct np_range_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_np_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_forward);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_ct_forward SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_reply);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_ct_reply SEC(".maps");

/* Fragments of datagrams to and from frontends: a later fragment finds its ports here. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_np_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct np_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_np_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, NP_PROG_MAX * NP_COUNTER_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_np_counters SEC(".maps");

/* Keep these in BTF so bpf2go exports their values to Go. */
const enum np_counter *unused_np_counter __attribute__((unused));
const enum np_prog *unused_np_prog __attribute__((unused));
const enum ct_flags *unused_ct_flags __attribute__((unused));
const enum np_mode *unused_np_mode __attribute__((unused));

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Defaults while the agent has not written sm_np_config: Cilium's and the kernel's. */
#define DEFAULT_PORT_MIN 32768
#define DEFAULT_PORT_MAX 60999
#define DEFAULT_TCP_TIMEOUT 21600
#define DEFAULT_CLOSING_TIMEOUT 10
#define DEFAULT_UDP_TIMEOUT 60
#define SNAT_PORT_TRIES 32

static __always_inline void np_count(__u32 prog, __u32 what)
{
	__u32 id = prog * NP_COUNTER_SLOTS + what;
	__u64 *v = bpf_map_lookup_elem(&sm_np_counters, &id);
	if (v)
		*v += 1;
}

/* A parsed packet: its tuple as a conntrack key and where its L4 checksum lives. */
struct pkt {
	struct ct_key key;
	__u32 l4off;    /* from the start of the frame */
	__u32 csum_off; /* of the L4 checksum, from the start of the frame; 0 = none */
	__u8 tcp_flags;
	/* dsr: the packet carries a DSR frontend (an IPv4 option or an IPv6 destination
	 * option, first after the base header, where dsr_insert puts it). */
	__u8 dsr;
	__u16 dsr_port;
	struct lb_addr dsr_addr;
	/* frag: FRAG_FIRST for an IPv4 datagram's first fragment (its ports are recorded),
	 * FRAG_LATER for one without an L4 header (its ports come from the record). */
	__u8 frag;
	__u16 ip_id;
};

#define FRAG_FIRST 1
#define FRAG_LATER 2

enum parse_result {
	PARSE_OK,
	PARSE_OTHER,    /* not TCP or UDP over IP: not ours */
	PARSE_FRAGMENT, /* an IPv4 fragment or an IPv6 fragment header */
	PARSE_SHORT,
};

static __always_inline int parse(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	__u8 proto;
	__u32 off = sizeof(*eth);

	if ((void *)(eth + 1) > data_end)
		return PARSE_SHORT;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end)
			return PARSE_SHORT;
		if (ip->ihl < 5)
			return PARSE_SHORT;
		proto = ip->protocol;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return PARSE_OTHER;
		p->key.family = AF_INET;
		p->key.saddr.addr[0] = ip->saddr;
		p->key.daddr.addr[0] = ip->daddr;
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
			p->ip_id = ip->id;
			p->frag = FRAG_FIRST;
			if (ip->frag_off & bpf_htons(IP_OFFSET)) {
				struct frag_key fk = {.saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .proto = proto};
				struct frag_ports *fp = bpf_map_lookup_elem(&sm_np_frags, &fk);

				if (!fp)
					return PARSE_FRAGMENT; /* not ours, or ahead of its first */
				p->frag = FRAG_LATER;
				p->key.sport = fp->sport;
				p->key.dport = fp->dport;
				p->key.proto = proto;
				return PARSE_OK;
			}
		}
		if (ip->ihl >= 5 + DSR_OPT_LEN / 4) {
			struct dsr_opt *o = (void *)(ip + 1);

			if ((void *)(o + 1) > data_end)
				return PARSE_SHORT;
			if (o->type == DSR_OPT_TYPE && o->len == DSR_OPT_LEN) {
				p->dsr = 1;
				p->dsr_port = o->port;
				p->dsr_addr.addr[0] = o->addr;
			}
		}
		off += ip->ihl * 4; /* IP options come before the ports */
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return PARSE_SHORT;
		proto = ip6->nexthdr;
		off += sizeof(*ip6);
		if (proto == NEXTHDR_DEST) {
			struct dsr6_hdr *h = (void *)(ip6 + 1);

			if ((void *)(h + 1) > data_end)
				return PARSE_SHORT;
			if (h->opt_type != DSR6_OPT_TYPE || h->opt_len != DSR6_OPT_LEN ||
			    h->hdrlen != DSR6_HDR_LEN / 8 - 1)
				return PARSE_OTHER;
			p->dsr = 1;
			p->dsr_port = h->port;
			__builtin_memcpy(p->dsr_addr.addr, h->addr, 16);
			proto = h->nexthdr;
			off += DSR6_HDR_LEN;
		}
		if (proto == 44 /* NEXTHDR_FRAGMENT */)
			return PARSE_FRAGMENT;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return PARSE_OTHER;
		p->key.family = AF_INET6;
		__builtin_memcpy(p->key.saddr.addr, &ip6->saddr, 16);
		__builtin_memcpy(p->key.daddr.addr, &ip6->daddr, 16);
	} else {
		return PARSE_OTHER;
	}
	p->key.proto = proto;
	p->l4off = off;
	if (proto == IPPROTO_TCP) {
		__u8 *tcp = data + off;

		if ((void *)(tcp + 20) > data_end)
			return PARSE_SHORT;
		p->key.sport = *(__u16 *)tcp;
		p->key.dport = *(__u16 *)(tcp + 2);
		p->tcp_flags = tcp[13];
		p->csum_off = off + 16;
	} else {
		__u8 *udp = data + off;

		if ((void *)(udp + 8) > data_end)
			return PARSE_SHORT;
		p->key.sport = *(__u16 *)udp;
		p->key.dport = *(__u16 *)(udp + 2);
		p->csum_off = off + 6;
	}
	return PARSE_OK;
}

/* One's-complement arithmetic (RFC 1624): sums of ~old + new fold into a checksum. The
 * sum does not care about byte order as long as old, new and the checksum share it. */
static __always_inline __u32 csum_diff32(__u32 sum, __u32 old, __u32 new)
{
	return sum + (~old & 0xffff) + (~old >> 16) + (new & 0xffff) + (new >> 16);
}

static __always_inline __u32 csum_diff16(__u32 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

static __always_inline __u16 csum_apply(__u16 csum, __u32 diff)
{
	__u32 s = (__u16)~csum + diff;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline __u32 addr_diff(__u32 sum, const struct lb_addr *old,
				       const struct lb_addr *new, __u8 family)
{
	sum = csum_diff32(sum, old->addr[0], new->addr[0]);
	if (family == AF_INET6) {
		sum = csum_diff32(sum, old->addr[1], new->addr[1]);
		sum = csum_diff32(sum, old->addr[2], new->addr[2]);
		sum = csum_diff32(sum, old->addr[3], new->addr[3]);
	}
	return sum;
}

/* rewrite gives the packet a new source and destination, fixing the L4 checksum (its
 * pseudo-header covers both) and, when it is routed on, the TTL or hop limit. It is
 * XDP's: a frame there carries a complete checksum (a NIC's), which it keeps right. */
static __always_inline int rewrite(void *data, void *data_end, const struct pkt *p,
				   const struct lb_addr *saddr, __u16 sport,
				   const struct lb_addr *daddr, __u16 dport, int routed)
{
	__u32 l4 = addr_diff(0, &p->key.saddr, saddr, p->key.family);
	__u8 *port, *csum;

	l4 = addr_diff(l4, &p->key.daddr, daddr, p->key.family);
	if (p->key.family == AF_INET) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		__u32 l3 = 0;

		if ((void *)(ip + 1) > data_end)
			return -1;
		if (routed) {
			__u16 old = *(__u16 *)&ip->ttl;

			if (ip->ttl <= 1)
				return NP_DROP_TTL;
			ip->ttl--;
			l3 = csum_diff16(l3, old, *(__u16 *)&ip->ttl);
		}
		l3 = csum_diff32(l3, ip->saddr, saddr->addr[0]);
		l3 = csum_diff32(l3, ip->daddr, daddr->addr[0]);
		ip->saddr = saddr->addr[0];
		ip->daddr = daddr->addr[0];
		ip->check = csum_apply(ip->check, l3);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (routed) {
			if (ip6->hop_limit <= 1)
				return NP_DROP_TTL;
			ip6->hop_limit--;
		}
		__builtin_memcpy(&ip6->saddr, saddr->addr, 16);
		__builtin_memcpy(&ip6->daddr, daddr->addr, 16);
	}
	l4 = csum_diff16(l4, p->key.sport, sport);
	l4 = csum_diff16(l4, p->key.dport, dport);
	port = data + (p->l4off & 0xff);
	if ((void *)(port + 4) > data_end)
		return -1;
	*(__u16 *)port = sport;
	*(__u16 *)(port + 2) = dport;
	csum = data + (p->csum_off & 0xff);
	if ((void *)(csum + 2) > data_end)
		return -1;
	if (p->key.proto == IPPROTO_UDP && p->key.family == AF_INET && *(__u16 *)csum == 0)
		return 0; /* IPv4 UDP without a checksum stays without */
	*(__u16 *)csum = csum_apply(*(__u16 *)csum, l4);
	if (p->key.proto == IPPROTO_UDP && *(__u16 *)csum == 0)
		*(__u16 *)csum = 0xffff;
	return 0;
}

/* rewrite_skb is rewrite for tc, through the skb helpers: they know a checksum the
 * stack has left for the device to finish (CHECKSUM_PARTIAL, as a local pod's or a
 * veth's packets carry), where the L4 field holds only the pseudo-header's sum, and
 * keep CHECKSUM_COMPLETE's sum right. */
static __always_inline int rewrite_skb(struct __sk_buff *skb, const struct pkt *p,
				       const struct lb_addr *saddr, __u16 sport,
				       const struct lb_addr *daddr, __u16 dport, int routed)
{
	__u64 mangled0 = p->key.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 l3 = sizeof(struct ethhdr);
	__u32 ports_old = ((__u32)p->key.dport << 16) | p->key.sport;
	__u32 ports_new = ((__u32)dport << 16) | sport;
	__s64 diff;

	if (p->key.family == AF_INET) {
		__u32 from[2] = {p->key.saddr.addr[0], p->key.daddr.addr[0]};
		__u32 to[2] = {saddr->addr[0], daddr->addr[0]};

		if (routed) {
			__u8 ttl;
			__u16 old, new;

			if (bpf_skb_load_bytes(skb, l3 + 8, &old, 2))
				return -1;
			ttl = ((__u8 *)&old)[0];
			if (ttl <= 1)
				return NP_DROP_TTL;
			new = old;
			((__u8 *)&new)[0] = ttl - 1;
			if (bpf_l3_csum_replace(skb, l3 + 10, old, new, 2) ||
			    bpf_skb_store_bytes(skb, l3 + 8, &new, 2, 0))
				return -1;
		}
		diff = bpf_csum_diff(from, sizeof(from), to, sizeof(to), 0);
		if (diff < 0 || bpf_l3_csum_replace(skb, l3 + 10, 0, diff, 0) ||
		    (p->frag != FRAG_LATER &&
		     bpf_l4_csum_replace(skb, p->csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled0)) ||
		    bpf_skb_store_bytes(skb, l3 + 12, to, sizeof(to), 0))
			return -1;
	} else {
		__u32 from[8], to[8];

		__builtin_memcpy(from, p->key.saddr.addr, 16);
		__builtin_memcpy(from + 4, p->key.daddr.addr, 16);
		__builtin_memcpy(to, saddr->addr, 16);
		__builtin_memcpy(to + 4, daddr->addr, 16);
		if (routed) {
			__u8 hops;

			if (bpf_skb_load_bytes(skb, l3 + 7, &hops, 1))
				return -1;
			if (hops <= 1)
				return NP_DROP_TTL;
			hops--;
			if (bpf_skb_store_bytes(skb, l3 + 7, &hops, 1, 0))
				return -1;
		}
		diff = bpf_csum_diff(from, sizeof(from), to, sizeof(to), 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, p->csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled0) ||
		    bpf_skb_store_bytes(skb, l3 + 8, to, sizeof(to), 0))
			return -1;
	}
	if (p->frag == FRAG_LATER)
		return 0; /* no L4 header here: the first fragment's checksum covers this one */
	diff = bpf_csum_diff(&ports_old, 4, &ports_new, 4, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, p->csum_off, 0, diff, mangled0) ||
	    bpf_skb_store_bytes(skb, p->l4off, &ports_new, 4, 0))
		return -1;
	return 0;
}

static __always_inline __u64 timeout_ns(const struct np_config *cfg, __u8 proto, __u32 flags)
{
	__u32 s;

	if (proto == IPPROTO_TCP && (flags & CT_F_CLOSING))
		s = cfg && cfg->tcp_closing_timeout ? cfg->tcp_closing_timeout : DEFAULT_CLOSING_TIMEOUT;
	else if (proto == IPPROTO_TCP)
		s = cfg && cfg->tcp_timeout ? cfg->tcp_timeout : DEFAULT_TCP_TIMEOUT;
	else
		s = cfg && cfg->udp_timeout ? cfg->udp_timeout : DEFAULT_UDP_TIMEOUT;
	return (__u64)s * 1000000000ULL;
}

static __always_inline int addr_eq(const struct lb_addr *a, const struct lb_addr *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] && a->addr[2] == b->addr[2] &&
	       a->addr[3] == b->addr[3];
}

static __always_inline int addr_zero(const struct lb_addr *a)
{
	return !(a->addr[0] | a->addr[1] | a->addr[2] | a->addr[3]);
}

/* frontend finds the external frontend a packet is for, in socket-LB's service map: a
 * cluster IP's is socket-LB's alone (a packet from outside to one is not ours). */
static __always_inline struct svc_value *frontend(const struct pkt *p)
{
	struct svc_key k = {};
	struct svc_value *svc;

	k.vip = p->key.daddr;
	k.port = p->key.dport;
	k.proto = p->key.proto;
	k.family = p->key.family;
	svc = lookup_frontend(&k);
	return svc && (svc->flags & SVC_F_EXTERNAL) ? svc : NULL;
}

static __always_inline int source_allowed(const struct pkt *p, const struct svc_value *svc)
{
	struct np_range_key k = {};

	if (!(svc->flags & SVC_F_SOURCE_RANGES))
		return 1;
	k.prefixlen = 32 + (p->key.family == AF_INET ? 32 : 128);
	k.svc_id = svc->id;
	k.addr = p->key.saddr;
	return bpf_map_lookup_elem(&sm_np_ranges, &k) != NULL;
}

/* flow_hash hashes a flow's tuple alike on every node (murmur3's mixing), for Maglev:
 * the same flow picks the same table entry whichever node it enters. */
static __always_inline __u32 flow_hash(const struct pkt *p, __u32 seed)
{
	const __u32 *w = (const __u32 *)&p->key;
	__u32 h = seed;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(p->key) / 4); i++) {
		__u32 k = w[i] * 0xcc9e2d51;

		k = (k << 15) | (k >> 17);
		h ^= k * 0x1b873593;
		h = ((h << 13) | (h >> 19)) * 5 + 0xe6546b64;
	}
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	return h ^ (h >> 16);
}

static __always_inline struct backend_value *pick(const struct pkt *p, const struct svc_value *svc,
						  const struct np_config *cfg, __u32 *id_out)
{
	struct slot_key skey = {};
	struct backend_value *be;
	__u32 *id;

	if (svc->count == 0)
		return NULL;
	skey.svc_id = svc->id;
	if (svc->flags & SVC_F_MAGLEV)
		skey.slot = flow_hash(p, cfg ? cfg->maglev_seed : 0) % svc->count + 1;
	else
		skey.slot = bpf_get_prandom_u32() % svc->count + 1;
	id = bpf_map_lookup_elem(&sm_slots, &skey);
	if (!id)
		return NULL;
	be = bpf_map_lookup_elem(&sm_backends, id);
	if (!be || !be->family || be->svc_id != svc->id)
		return NULL;
	*id_out = *id;
	return be;
}

/* claim_port makes the reply entry for a SNATed flow under a free source port of
 * nat_addr, and returns that port (network order), or 0 when none was free. A port
 * whose flow has expired is free; the LRU map forgets such entries only when full. */
static __always_inline __u16 claim_port(struct ct_key *rkey, struct ct_reply *rval,
					 const struct np_config *cfg, __u64 now)
{
	__u32 lo = cfg && cfg->snat_port_min ? cfg->snat_port_min : DEFAULT_PORT_MIN;
	__u32 hi = cfg && cfg->snat_port_max ? cfg->snat_port_max : DEFAULT_PORT_MAX;
	__u32 start = bpf_get_prandom_u32();
	__u32 range;

	if (hi < lo)
		return 0;
	range = hi - lo + 1;
	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		struct ct_reply *cur;
		__u16 port = bpf_htons((__u16)(lo + (start + i) % range));

		rkey->dport = port;
		if (!bpf_map_update_elem(&sm_ct_reply, rkey, rval, BPF_NOEXIST))
			return port;
		cur = bpf_map_lookup_elem(&sm_ct_reply, rkey);
		if (cur && now - cur->last_seen_ns > timeout_ns(cfg, rkey->proto, cur->flags) &&
		    !bpf_map_update_elem(&sm_ct_reply, rkey, rval, BPF_EXIST))
			return port;
	}
	return 0;
}

/* A translation decided for a packet: its new source and destination. */
struct xlate {
	struct lb_addr saddr, daddr;
	__u16 sport, dport;
	__u8 dsr_option; /* the packet must carry the frontend to the backend's node */
};

/* needs_dsr_option: the backend's node learns a DSR flow from its packets that carry
 * the option: a TCP flow's SYN, every datagram of a UDP one (it has no handshake). */
static __always_inline int needs_dsr_option(const struct pkt *p)
{
	if (p->key.proto == IPPROTO_UDP)
		return 1;
	return (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* uses_dsr: a flow to a backend on another node goes DSR in dsr mode, and for TCP in
 * hybrid mode. */
static __always_inline int uses_dsr(const struct pkt *p, const struct np_config *cfg)
{
	if (!cfg)
		return 0;
	return cfg->mode == NP_MODE_DSR || (cfg->mode == NP_MODE_HYBRID && p->key.proto == IPPROTO_TCP);
}

/* track_new picks a backend for a flow's first packet and records both directions. */
static __always_inline int track_new(const struct pkt *p, __u32 ifindex, struct xlate *x,
				     const struct np_config *cfg, __u64 now)
{
	struct ct_forward fwd = {};
	struct ct_reply rval = {};
	struct ct_key rkey = {};
	struct backend_value *be;
	struct svc_value *svc;
	__u32 backend_id = 0;

	svc = frontend(p);
	if (!svc)
		return NP_PASS;
	if (!source_allowed(p, svc))
		return NP_DROP_SOURCE_RANGE;
	be = pick(p, svc, cfg, &backend_id);
	if (!be)
		return NP_DROP_NO_BACKEND;

	fwd.backend = be->addr;
	fwd.backend_port = be->port;
	fwd.svc_id = svc->id;
	fwd.last_seen_ns = now;
	rval.client = p->key.saddr;
	rval.client_port = p->key.sport;
	rval.frontend = p->key.daddr;
	rval.frontend_port = p->key.dport;
	rval.svc_id = svc->id;
	rval.last_seen_ns = now;
	rkey.saddr = be->addr;
	rkey.sport = be->port;
	rkey.proto = p->key.proto;
	rkey.family = p->key.family;

	if (bpf_map_lookup_elem(&sm_local, &be->addr)) {
		/* A backend on this node: it sees the client, its reply leaves through a
		 * NodePort device and is translated back on egress. */
		rkey.daddr = p->key.saddr;
		rkey.dport = p->key.sport;
		if (bpf_map_update_elem(&sm_ct_reply, &rkey, &rval, BPF_ANY))
			return NP_DROP_CT_FULL;
		x->saddr = p->key.saddr;
		x->sport = p->key.sport;
	} else if (uses_dsr(p, cfg)) {
		/* The backend's node answers the client itself: nothing comes back here. */
		fwd.flags = CT_F_DSR;
		x->saddr = p->key.saddr;
		x->sport = p->key.sport;
		x->dsr_option = needs_dsr_option(p);
	} else {
		struct np_device *dev = bpf_map_lookup_elem(&sm_np_devices, &ifindex);
		__u16 port;

		if (!dev)
			return NP_DROP_NO_ROUTE;
		fwd.nat_addr = p->key.family == AF_INET ? dev->addr4 : dev->addr6;
		if (addr_zero(&fwd.nat_addr))
			return NP_DROP_NO_ROUTE;
		rval.flags = CT_F_SNAT;
		rkey.daddr = fwd.nat_addr;
		port = claim_port(&rkey, &rval, cfg, now);
		if (!port)
			return NP_DROP_NO_PORT;
		fwd.nat_port = port;
		fwd.flags = CT_F_SNAT;
		x->saddr = fwd.nat_addr;
		x->sport = port;
	}
	if (bpf_map_update_elem(&sm_ct_forward, &p->key, &fwd, BPF_ANY))
		return NP_DROP_CT_FULL;
	x->daddr = be->addr;
	x->dport = be->port;
	return NP_NEW_FLOW;
}

static __always_inline void touch(__u64 *last_seen, __u32 *flags, const struct pkt *p, __u64 now)
{
	/* Writing per packet would bounce the cache line between CPUs: once a second is
	 * enough for timeouts counted in seconds. */
	if (now - *last_seen > 1000000000ULL)
		*last_seen = now;
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) {
		*flags |= CT_F_CLOSING;
		*last_seen = now;
	}
}

/* classify decides what becomes of an ingress packet: a reply of a tracked flow, a
 * packet of a tracked flow, the first of a new one, or not ours (NP_PASS). */
static __always_inline int classify(const struct pkt *p, __u32 ifindex, struct xlate *x)
{
	__u32 zero = 0;
	struct np_config *cfg = bpf_map_lookup_elem(&sm_np_config, &zero);
	__u64 now = bpf_ktime_get_ns();
	struct ct_forward *fwd;
	struct ct_reply *rep;

	rep = bpf_map_lookup_elem(&sm_ct_reply, &p->key);
	if (rep && (rep->flags & CT_F_SNAT) &&
	    now - rep->last_seen_ns <= timeout_ns(cfg, p->key.proto, rep->flags)) {
		touch(&rep->last_seen_ns, &rep->flags, p, now);
		x->saddr = rep->frontend;
		x->sport = rep->frontend_port;
		x->daddr = rep->client;
		x->dport = rep->client_port;
		return NP_REPLY;
	}
	fwd = bpf_map_lookup_elem(&sm_ct_forward, &p->key);
	if (fwd && now - fwd->last_seen_ns <= timeout_ns(cfg, p->key.proto, fwd->flags)) {
		touch(&fwd->last_seen_ns, &fwd->flags, p, now);
		x->daddr = fwd->backend;
		x->dport = fwd->backend_port;
		if (fwd->flags & CT_F_SNAT) {
			x->saddr = fwd->nat_addr;
			x->sport = fwd->nat_port;
		} else {
			x->saddr = p->key.saddr;
			x->sport = p->key.sport;
			x->dsr_option = (fwd->flags & CT_F_DSR) && needs_dsr_option(p);
		}
		return NP_FORWARD;
	}
	if (p->frag == FRAG_LATER)
		return NP_PASS; /* only a first fragment, with its ports, starts a flow */
	return track_new(p, ifindex, x, cfg, now);
}

/* remember_fragment records a first fragment's ports for the datagram's later ones. */
static __always_inline void remember_fragment(const struct pkt *p)
{
	struct frag_key fk = {.saddr = p->key.saddr.addr[0], .daddr = p->key.daddr.addr[0],
			      .id = p->ip_id, .proto = p->key.proto};
	struct frag_ports fp = {.sport = p->key.sport, .dport = p->key.dport};

	if (p->frag == FRAG_FIRST)
		bpf_map_update_elem(&sm_np_frags, &fk, &fp, BPF_ANY);
}

static __always_inline int fib(void *ctx, const struct pkt *p, const struct xlate *x,
			       __u32 ifindex, struct bpf_fib_lookup *f)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->family = p->key.family;
	f->l4_protocol = p->key.proto;
	f->sport = x->sport;
	f->dport = x->dport;
	f->ifindex = ifindex;
	if (p->key.family == AF_INET) {
		f->ipv4_src = x->saddr.addr[0];
		f->ipv4_dst = x->daddr.addr[0];
	} else {
		__builtin_memcpy(f->ipv6_src, x->saddr.addr, 16);
		__builtin_memcpy(f->ipv6_dst, x->daddr.addr, 16);
	}
	return bpf_fib_lookup(ctx, f, sizeof(*f), 0);
}

static __always_inline int is_drop(int what)
{
	return what >= NP_DROP_NO_BACKEND;
}

/* dsr_learn records, on the backend's node, how a DSR flow's replies must look: from
 * the frontend the client asked for. Only for a backend on this node: an option in a
 * packet to anywhere else is not an instruction to us. */
static __always_inline int dsr_learn(const struct pkt *p)
{
	struct ct_reply rval = {};
	struct ct_key rkey = {};
	struct ct_reply *cur;

	if (!bpf_map_lookup_elem(&sm_local, &p->key.daddr))
		return NP_PASS;
	rkey.saddr = p->key.daddr;
	rkey.daddr = p->key.saddr;
	rkey.sport = p->key.dport;
	rkey.dport = p->key.sport;
	rkey.proto = p->key.proto;
	rkey.family = p->key.family;
	rval.client = p->key.saddr;
	rval.client_port = p->key.sport;
	rval.frontend = p->dsr_addr;
	rval.frontend_port = p->dsr_port;
	rval.flags = CT_F_DSR;
	rval.last_seen_ns = bpf_ktime_get_ns();
	cur = bpf_map_lookup_elem(&sm_ct_reply, &rkey);
	if (cur && addr_eq(&cur->frontend, &p->dsr_addr) && cur->frontend_port == p->dsr_port &&
	    !(cur->flags & CT_F_SNAT)) {
		cur->last_seen_ns = rval.last_seen_ns;
		cur->flags &= ~CT_F_CLOSING; /* a new SYN on the tuple: a new flow */
		return NP_DSR_LEARNED;
	}
	if (bpf_map_update_elem(&sm_ct_reply, &rkey, &rval, BPF_ANY))
		return NP_DROP_CT_FULL;
	return NP_DSR_LEARNED;
}

/* dsr_insert4 puts the frontend into the packet as an IPv4 option, right after the
 * base header, for the backend's node (the L4 checksum does not cover IP options). */
static __always_inline int dsr_insert4(struct __sk_buff *skb, const struct lb_addr *fe, __u16 fe_port)
{
	struct dsr_opt o = {.type = DSR_OPT_TYPE, .len = DSR_OPT_LEN, .port = fe_port, .addr = fe->addr[0]};
	__u32 l3 = sizeof(struct ethhdr);
	__u16 w0_old, w0_new, len_old, len_new;
	__u8 *b = (__u8 *)&w0_new;
	__s64 diff;

	if (bpf_skb_load_bytes(skb, l3, &w0_old, 2) || bpf_skb_load_bytes(skb, l3 + 2, &len_old, 2))
		return -1;
	if ((((__u8 *)&w0_old)[0] & 0xf) > 15 - DSR_OPT_LEN / 4)
		return NP_DROP_DSR_OPTION;
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0))
		return NP_DROP_DSR_OPTION;
	w0_new = w0_old;
	b[0] += DSR_OPT_LEN / 4; /* IHL, in the low nibble */
	len_new = bpf_htons(bpf_ntohs(len_old) + DSR_OPT_LEN);
	diff = bpf_csum_diff(0, 0, (__be32 *)&o, sizeof(o), 0);
	if (diff < 0 || bpf_l3_csum_replace(skb, l3 + 10, w0_old, w0_new, 2) ||
	    bpf_l3_csum_replace(skb, l3 + 10, len_old, len_new, 2) ||
	    bpf_l3_csum_replace(skb, l3 + 10, 0, diff, 0) ||
	    bpf_skb_store_bytes(skb, l3, &w0_new, 2, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 2, &len_new, 2, 0) ||
	    bpf_skb_store_bytes(skb, l3 + sizeof(struct iphdr), &o, sizeof(o), 0))
		return -1;
	return 0;
}

/* icmp_error4 sends an ICMP error about a packet this node SNATed toward a backend
 * (fragmentation needed on the way, port unreachable, time exceeded) to the client it
 * came from, about the packet as the client sent it: the outer destination becomes the
 * client, the quoted header the client's own (client -> frontend). Returns NP_PASS
 * when the packet is no such error. */
static __attribute__((noinline)) int icmp_error4(struct __sk_buff *skb, struct bpf_fib_lookup *f)
{
	struct { __u8 type, code; __u16 csum; __u32 rest; } icmp;
	struct iphdr outer, inner;
	__u32 l3 = sizeof(struct ethhdr), icmp_off, in_off, in_l4, csum_off;
	struct ct_key key = {};
	struct ct_reply *rep;
	__u16 ports[2], new_ports[2], ttl_old, ttl_new, check_new;
	__u32 diff = 0;
	int rc;

	if (bpf_skb_load_bytes(skb, l3, &outer, sizeof(outer)) || outer.protocol != IPPROTO_ICMP ||
	    outer.ihl < 5 || (outer.frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return NP_PASS;
	icmp_off = l3 + (outer.ihl & 0xf) * 4;
	if (bpf_skb_load_bytes(skb, icmp_off, &icmp, sizeof(icmp)) || (icmp.type != 3 && icmp.type != 11))
		return NP_PASS;
	in_off = icmp_off + sizeof(icmp);
	if (bpf_skb_load_bytes(skb, in_off, &inner, sizeof(inner)) || inner.ihl < 5 ||
	    (inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP))
		return NP_PASS;
	in_l4 = in_off + (inner.ihl & 0xf) * 4;
	if (bpf_skb_load_bytes(skb, in_l4, ports, sizeof(ports)))
		return NP_PASS;
	/* The quoted packet went node -> backend: its reply tuple names the flow. */
	key.saddr.addr[0] = inner.daddr;
	key.daddr.addr[0] = inner.saddr;
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = inner.protocol;
	key.family = AF_INET;
	rep = bpf_map_lookup_elem(&sm_ct_reply, &key);
	if (!rep || !(rep->flags & CT_F_SNAT) || outer.daddr != inner.saddr)
		return NP_PASS;

	__builtin_memset(f, 0, sizeof(*f));
	f->family = AF_INET;
	f->ifindex = skb->ifindex;
	f->ipv4_src = outer.saddr;
	f->ipv4_dst = rep->client.addr[0];
	rc = bpf_fib_lookup(skb, f, sizeof(*f), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return NP_DROP_NO_ROUTE;
	if (outer.ttl <= 1)
		return NP_DROP_TTL;

	/* The quoted header: source client:port, destination frontend:port. */
	diff = csum_diff32(diff, inner.saddr, rep->client.addr[0]);
	diff = csum_diff32(diff, inner.daddr, rep->frontend.addr[0]);
	check_new = csum_apply(inner.check, diff);
	new_ports[0] = rep->client_port;
	new_ports[1] = rep->frontend_port;
	csum_off = icmp_off + 2;
	if (bpf_l4_csum_replace(skb, csum_off, inner.saddr, rep->client.addr[0], 4) ||
	    bpf_l4_csum_replace(skb, csum_off, inner.daddr, rep->frontend.addr[0], 4) ||
	    bpf_l4_csum_replace(skb, csum_off, inner.check, check_new, 2) ||
	    bpf_l4_csum_replace(skb, csum_off, ports[0], new_ports[0], 2) ||
	    bpf_l4_csum_replace(skb, csum_off, ports[1], new_ports[1], 2) ||
	    bpf_skb_store_bytes(skb, in_off + 12, &rep->client.addr[0], 4, 0) ||
	    bpf_skb_store_bytes(skb, in_off + 16, &rep->frontend.addr[0], 4, 0) ||
	    bpf_skb_store_bytes(skb, in_off + 10, &check_new, 2, 0) ||
	    bpf_skb_store_bytes(skb, in_l4, new_ports, sizeof(new_ports), 0))
		return NP_DROP_MALFORMED;
	/* The outer header: to the client, one hop on. */
	ttl_old = *(__u16 *)&outer.ttl;
	outer.ttl--;
	ttl_new = *(__u16 *)&outer.ttl;
	if (bpf_l3_csum_replace(skb, l3 + 10, outer.daddr, rep->client.addr[0], 4) ||
	    bpf_l3_csum_replace(skb, l3 + 10, ttl_old, ttl_new, 2) ||
	    bpf_skb_store_bytes(skb, l3 + 16, &rep->client.addr[0], 4, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 8, &ttl_new, 2, 0))
		return NP_DROP_MALFORMED;
	return NP_ICMP_ERROR;
}

/* dsr_insert6 puts the frontend into the packet as a destination option, in its own
 * header right after the base header (the L4 checksum covers neither). */
static __always_inline int dsr_insert6(struct __sk_buff *skb, const struct lb_addr *fe, __u16 fe_port)
{
	struct dsr6_hdr h = {.hdrlen = DSR6_HDR_LEN / 8 - 1, .opt_type = DSR6_OPT_TYPE,
			     .opt_len = DSR6_OPT_LEN, .port = fe_port, .pad_type = 1};
	__u32 l3 = sizeof(struct ethhdr);
	__u8 next = NEXTHDR_DEST;
	__u16 len;

	__builtin_memcpy(h.addr, fe->addr, 16);
	if (bpf_skb_load_bytes(skb, l3 + 6, &h.nexthdr, 1) || bpf_skb_load_bytes(skb, l3 + 4, &len, 2))
		return -1;
	if (bpf_skb_adjust_room(skb, DSR6_HDR_LEN, BPF_ADJ_ROOM_NET, 0))
		return NP_DROP_DSR_OPTION;
	len = bpf_htons(bpf_ntohs(len) + DSR6_HDR_LEN);
	if (bpf_skb_store_bytes(skb, l3 + 4, &len, 2, 0) || bpf_skb_store_bytes(skb, l3 + 6, &next, 1, 0) ||
	    bpf_skb_store_bytes(skb, l3 + sizeof(struct ipv6hdr), &h, sizeof(h), 0))
		return -1;
	return 0;
}

/* icmp_error6 is icmp_error4 for ICMPv6 (packet too big above all: IPv6 routers never
 * fragment, so a client that misses it stalls). ICMPv6's checksum covers a
 * pseudo-header with the outer addresses as well as the quoted packet. */
static __attribute__((noinline)) int icmp_error6(struct __sk_buff *skb, struct bpf_fib_lookup *f)
{
	struct { __u8 type, code; __u16 csum; __u32 rest; } icmp;
	struct ipv6hdr outer, inner;
	__u32 l3 = sizeof(struct ethhdr);
	__u32 icmp_off = l3 + sizeof(struct ipv6hdr), in_off = icmp_off + sizeof(icmp);
	__u32 in_l4 = in_off + sizeof(struct ipv6hdr), csum_off = icmp_off + 2;
	struct ct_key key = {};
	struct ct_reply *rep;
	__u16 ports[2], new_ports[2];
	__u32 from[12], to[12];
	__u8 hops;
	__s64 diff;
	int rc;

	if (bpf_skb_load_bytes(skb, l3, &outer, sizeof(outer)) || outer.nexthdr != 58 /* ICMPv6 */)
		return NP_PASS;
	if (bpf_skb_load_bytes(skb, icmp_off, &icmp, sizeof(icmp)) || icmp.type < 1 || icmp.type > 3)
		return NP_PASS;
	if (bpf_skb_load_bytes(skb, in_off, &inner, sizeof(inner)) ||
	    (inner.nexthdr != IPPROTO_TCP && inner.nexthdr != IPPROTO_UDP) ||
	    bpf_skb_load_bytes(skb, in_l4, ports, sizeof(ports)))
		return NP_PASS;
	__builtin_memcpy(key.saddr.addr, &inner.daddr, 16);
	__builtin_memcpy(key.daddr.addr, &inner.saddr, 16);
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = inner.nexthdr;
	key.family = AF_INET6;
	rep = bpf_map_lookup_elem(&sm_ct_reply, &key);
	if (!rep || !(rep->flags & CT_F_SNAT) || !addr_eq((struct lb_addr *)&outer.daddr, &key.daddr))
		return NP_PASS;

	__builtin_memset(f, 0, sizeof(*f));
	f->family = AF_INET6;
	f->ifindex = skb->ifindex;
	__builtin_memcpy(f->ipv6_src, &outer.saddr, 16);
	__builtin_memcpy(f->ipv6_dst, rep->client.addr, 16);
	rc = bpf_fib_lookup(skb, f, sizeof(*f), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return NP_DROP_NO_ROUTE;
	if (outer.hop_limit <= 1)
		return NP_DROP_TTL;

	/* Outer destination (in the pseudo-header), quoted source and destination. */
	__builtin_memcpy(from, &outer.daddr, 16);
	__builtin_memcpy(from + 4, &inner.saddr, 16);
	__builtin_memcpy(from + 8, &inner.daddr, 16);
	__builtin_memcpy(to, rep->client.addr, 16);
	__builtin_memcpy(to + 4, rep->client.addr, 16);
	__builtin_memcpy(to + 8, rep->frontend.addr, 16);
	diff = bpf_csum_diff(from, sizeof(from), to, sizeof(to), 0);
	new_ports[0] = rep->client_port;
	new_ports[1] = rep->frontend_port;
	hops = outer.hop_limit - 1;
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, 0) ||
	    bpf_l4_csum_replace(skb, csum_off, ports[0], new_ports[0], 2) ||
	    bpf_l4_csum_replace(skb, csum_off, ports[1], new_ports[1], 2) ||
	    bpf_skb_store_bytes(skb, l3 + 24, to, 16, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 7, &hops, 1, 0) ||
	    bpf_skb_store_bytes(skb, in_off + 8, to + 4, 32, 0) ||
	    bpf_skb_store_bytes(skb, in_l4, new_ports, sizeof(new_ports), 0))
		return NP_DROP_MALFORMED;
	return NP_ICMP_ERROR;
}

SEC("xdp")
int nodeport_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup f;
	struct pkt p = {};
	struct xlate x = {};
	int what, rc;

	what = parse(data, data_end, &p);
	if (what != PARSE_OK) {
		/* Fragments and odd headers go to tc, which sees the same packet next. */
		np_count(NP_PROG_XDP, NP_PASS);
		return XDP_PASS;
	}
	if (p.dsr || p.frag) {
		/* tc learns DSR flows and keeps the fragments' ports. */
		np_count(NP_PROG_XDP, NP_TO_STACK);
		return XDP_PASS;
	}
	what = classify(&p, ctx->ingress_ifindex, &x);
	if (what == NP_PASS || is_drop(what)) {
		np_count(NP_PROG_XDP, what);
		return what == NP_PASS ? XDP_PASS : XDP_DROP;
	}
	if (x.dsr_option) {
		/* Growing a packet here would mean moving its headers: tc adds the option. */
		np_count(NP_PROG_XDP, NP_TO_STACK);
		return XDP_PASS;
	}
	/* XDP has no neighbour resolution: without a resolved next hop the packet goes on
	 * untranslated, and tc finds the flow just recorded. */
	rc = fib(ctx, &p, &x, ctx->ingress_ifindex, &f);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		np_count(NP_PROG_XDP, NP_TO_STACK);
		return XDP_PASS;
	}
	rc = rewrite(data, data_end, &p, &x.saddr, x.sport, &x.daddr, x.dport, 1);
	if (rc) {
		np_count(NP_PROG_XDP, rc > 0 ? rc : NP_DROP_MALFORMED);
		return XDP_DROP;
	}
	if (data + sizeof(struct ethhdr) > data_end)
		return XDP_DROP;
	__builtin_memcpy(((struct ethhdr *)data)->h_dest, f.dmac, ETH_ALEN);
	__builtin_memcpy(((struct ethhdr *)data)->h_source, f.smac, ETH_ALEN);
	np_count(NP_PROG_XDP, what);
	if (f.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(f.ifindex, 0);
}

/* tc_icmp_error handles an ICMP or ICMPv6 packet on ingress: an error about a flow this
 * node SNATed goes on to its client; anything else is the stack's. */
static __attribute__((noinline)) int tc_icmp_error(struct __sk_buff *skb, __u16 proto)
{
	struct bpf_redir_neigh nh = {};
	struct bpf_fib_lookup f;
	int what;

	what = proto == bpf_htons(ETH_P_IPV6) ? icmp_error6(skb, &f) : icmp_error4(skb, &f);
	np_count(NP_PROG_TC_INGRESS, what);
	if (what != NP_ICMP_ERROR)
		return is_drop(what) ? TC_ACT_SHOT : TC_ACT_OK;
	nh.nh_family = f.family;
	if (f.family == AF_INET)
		nh.ipv4_nh = f.ipv4_dst;
	else
		__builtin_memcpy(nh.ipv6_nh, f.ipv6_dst, 16);
	return bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0);
}

/* tc_l4 is the ingress path of everything else; a subprogram of its own, so its stack
 * and the ICMP path's are never counted together. */
static __attribute__((noinline)) int tc_l4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct bpf_redir_neigh nh = {};
	struct bpf_fib_lookup f;
	struct pkt p = {};
	struct xlate x = {};
	int what, rc;

	what = parse(data, data_end, &p);
	if (what == PARSE_OTHER || what == PARSE_FRAGMENT) {
		np_count(NP_PROG_TC_INGRESS, NP_PASS);
		return TC_ACT_OK;
	}
	if (what == PARSE_SHORT) {
		/* Headers may sit beyond the linear part: pull them in and look again. */
		if (bpf_skb_pull_data(skb, 128) < 0 && bpf_skb_pull_data(skb, skb->len) < 0)
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (parse(data, data_end, &p) != PARSE_OK) {
			np_count(NP_PROG_TC_INGRESS, NP_PASS);
			return TC_ACT_OK;
		}
	}
	if (p.dsr) {
		what = dsr_learn(&p);
		np_count(NP_PROG_TC_INGRESS, what);
		return is_drop(what) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	what = classify(&p, skb->ifindex, &x);
	if (what == NP_PASS || is_drop(what)) {
		np_count(NP_PROG_TC_INGRESS, what);
		return what == NP_PASS ? TC_ACT_OK : TC_ACT_SHOT;
	}
	remember_fragment(&p);
	rc = fib(skb, &p, &x, skb->ifindex, &f);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		np_count(NP_PROG_TC_INGRESS, rc == BPF_FIB_LKUP_RET_FWD_DISABLED ?
				NP_DROP_FORWARDING_OFF : NP_DROP_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	rc = rewrite_skb(skb, &p, &x.saddr, x.sport, &x.daddr, x.dport, 1);
	if (!rc && x.dsr_option)
		rc = p.key.family == AF_INET ? dsr_insert4(skb, &p.key.daddr, p.key.dport)
					     : dsr_insert6(skb, &p.key.daddr, p.key.dport);
	if (rc) {
		np_count(NP_PROG_TC_INGRESS, rc > 0 ? rc : NP_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	np_count(NP_PROG_TC_INGRESS, what);
	nh.nh_family = f.family;
	if (f.family == AF_INET)
		nh.ipv4_nh = f.ipv4_dst;
	else
		__builtin_memcpy(nh.ipv6_nh, f.ipv6_dst, 16);
	return bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0);
}

SEC("tc")
int nodeport_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 *l3 = (void *)(eth + 1);

	/* The protocol byte of IPv4 (offset 9) and IPv6 (6) both lie in the first 10. */
	if ((void *)(l3 + 10) > data_end)
		return tc_l4(skb); /* it pulls what it needs */
	if ((eth->h_proto == bpf_htons(ETH_P_IP) && l3[9] == IPPROTO_ICMP) ||
	    (eth->h_proto == bpf_htons(ETH_P_IPV6) && l3[6] == 58 /* ICMPv6 */))
		return tc_icmp_error(skb, eth->h_proto);
	return tc_l4(skb);
}

/* The egress half: a reply from a backend on this node, leaving for the client, gets the
 * frontend back as its source. The stack has routed it already. */
SEC("tc")
int nodeport_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 zero = 0;
	struct np_config *cfg;
	struct ct_reply *rep;
	struct pkt p = {};
	__u64 now;

	if (parse(data, data_end, &p) != PARSE_OK) {
		if (bpf_skb_pull_data(skb, 128) < 0)
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (parse(data, data_end, &p) != PARSE_OK)
			return TC_ACT_OK;
	}
	rep = bpf_map_lookup_elem(&sm_ct_reply, &p.key);
	if (!rep || (rep->flags & CT_F_SNAT)) {
		np_count(NP_PROG_TC_EGRESS, NP_PASS);
		return TC_ACT_OK;
	}
	cfg = bpf_map_lookup_elem(&sm_np_config, &zero);
	now = bpf_ktime_get_ns();
	if (now - rep->last_seen_ns > timeout_ns(cfg, p.key.proto, rep->flags)) {
		np_count(NP_PROG_TC_EGRESS, NP_PASS);
		return TC_ACT_OK;
	}
	touch(&rep->last_seen_ns, &rep->flags, &p, now);
	remember_fragment(&p);
	if (rewrite_skb(skb, &p, &rep->frontend, rep->frontend_port, &p.key.daddr, p.key.dport, 0)) {
		np_count(NP_PROG_TC_EGRESS, NP_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	np_count(NP_PROG_TC_EGRESS, NP_REPLY);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
