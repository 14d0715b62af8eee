//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The L7 redirect's bookkeeping and the local splice.
 *
 * - sock_ops hands a redirected socket's original destination to the socket Envoy
 *   accepts for it: the client files it at establishment under the tuple and both
 *   sequence numbers, and Envoy's accepted socket takes it into its own storage before
 *   accept() returns. Sequence numbers tell apart the same tuple in two network
 *   namespaces, so each accepted socket answers for its own connection.
 * - sock_ops also pairs the two ends of a connection that both live on this node
 *   (sequence numbers must match, so a reused tuple or the same loopback tuple in
 *   another namespace is never paired).
 * - getsockopt answers SO_ORIGINAL_DST (and the IPv6 form) for exactly those sockets.
 * - sk_msg moves a paired socket's sends straight into its peer's receive queue. Each
 *   direction is decided once, before its first byte: spliced for the connection's
 *   life, or TCP for its life. Nothing ever moves a direction with a reader from one
 *   path to the other, so no byte can be reordered or lost in a transition. The agent
 *   only turns splicing on where the kernel's spliced sockets behave like TCP
 *   (sockops/kernelcheck.go). */
#include "shared_maps.h"
#include "sockops.h"

#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80
#define IP6T_SO_ORIGINAL_DST 80
#define BPF_TCP_CLOSE 7
#define EEXIST 17

/* Context fields are read through volatile so clang cannot merge the IPv4 and IPv6
 * branches into one load through a computed context pointer, which the verifier refuses. */
#define CTX(x) (*(volatile typeof(x) *)&(x))

