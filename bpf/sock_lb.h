/* Structs and maps shared by sockmesh's socket-layer programs. Every struct here reaches
 * Go through `bpf2go -type`; never mirror them by hand. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

#define ECONNREFUSED 111

#define SYS_REJECT 0
#define SYS_PROCEED 1

/* An IPv4 address lives in addr[0] with the rest zero; an IPv6 one fills all four words.
 * All addresses and ports are in network byte order, as the kernel hands them over. */
struct lb_addr {
	__u32 addr[4];
};

/* What a client dials: the service map's key. */
struct svc_key {
	struct lb_addr vip;
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct svc_value {
	__u32 id;               /* stable per frontend; keys slots, affinity and names */
	__u32 count;            /* number of slots (1..count) to pick from; 0 = no backend */
	__u32 affinity_timeout; /* ClientIP session affinity in seconds; 0 = none */
	__u32 flags;            /* SVC_F_* */
};

enum svc_flags {
	/* TCP connects go to the node's Envoy, which learns the VIP via SO_ORIGINAL_DST. */
	SVC_F_L7 = 1 << 0,
	/* A NodePort, externalIP or LoadBalancer frontend: the NodePort programs serve
	 * only these (a packet from outside to a cluster IP is not theirs). */
	SVC_F_EXTERNAL = 1 << 1,
	/* loadBalancerSourceRanges apply: sm_np_ranges says which sources may connect. */
	SVC_F_SOURCE_RANGES = 1 << 2,
	/* A LoadBalancer ingress IP (else an external one is an externalIP or, at the
	 * unspecified address, a NodePort): for readers such as lb list. */
	SVC_F_LOADBALANCER = 1 << 3,
	/* The slots are a Maglev table: the NodePort programs pick slot hash(flow) % count
	 * + 1, so every node sends a flow to the same backend. */
	SVC_F_MAGLEV = 1 << 4,
};

/* Slot n of service id: weighted random selection repeats a backend over several slots. */
struct slot_key {
	__u32 svc_id;
	__u32 slot;
};

/* A backend entry is per (service, address) and names its service, so a stale affinity
 * entry or slot never reaches another service's backend: its id may have passed to one.
 * sm_backends is an array by id; an entry of family 0 holds no backend. */
struct backend_value {
	struct lb_addr addr;
	__u16 port;
	__u8 proto;
	__u8 family;
	__u32 svc_id;
	__u32 slots; /* how many of the service's slots pick it, for readers (lb list) */
};

/* ClientIP affinity: in socket-LB the client is a network namespace (a pod), named by
 * its cookie, since the source address is not chosen yet at connect(). */
struct affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

struct affinity_value {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/* Reverse translation for getpeername() and UDP recvmsg(): per socket, backend → VIP. */
struct revnat_key {
	__u64 cookie;
	struct lb_addr addr;
	__u16 port;
	__u8 family;
	__u8 pad[5];
};

struct revnat_value {
	struct lb_addr vip;
	__u16 port;
	__u8 proto;
	__u8 family;
	__u32 svc_id;
};

/* The agent's runtime settings for the datapath, one entry in sm_config. */
struct config {
	struct lb_addr redirect4; /* Envoy's redirect listener, IPv4 */
	struct lb_addr redirect6; /* and IPv6 */
	__u16 redirect4_port;     /* network order; 0 = no IPv4 listener (fail closed) */
	__u16 redirect6_port;
	__u32 envoy_mark;         /* SO_MARK of Envoy's own sockets; 0 = none */
	__u32 splice;             /* enum splice_mode */
	__u32 reserved;           /* was the splice budget; keeps the pinned value's size */
};

enum splice_mode {
	SPLICE_OFF = 0,
	SPLICE_ON = 1,   /* every local pair, both directions */
	SPLICE_AUTO = 2, /* only app -> Envoy's redirect listener (see README for why) */
};

/* Where a redirected connection was going. */
struct origdst {
	struct lb_addr vip;
	__u16 port;   /* network order */
	__u8 family;
	__u8 proto;
	__u32 svc_id;
};

/* Human name of a service id, for `sockmesh lb list` while the agent is down. */
struct svc_name {
	char name[128];
};

enum counter_id {
	CNT_XLATE_TCP4,
	CNT_XLATE_TCP6,
	CNT_XLATE_UDP4,
	CNT_XLATE_UDP6,
	CNT_NO_BACKEND,
	CNT_SLOT_MISS,
	CNT_BACKEND_MISS,
	CNT_AFFINITY_HIT,
	CNT_REVNAT_HIT,
	CNT_REVNAT_STALE,
	CNT_REVNAT_UPDATE_FAIL,
	CNT_REDIRECT,          /* connects sent to Envoy */
	CNT_REDIRECT_NO_PROXY, /* L7 connects refused: no redirect listener for the family */
	CNT_ORIGDST_HIT,       /* SO_ORIGINAL_DST answered for a redirected socket */
	CNT_ORIGDST_MISS,      /* SO_ORIGINAL_DST for a socket sockmesh did not redirect */
	CNT_SPLICE_SOCKS,      /* sockets put in the sockhash */
	CNT_SPLICE_PAIRS,      /* connections paired for splicing */
	CNT_SPLICE_MSGS,       /* messages spliced */
	CNT_SPLICE_BYTES,      /* bytes spliced */
	CNT_FALLBACK_SENT_EARLY,  /* a direction sent through TCP before pairing */
	CNT_FALLBACK_SEQ_MISMATCH, /* tuple matched but sequence numbers did not */
	CNT_FALLBACK_PEER_GONE,   /* peer left the sockhash; back to TCP */
	CNT_FALLBACK_MAP_FULL,    /* sockhash or peer map full */
	CNT_RESERVED_23,       /* was the backpressure fallback; splices no longer change course */
	CNT_ORIGDST_AMBIGUOUS, /* two redirected connections matched one hand-off key: neither answered */
	CNT_MAX,
};

/* The counter array has room to grow without changing its pinned size. */
#define CNT_SLOTS 64
