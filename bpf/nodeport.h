/* Structs shared by the NodePort programs (nodeport.c) and Go. Every struct here reaches
 * Go through `bpf2go -type`; never mirror them by hand. */
#pragma once

#include "sock_lb.h"

/* One flow as the packet names it: addresses and ports in network order. A forward
 * entry is keyed by the client's packet to the frontend, a reply entry by the packet
 * the backend sends back, so each direction is found with one lookup. */
struct ct_key {
	struct lb_addr saddr;
	struct lb_addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/* A flow from a client to a frontend: where it went and how its source was rewritten.
 * nat_port is 0 when the source was kept (the backend is on this node). */
struct ct_forward {
	struct lb_addr backend;
	struct lb_addr nat_addr;
	__u16 backend_port;
	__u16 nat_port;
	__u32 svc_id;
	__u64 last_seen_ns;
	__u32 flags; /* CT_F_* */
	__u32 pad;
};

/* The way back: the backend's reply becomes the frontend's reply to the client. */
struct ct_reply {
	struct lb_addr client;
	struct lb_addr frontend;
	__u16 client_port;
	__u16 frontend_port;
	__u32 svc_id;
	__u64 last_seen_ns;
	__u32 flags;
	__u32 pad;
};

enum ct_flags {
	CT_F_CLOSING = 1 << 0, /* a FIN or RST passed: the short timeout applies */
	CT_F_SNAT = 1 << 1,    /* the source was rewritten to nat_addr:nat_port */
	CT_F_DSR = 1 << 2,     /* the backend's node answers the client itself */
};

/* How a flow to a backend on another node travels (np_config.mode). */
enum np_mode {
	NP_MODE_SNAT = 0,   /* source rewritten to this node: the reply comes back here */
	NP_MODE_DSR = 1,    /* client kept, frontend in an IP option: the reply goes straight back */
	NP_MODE_HYBRID = 2, /* DSR for TCP, SNAT for UDP (no option on every datagram) */
};

/* The IPv4 option a DSR packet carries to the backend's node: the frontend the client
 * asked for (copied on fragmentation, class 0, number 26, as Cilium's). */
#define DSR_OPT_TYPE 0x9a
#define DSR_OPT_LEN 8
struct dsr_opt {
	__u8 type;
	__u8 len;
	__u16 port; /* network order */
	__u32 addr;
};

/* The IPv6 carrier: a Destination Options header (next header 60) right after the
 * base header, with one option (type 0x1b: an unknown option a host skips, unchanged
 * en route) holding the frontend, and a PadN to the 8-byte boundary. */
#define NEXTHDR_DEST 60
#define DSR6_OPT_TYPE 0x1b
#define DSR6_OPT_LEN 18
#define DSR6_HDR_LEN 24
struct dsr6_hdr {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8 bytes, beyond the first 8: 2 */
	__u8 opt_type;
	__u8 opt_len;
	__u16 port;
	__u8 addr[16];
	__u8 pad_type; /* PadN */
	__u8 pad_len;  /* 0 */
};

/* The ports of a fragmented IPv4 datagram, recorded from its first fragment (the
 * only one with an L4 header), by the datagram's addresses, id and protocol. */
struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__u16 sport;
	__u16 dport;
};

/* The agent's NodePort settings, one entry in sm_np_config. Timeouts in seconds. */
struct np_config {
	__u16 snat_port_min; /* host order; source ports SNAT hands out */
	__u16 snat_port_max;
	__u32 tcp_timeout;
	__u32 tcp_closing_timeout;
	__u32 udp_timeout;
	__u32 mode; /* enum np_mode */
	__u32 maglev_seed; /* the flow hash's seed: the same on every node */
	__u32 reserved[6];
};

/* Addresses a NodePort device answers on and rewrites sources to (SNAT), by ifindex. */
struct np_device {
	struct lb_addr addr4; /* zero: no IPv4 address */
	struct lb_addr addr6;
};

/* loadBalancerSourceRanges: key of the LPM trie, by frontend id then source prefix. */
struct np_range_key {
	__u32 prefixlen; /* 32 (svc_id) + the prefix length */
	__u32 svc_id;
	struct lb_addr addr;
};

/* Which program counted: the index of a row in sm_np_counters. */
enum np_prog {
	NP_PROG_XDP,
	NP_PROG_TC_INGRESS,
	NP_PROG_TC_EGRESS,
	NP_PROG_MAX,
};

/* What happened to a packet; DROP_* are drop reasons. */
enum np_counter {
	NP_PASS,             /* not for a frontend: left to the stack */
	NP_NEW_FLOW,         /* first packet of a flow: backend picked, entries made */
	NP_FORWARD,          /* client → backend of a tracked flow */
	NP_REPLY,            /* backend → client of a tracked flow */
	NP_TO_STACK,         /* XDP saw a frontend packet it cannot finish; tc does */
	NP_DSR_LEARNED,      /* a DSR packet for a local backend: its reply will be translated */
	NP_ICMP_ERROR,       /* an ICMP error about a SNATed packet, sent on to its client */
	NP_DROP_NO_BACKEND,  /* frontend with no backend to pick (or none local) */
	NP_DROP_SOURCE_RANGE, /* source outside loadBalancerSourceRanges */
	NP_DROP_TTL,         /* TTL or hop limit ran out */
	NP_DROP_NO_PORT,     /* no free SNAT source port for the backend */
	NP_DROP_CT_FULL,     /* conntrack update failed */
	NP_DROP_NO_ROUTE,    /* no route to the backend or the client */
	NP_DROP_FORWARDING_OFF, /* the device does not forward (net.ipv4.ip_forward etc.) */
	NP_DROP_DSR_OPTION,  /* no room for the DSR option (40 bytes of options already) */
	NP_DROP_MALFORMED,   /* headers cut short */
	NP_COUNTER_MAX,
};

#define NP_COUNTER_SLOTS 32
