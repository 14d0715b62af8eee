/* Structs of the sockops object (splice pairing and the original-destination hand-off).
 * Every struct here reaches Go through `bpf2go -type`; never mirror them by hand. */
#pragma once

#include "sock_lb.h"

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

/* A redirected connection waiting for Envoy's accept: the tuple as the accepted socket
 * will see it, and both initial sequence numbers (plus one). The same tuple in two
 * network namespaces has other sequence numbers, so each accepted socket finds its own
 * connection, whichever namespaces the two ends are in. */
struct origdst_key {
	struct sock_tuple t;
	__u32 client_seq; /* the client's snd_nxt when established = Envoy's rcv_nxt */
	__u32 proxy_seq;  /* the client's rcv_nxt = Envoy's snd_nxt */
};

struct origdst_pending {
	struct origdst od;
	__u64 cookie; /* the client socket's, to tell a second connection with this key */
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
	__u32 state;       /* enum splice_state of this socket's sends */
	__u32 pad;
};

/* A direction's state is decided once, before its first byte, and then only ever
 * leaves ACTIVE when the receiver is gone: no byte is ever split between the spliced
 * path and TCP within a direction that has a reader. */
enum splice_state {
	SPLICE_FRESH = 0,     /* established, peer not confirmed, nothing sent yet */
	SPLICE_UNSPLICED = 1, /* this direction uses TCP for the connection's life */
	SPLICE_ACTIVE = 2,    /* sends go straight into the peer's receive queue */
	SPLICE_BROKEN = 3,    /* peer closed: back to TCP, which reports the reset */
};