struct sockaddr_in4 {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct sockaddr_in6x {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

/* Redirected connections between the client's establishment and Envoy's. Entries
 * nobody accepts (Envoy outside the managed cgroup) age out of the LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct origdst_key);
	__type(value, struct origdst_pending);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_origdst_pend SEC(".maps");

/* The original destination of a socket Envoy accepted, in that socket's own storage:
 * it lives exactly as long as the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origdst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_origdst_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct pending_key);
	__type(value, struct splice_pending);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sock_key);
	__type(value, struct splice_peer);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_peers SEC(".maps");

/* A spliced socket's own key and cookie, found again where the tuple is not readable
 * (close(), reads). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sk_splice);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_sk_key SEC(".maps");

const enum splice_state *unused_splice_state __attribute__((unused));

/* unmap turns an IPv6 tuple of v4-mapped addresses (a dual-stack socket talking IPv4)
 * into the IPv4 tuple its peer, an IPv4 socket, has. */
static __always_inline void unmap(struct sock_tuple *t)
{
	if (t->family != AF_INET6 || t->local.addr[0] || t->local.addr[1] ||
	    t->local.addr[2] != bpf_htonl(0x0000ffff) || t->remote.addr[0] || t->remote.addr[1] ||
	    t->remote.addr[2] != bpf_htonl(0x0000ffff))
		return;
	t->family = AF_INET;
	t->local.addr[0] = t->local.addr[3];
	t->remote.addr[0] = t->remote.addr[3];
	t->local.addr[2] = t->local.addr[3] = 0;
	t->remote.addr[2] = t->remote.addr[3] = 0;
}

/* tuple_of fills t from a sock_ops context, as this socket sees it. */
static __always_inline void tuple_of(struct bpf_sock_ops *s, struct sock_tuple *t)
{
	t->family = CTX(s->family);
	t->local_port = CTX(s->local_port);
	t->remote_port = bpf_ntohl(CTX(s->remote_port));
	if (s->family == AF_INET) {
		t->local.addr[0] = CTX(s->local_ip4);
		t->remote.addr[0] = CTX(s->remote_ip4);
		return;
	}
	t->local.addr[0] = CTX(s->local_ip6[0]);
	t->local.addr[1] = CTX(s->local_ip6[1]);
	t->local.addr[2] = CTX(s->local_ip6[2]);
	t->local.addr[3] = CTX(s->local_ip6[3]);
	t->remote.addr[0] = CTX(s->remote_ip6[0]);
	t->remote.addr[1] = CTX(s->remote_ip6[1]);
	t->remote.addr[2] = CTX(s->remote_ip6[2]);
	t->remote.addr[3] = CTX(s->remote_ip6[3]);
	unmap(t);
}

/* tuple_of_sk fills t from a socket as the socket sees itself; 0 if not IPv4/IPv6. */
static __always_inline int tuple_of_sk(struct bpf_sock *sk, struct sock_tuple *t)
{
	t->family = CTX(sk->family);
	t->local_port = CTX(sk->src_port);
	t->remote_port = bpf_ntohs(CTX(sk->dst_port));
	if (t->family == AF_INET) {
		t->local.addr[0] = CTX(sk->src_ip4);
		t->remote.addr[0] = CTX(sk->dst_ip4);
		return 1;
	}
	if (t->family != AF_INET6)
		return 0;
	t->local.addr[0] = CTX(sk->src_ip6[0]);
	t->local.addr[1] = CTX(sk->src_ip6[1]);
	t->local.addr[2] = CTX(sk->src_ip6[2]);
	t->local.addr[3] = CTX(sk->src_ip6[3]);
	t->remote.addr[0] = CTX(sk->dst_ip6[0]);
	t->remote.addr[1] = CTX(sk->dst_ip6[1]);
	t->remote.addr[2] = CTX(sk->dst_ip6[2]);
	t->remote.addr[3] = CTX(sk->dst_ip6[3]);
	unmap(t);
	return 1;
}

static __always_inline void reverse(const struct sock_tuple *in, struct sock_tuple *out)
{
	out->family = in->family;
	out->local = in->remote;
	out->remote = in->local;
	out->local_port = in->remote_port;
	out->remote_port = in->local_port;
}

static __always_inline int is_loopback(const struct sock_tuple *t)
{
	if (t->family == AF_INET)
		return (bpf_ntohl(t->remote.addr[0]) >> 24) == 127;
	return t->remote.addr[0] == 0 && t->remote.addr[1] == 0 && t->remote.addr[2] == 0 &&
	       t->remote.addr[3] == bpf_htonl(1);
}

/* splice_candidate says whether a connecting socket with tuple t may be spliced. */
static __always_inline int splice_candidate(const struct sock_tuple *t)
{
	struct config *cfg = config();

	if (!cfg || cfg->splice == SPLICE_OFF)
		return 0;
	if (cfg->splice == SPLICE_AUTO) {
		/* Only connections to Envoy's redirect listener: a receiver that reads with
		 * splice(2) never sees spliced bytes, and Envoy is the one receiver known to
		 * read with recv. */
		if (t->family == AF_INET)
			return cfg->redirect4_port && t->remote.addr[0] == cfg->redirect4.addr[0] &&
			       bpf_htons(t->remote_port) == cfg->redirect4_port;
		return cfg->redirect6_port && t->remote.addr[0] == cfg->redirect6.addr[0] &&
		       t->remote.addr[1] == cfg->redirect6.addr[1] &&
		       t->remote.addr[2] == cfg->redirect6.addr[2] &&
		       t->remote.addr[3] == cfg->redirect6.addr[3] &&
		       bpf_htons(t->remote_port) == cfg->redirect6_port;
	}
	return is_loopback(t) || bpf_map_lookup_elem(&sm_local, &t->remote);
}

static __always_inline void watch_close(struct bpf_sock_ops *s)
{
	bpf_sock_ops_cb_flags_set(s, s->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* spliced files a socket under key in the sockhash and its own storage. */
static __always_inline int spliced(struct bpf_sock_ops *s, struct sock_key *key, __u64 cookie)
{
	struct bpf_sock *sk = s->sk;
	struct sk_splice *stored;

	if (!sk || bpf_sock_hash_update(s, &sm_sockhash, key, BPF_ANY))
		return -1;
	stored = bpf_sk_storage_get(&sm_sk_key, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (stored) {
		stored->key = *key;
		stored->cookie = cookie;
	}
	count(CNT_SPLICE_SOCKS);
	watch_close(s);
	return 0;
}

/* origdst_file: a redirected client is established; file its original destination
 * for the socket Envoy will accept. Two connections with one key (the same tuple and
 * sequence numbers, in two namespaces at once) get no answer rather than a wrong one. */
static __always_inline void origdst_file(struct bpf_sock_ops *s)
{
	struct sock_tuple mine = {};
	struct origdst_key key = {};
	struct origdst_pending pend = {};
	struct origdst *od;
	__u64 cookie = bpf_get_socket_cookie(s);

	od = bpf_map_lookup_elem(&sm_origdst_ck, &cookie);
	if (!od)
		return;
	pend.od = *od;
	pend.cookie = cookie;
	bpf_map_delete_elem(&sm_origdst_ck, &cookie);
	tuple_of(s, &mine);
	reverse(&mine, &key.t);
	key.client_seq = s->snd_nxt;
	key.proxy_seq = s->rcv_nxt;
	if (bpf_map_update_elem(&sm_origdst_pend, &key, &pend, BPF_NOEXIST) == -EEXIST) {
		bpf_map_delete_elem(&sm_origdst_pend, &key);
		count(CNT_ORIGDST_AMBIGUOUS);
	}
}

/* origdst_take: an accepted socket takes the original destination of its own client,
 * if that client was redirected. This runs before accept() returns the socket. */
static __always_inline void origdst_take(struct bpf_sock_ops *s)
{
	struct origdst_key key = {};
	struct origdst_pending *pend;
	struct origdst *od;
	struct bpf_sock *sk = s->sk;

	tuple_of(s, &key.t);
	key.client_seq = s->rcv_nxt;
	key.proxy_seq = s->snd_nxt;
	pend = bpf_map_lookup_elem(&sm_origdst_pend, &key);
	if (!pend)
		return;
	od = sk ? bpf_sk_storage_get(&sm_origdst_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
	if (od)
		*od = pend->od;
	bpf_map_delete_elem(&sm_origdst_pend, &key);
}

/* on_active: a local connect completed; if the peer may be on this node, join the
 * sockhash and wait for it. */
static __always_inline void on_active(struct bpf_sock_ops *s)
{
	struct sock_key key = {};
	struct pending_key pkey = {};
	struct splice_pending pend = {};
	struct splice_peer peer = {};
	__u64 cookie;

	tuple_of(s, &key.t);
	if (!splice_candidate(&key.t))
		return;
	key.netns = bpf_get_netns_cookie(s);
	cookie = bpf_get_socket_cookie(s);
	peer.cookie = cookie;
	/* A stale entry of an earlier socket with this key must not steer this one. */
	if (bpf_map_update_elem(&sm_peers, &key, &peer, BPF_ANY) || spliced(s, &key, cookie)) {
		bpf_map_delete_elem(&sm_peers, &key);
		count(CNT_FALLBACK_MAP_FULL);
		return;
	}
	pkey.t = key.t;
	pkey.snd_nxt = s->snd_nxt;
	pkey.netns = is_loopback(&key.t) ? key.netns : 0;
	pend.netns = key.netns;
	pend.cookie = cookie;
	pend.rcv_nxt = s->rcv_nxt;
	bpf_map_update_elem(&sm_pending, &pkey, &pend, BPF_ANY);
}

/* on_passive: an accepted connection; pair it with its connecting end if that one is
 * waiting on this node. The connecting end's sends are spliced (the accepted socket,
 * Envoy's under auto, is their receiver); the accepted end's own sends only under on,
 * since under auto their receiver is the app, which may be any program. */
static __always_inline void on_passive(struct bpf_sock_ops *s)
{
	struct sock_key me = {}, them = {};
	struct pending_key pkey = {};
	struct splice_pending *pend;
	struct splice_peer mine = {};
	struct splice_peer *theirs;
	struct config *cfg;
	__u64 cookie, their_cookie;

	tuple_of(s, &me.t);
	reverse(&me.t, &pkey.t);
	pkey.snd_nxt = s->rcv_nxt;
	me.netns = bpf_get_netns_cookie(s);
	pkey.netns = is_loopback(&pkey.t) ? me.netns : 0;
	pend = bpf_map_lookup_elem(&sm_pending, &pkey);
	if (!pend)
		return;
	if (pend->rcv_nxt != s->snd_nxt) {
		count(CNT_FALLBACK_SEQ_MISMATCH);
		return;
	}
	them.t = pkey.t;
	them.netns = pend->netns;
	their_cookie = pend->cookie;
	cookie = bpf_get_socket_cookie(s);
	bpf_map_delete_elem(&sm_pending, &pkey);

	theirs = bpf_map_lookup_elem(&sm_peers, &them);
	if (!theirs || theirs->cookie != their_cookie)
		return;
	mine.peer = them;
	mine.cookie = cookie;
	mine.peer_cookie = their_cookie;
	/* Nothing sent yet: this callback runs before accept(). */
	cfg = config();
	mine.state = cfg && cfg->splice == SPLICE_ON ? SPLICE_ACTIVE : SPLICE_UNSPLICED;
	if (bpf_map_update_elem(&sm_peers, &me, &mine, BPF_ANY) || spliced(s, &me, cookie)) {
		bpf_map_delete_elem(&sm_peers, &me);
		count(CNT_FALLBACK_MAP_FULL);
		return;
	}
	/* The connecting side may have sent through TCP already; then that direction
	 * stays on TCP. The peer is written before the state, which publishes it. */
	theirs->peer = me;
	theirs->peer_cookie = cookie;
	if (__sync_val_compare_and_swap(&theirs->state, SPLICE_FRESH, SPLICE_ACTIVE) != SPLICE_FRESH)
		count(CNT_FALLBACK_SENT_EARLY);
	count(CNT_SPLICE_PAIRS);
}

static __always_inline void on_close(struct bpf_sock_ops *s)
{
	struct sock_key key = {};
	struct splice_peer *mine;

	tuple_of(s, &key.t);
	key.netns = bpf_get_netns_cookie(s);
	/* Only our own entry: a newer connection may have this tuple by now. Pending
	 * entries carry sequence numbers and age out of their LRU map. */
	mine = bpf_map_lookup_elem(&sm_peers, &key);
	if (mine && mine->cookie == bpf_get_socket_cookie(s))
		bpf_map_delete_elem(&sm_peers, &key);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *s)
{
	switch (s->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		origdst_file(s);
		on_active(s);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		origdst_take(s);
		on_passive(s);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (s->args[1] == BPF_TCP_CLOSE)
			on_close(s);
		break;
	}
	return 1;
}

/* getsockopt answers SO_ORIGINAL_DST for redirected connections only; every other call
 * returns what the kernel returned. */
SEC("cgroup/getsockopt")
int sock_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_tuple t = {};
	struct origdst *od;

	if (ctx->optname != SO_ORIGINAL_DST || !sk || sk->protocol != IPPROTO_TCP)
		return 1;
	if (ctx->level != SOL_IP && ctx->level != SOL_IPV6)
		return 1;
	if (!tuple_of_sk(sk, &t))
		return 1;
	/* SOL_IP needs an IPv4 connection (possibly on a dual-stack socket); SOL_IPV6 is
	 * answered for both, IPv4 destinations as v4-mapped. */
	if (ctx->level == SOL_IP && t.family != AF_INET)
		return 1;
	od = bpf_sk_storage_get(&sm_origdst_sk, sk, 0, 0);
	if (!od) {
		count(CNT_ORIGDST_MISS);
		return 1;
	}
	if (ctx->level == SOL_IP) {
		struct sockaddr_in4 *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end || od->family != AF_INET)
			return 1;
		sa->family = AF_INET;
		sa->port = od->port;
		sa->addr = od->vip.addr[0];
		__builtin_memset(sa->zero, 0, sizeof(sa->zero));
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6x *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->family = AF_INET6;
		sa->port = od->port;
		sa->flowinfo = 0;
		sa->scope_id = 0;
		if (od->family == AF_INET) { /* v4 VIP on a v6 socket: v4-mapped */
			sa->addr[0] = 0;
			sa->addr[1] = 0;
			sa->addr[2] = bpf_htonl(0x0000ffff);
			sa->addr[3] = od->vip.addr[0];
		} else {
			sa->addr[0] = od->vip.addr[0];
			sa->addr[1] = od->vip.addr[1];
			sa->addr[2] = od->vip.addr[2];
			sa->addr[3] = od->vip.addr[3];
		}
		ctx->optlen = sizeof(*sa);
	}
	ctx->retval = 0;
	count(CNT_ORIGDST_HIT);
	return 1;
}

static __always_inline void msg_key(struct sk_msg_md *m, struct sock_key *k)
{
	k->t.family = CTX(m->family);
	k->t.local_port = CTX(m->local_port);
	k->t.remote_port = bpf_ntohl(CTX(m->remote_port));
	if (m->family == AF_INET) {
		k->t.local.addr[0] = CTX(m->local_ip4);
		k->t.remote.addr[0] = CTX(m->remote_ip4);
	} else {
		k->t.local.addr[0] = CTX(m->local_ip6[0]);
		k->t.local.addr[1] = CTX(m->local_ip6[1]);
		k->t.local.addr[2] = CTX(m->local_ip6[2]);
		k->t.local.addr[3] = CTX(m->local_ip6[3]);
		k->t.remote.addr[0] = CTX(m->remote_ip6[0]);
		k->t.remote.addr[1] = CTX(m->remote_ip6[1]);
		k->t.remote.addr[2] = CTX(m->remote_ip6[2]);
		k->t.remote.addr[3] = CTX(m->remote_ip6[3]);
		unmap(&k->t);
	}
	k->netns = bpf_get_netns_cookie(m);
}

SEC("sk_msg")
int sock_msg(struct sk_msg_md *m)
{
	struct sock_key me = {}, peer;
	struct splice_peer *p;
	__u32 size = m->size;
	__u32 state;
	long ret;

	msg_key(m, &me);
	p = bpf_map_lookup_elem(&sm_peers, &me);
	if (!p)
		return SK_PASS;
	/* A first send before pairing settles this direction on TCP for good. */
	state = __sync_val_compare_and_swap(&p->state, SPLICE_FRESH, SPLICE_UNSPLICED);
	if (state == SPLICE_BROKEN)
		count(CNT_FALLBACK_PEER_GONE);
	if (state != SPLICE_ACTIVE)
		return SK_PASS;
	/* A closed peer has set this entry BROKEN in sock_release (before it left the
	 * sockhash), so its partner's sends went to TCP above, which answers them with a
	 * reset; a redirect failing here is the rare close racing this very send. */
	peer = p->peer;
	ret = bpf_msg_redirect_hash(m, &sm_sockhash, &peer, BPF_F_INGRESS);
	if (ret == SK_PASS) {
		count(CNT_SPLICE_MSGS);
		count_n(CNT_SPLICE_BYTES, size);
	} else {
		__sync_lock_test_and_set(&p->state, SPLICE_BROKEN);
		count(CNT_FALLBACK_PEER_GONE);
	}
	return ret;
}

/* sock_release runs at close(), before the socket leaves the sockhash: its peer's sends
 * go back to TCP, which answers them with the reset a closed socket deserves, instead of
 * a redirect to nowhere failing with EACCES. */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	struct splice_peer *mine, *theirs;
	struct sk_splice *st;

	st = bpf_sk_storage_get(&sm_sk_key, sk, 0, 0);
	if (!st)
		return 1;
	mine = bpf_map_lookup_elem(&sm_peers, &st->key);
	if (!mine || mine->cookie != st->cookie)
		return 1; /* the entry is a newer connection's, with the same tuple */
	theirs = bpf_map_lookup_elem(&sm_peers, &mine->peer);
	if (theirs && theirs->cookie == mine->peer_cookie)
		__sync_lock_test_and_set(&theirs->state, SPLICE_BROKEN);
	bpf_map_delete_elem(&sm_peers, &st->key);
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
