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
};

/* Slot n of service id: weighted random selection repeats a backend over several slots. */
struct slot_key {
	__u32 svc_id;
	__u32 slot;
};

/* Backend ids are unique per (service, address), so an entry exists exactly while the
 * backend is selected for its service: a stale affinity entry cannot resurrect it. */
struct backend_value {
	struct lb_addr addr;
	__u16 port;
	__u8 proto;
	__u8 family;
	__u32 svc_id;
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
	__u32 splice_budget;      /* least bytes spliced into a receiver before its sender
				   * goes back to TCP (more if its SO_RCVBUF is larger) */
};

enum splice_mode {
	SPLICE_OFF = 0,
	SPLICE_ON = 1,  /* every local pair */
	SPLICE_AUTO = 2, /* only app <-> Envoy redirect listener (see README for why) */
};

/* Where a redirected connection was going. */
struct origdst {
	struct lb_addr vip;
	__u16 port;   /* network order */
	__u8 family;
	__u8 proto;
	__u32 svc_id;
};

/* A TCP 4-tuple as one socket sees it; ports in host order. */
struct sock_tuple {
	struct lb_addr local;
	struct lb_addr remote;
	__u32 local_port;
	__u32 remote_port;
	__u32 family;
	__u32 pad;
};

/* A socket in the sockhash: its tuple and its network namespace, so the same loopback
 * tuple in two namespaces are two keys. */
struct sock_key {
	struct sock_tuple t;
	__u64 netns;
};

/* A connecting socket waiting for its local peer's accept, keyed by its tuple and the
 * sequence number its peer will expect: exactly one passive socket can match, so the
 * same tuple in another namespace, or reused, cannot. */
struct pending_key {
	struct sock_tuple t;
	__u32 snd_nxt;
	__u32 pad;
	/* For loopback tuples, the namespace: both ends share it, and initial sequence
	 * numbers do not depend on it, so the same tuple connecting at the same moment in
	 * two namespaces would otherwise get the same key. 0 for other tuples, whose ends
	 * may be in different namespaces. */
	__u64 netns;
};

struct splice_pending {
	__u64 netns;
	__u64 cookie;
	__u32 rcv_nxt;
	__u32 pad;
};

/* What a spliced socket keeps in its own storage. */
struct sk_splice {
	struct sock_key key;
	__u64 cookie;
};

/* Where a socket's sends go, and whether they may. Entries are keyed by tuple and
 * namespace, which a later connection can reuse: cookies say whose entry it is. */
struct splice_peer {
	struct sock_key peer;
	__u64 cookie;      /* the socket this entry belongs to */
	__u64 peer_cookie; /* and its peer */
	__u64 spliced;     /* bytes this socket's sends moved into its peer so far */
	__u64 psock;       /* before pairing: this socket's psock (kernel address); once
			    * paired: the peer's, whose queue length says what its reader
			    * has not consumed yet (0: unknown) */
	__u32 budget;      /* before pairing: how many bytes may be spliced into this
			    * socket; once paired: how many its sends may splice into the
			    * peer (the peer's figure), so sk_msg needs no second lookup */
	__u32 state;       /* enum splice_state of this socket's sends */
};

enum splice_state {
	SPLICE_FRESH = 0,    /* established, peer not confirmed, nothing sent yet */
	SPLICE_UNSPLICED = 1, /* sent through TCP first: splicing now would reorder bytes */
	SPLICE_ACTIVE = 2,   /* sends go straight into the peer's receive queue */
	SPLICE_BROKEN = 3,   /* peer gone: back to TCP, which reports the reset */
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
	CNT_FALLBACK_BACKPRESSURE, /* receiver stopped reading: the direction goes back to TCP */
	CNT_MAX,
};

/* The counter array has room to grow without changing its pinned size. */
#define CNT_SLOTS 64
