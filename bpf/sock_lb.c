//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-layer load balancing: a connect() or UDP sendmsg() to a service's virtual
 * address becomes one to a chosen backend before any packet exists, so there is no
 * per-packet NAT and no conntrack; getpeername() and recvmsg() translate back so the
 * application only ever sees the virtual address. */
#include "shared_maps.h"
#include "lb_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct svc_name);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_svc_names SEC(".maps");

/* Set by the agent from a kernel probe: bpf_set_retval (5.18+) lets a rejected connect()
 * fail with ECONNREFUSED, like kube-proxy's REJECT, instead of EPERM. */
volatile const __u8 have_set_retval = 0;

/* Keep these enums in BTF so bpf2go exports their values to Go. */
const enum counter_id *unused_counter_id __attribute__((unused));
const enum svc_flags *unused_svc_flags __attribute__((unused));
const enum splice_mode *unused_splice_mode __attribute__((unused));

static __always_inline int reject(void)
{
	if (have_set_retval)
		bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

static __always_inline __u32 xlate_counter(__u8 proto, __u8 family)
{
	if (proto == IPPROTO_TCP)
		return family == AF_INET ? CNT_XLATE_TCP4 : CNT_XLATE_TCP6;
	return family == AF_INET ? CNT_XLATE_UDP4 : CNT_XLATE_UDP6;
}

/* pick_backend returns the backend for a new connection or datagram to svc, honouring
 * ClientIP affinity, or NULL when the service has none to offer. */
static __always_inline struct backend_value *pick_backend(struct bpf_sock_addr *ctx,
							   const struct svc_value *svc)
{
	struct affinity_key akey = {};
	struct affinity_value aval = {};
	struct backend_value *be;
	struct slot_key skey = {};
	__u64 now = 0;
	__u32 *id;

	if (svc->affinity_timeout) {
		struct affinity_value *prev;

		akey.netns_cookie = bpf_get_netns_cookie(ctx);
		akey.svc_id = svc->id;
		now = bpf_ktime_get_ns();
		prev = bpf_map_lookup_elem(&sm_affinity, &akey);
		if (prev && now - prev->last_used_ns <= (__u64)svc->affinity_timeout * 1000000000ULL) {
			be = bpf_map_lookup_elem(&sm_backends, &prev->backend_id);
			if (be && be->family && be->svc_id == svc->id) {
				prev->last_used_ns = now;
				count(CNT_AFFINITY_HIT);
				return be;
			}
		}
	}
	if (svc->count == 0) {
		count(CNT_NO_BACKEND);
		return NULL;
	}
	skey.svc_id = svc->id;
	skey.slot = bpf_get_prandom_u32() % svc->count + 1;
	id = bpf_map_lookup_elem(&sm_slots, &skey);
	if (!id) {
		count(CNT_SLOT_MISS);
		return NULL;
	}
	be = bpf_map_lookup_elem(&sm_backends, id);
	/* Empty, or a slot read just before its service went whose id passed to another. */
	if (!be || !be->family || be->svc_id != svc->id) {
		count(CNT_BACKEND_MISS);
		return NULL;
	}
	if (svc->affinity_timeout) {
		aval.last_used_ns = now;
		aval.backend_id = *id;
		bpf_map_update_elem(&sm_affinity, &akey, &aval, BPF_ANY);
	}
	return be;
}

/* remember_vip lets getpeername() and recvmsg() show the VIP for a socket whose
 * destination became addr:port. */
static __always_inline void remember_vip(struct bpf_sock_addr *ctx, const struct svc_key *key,
					 __u32 svc_id, const struct lb_addr *addr, __u16 port)
{
	struct revnat_key rkey = {};
	struct revnat_value rval = {};
	struct revnat_value *cur;

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = *addr;
	rkey.port = port;
	rkey.family = key->family;
	rval.vip = key->vip;
	rval.port = key->port;
	rval.proto = key->proto;
	rval.family = key->family;
	rval.svc_id = svc_id;
	/* UDP sends come here per datagram, mostly to a backend already remembered: skip
	 * the LRU map's locked update when the entry is there and the same. */
	cur = bpf_map_lookup_elem(&sm_revnat, &rkey);
	if (cur && cur->svc_id == svc_id && cur->port == rval.port && cur->proto == rval.proto &&
	    cur->family == rval.family && cur->vip.addr[0] == rval.vip.addr[0] &&
	    cur->vip.addr[1] == rval.vip.addr[1] && cur->vip.addr[2] == rval.vip.addr[2] &&
	    cur->vip.addr[3] == rval.vip.addr[3])
		return;
	if (bpf_map_update_elem(&sm_revnat, &rkey, &rval, BPF_ANY))
		count(CNT_REVNAT_UPDATE_FAIL);
}

/* wants_proxy says whether this connect to an L7 service goes to Envoy: TCP, and not
 * from Envoy itself (its sockets carry the mark), which would loop. */
static __always_inline int wants_proxy(struct bpf_sock_addr *ctx, const struct svc_key *key,
				       const struct svc_value *svc, const struct config *cfg)
{
	struct bpf_sock *sk = ctx->sk;

	if (!(svc->flags & SVC_F_L7) || key->proto != IPPROTO_TCP)
		return 0;
	if (cfg && cfg->envoy_mark && sk && sk->mark == cfg->envoy_mark)
		return 0;
	return 1;
}

/* redirect sends the connect to Envoy's listener and records the original destination
 * for SO_ORIGINAL_DST. Without a listener address for the family it fails closed. */
static __always_inline int redirect(struct bpf_sock_addr *ctx, const struct svc_key *key,
				    const struct svc_value *svc, const struct config *cfg,
				    struct lb_addr *out_addr, __u16 *out_port)
{
	struct origdst od = {};
	__u64 cookie;

	if (!cfg)
		goto refuse;
	if (key->family == AF_INET && cfg->redirect4_port) {
		*out_addr = cfg->redirect4;
		*out_port = cfg->redirect4_port;
	} else if (key->family == AF_INET6 && cfg->redirect6_port) {
		*out_addr = cfg->redirect6;
		*out_port = cfg->redirect6_port;
	} else {
		goto refuse;
	}
	od.vip = key->vip;
	od.port = key->port;
	od.family = key->family;
	od.proto = key->proto;
	od.svc_id = svc->id;
	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&sm_origdst_ck, &cookie, &od, BPF_ANY))
		goto refuse;
	remember_vip(ctx, key, svc->id, out_addr, *out_port);
	count(CNT_REDIRECT);
	return 1;
refuse:
	count(CNT_REDIRECT_NO_PROXY);
	return -1;
}

/* translate rewrites ctx's destination when it is a service frontend (a NodePort at a
 * node address too): to a backend, or to Envoy for L7 services. The address in key has been filled from ctx by the caller. */
static __always_inline int translate(struct bpf_sock_addr *ctx, struct svc_key *key,
				     struct lb_addr *out_addr, __u16 *out_port)
{
	struct backend_value *be;
	struct svc_value *svc;
	struct config *cfg;

	svc = lookup_frontend(key);
	if (!svc)
		return 0;
	if (svc->flags & SVC_F_L7) {
		cfg = config();
		if (wants_proxy(ctx, key, svc, cfg))
			return redirect(ctx, key, svc, cfg, out_addr, out_port);
	}
	be = pick_backend(ctx, svc);
	if (!be)
		return -1;
	remember_vip(ctx, key, svc->id, &be->addr, be->port);
	*out_addr = be->addr;
	*out_port = be->port;
	count(xlate_counter(key->proto, key->family));
	return 1;
}

/* reverse finds the service address a socket's peer stands for, if any. */
static __always_inline struct revnat_value *reverse(void *ctx, struct revnat_key *rkey)
{
	struct revnat_value *rv;
	struct svc_key skey = {};

	rkey->cookie = bpf_get_socket_cookie(ctx);
	rv = bpf_map_lookup_elem(&sm_revnat, rkey);
	if (!rv)
		return NULL;
	/* The service may be gone: then the application sees the real peer again. */
	skey.vip = rv->vip;
	skey.port = rv->port;
	skey.proto = rv->proto;
	skey.family = rv->family;
	if (!lookup_frontend(&skey)) {
		bpf_map_delete_elem(&sm_revnat, rkey);
		count(CNT_REVNAT_STALE);
		return NULL;
	}
	count(CNT_REVNAT_HIT);
	return rv;
}

static __always_inline int is_lb_proto(__u32 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

static __always_inline int xlate4(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct lb_addr addr;
	__u16 port;
	int ret;

	if (!is_lb_proto(ctx->protocol))
		return SYS_PROCEED;
	key.vip.addr[0] = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	key.proto = ctx->protocol;
	key.family = AF_INET;
	ret = translate(ctx, &key, &addr, &port);
	if (ret < 0)
		return reject();
	if (ret > 0) {
		ctx->user_ip4 = addr.addr[0];
		ctx->user_port = port;
	}
	return SYS_PROCEED;
}

/* A v4-mapped address (::ffff:a.b.c.d) on an IPv6 socket is an IPv4 destination. */
static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int xlate6(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct lb_addr addr;
	__u16 port;
	int ret;

	if (!is_lb_proto(ctx->protocol))
		return SYS_PROCEED;
	key.vip.addr[0] = ctx->user_ip6[0];
	key.vip.addr[1] = ctx->user_ip6[1];
	key.vip.addr[2] = ctx->user_ip6[2];
	key.vip.addr[3] = ctx->user_ip6[3];
	key.family = AF_INET6;
	if (is_v4_mapped(key.vip.addr)) {
		key.vip.addr[0] = key.vip.addr[3];
		key.vip.addr[1] = key.vip.addr[2] = key.vip.addr[3] = 0;
		key.family = AF_INET;
	}
	key.port = (__u16)ctx->user_port;
	key.proto = ctx->protocol;
	ret = translate(ctx, &key, &addr, &port);
	if (ret < 0)
		return reject();
	if (ret == 0)
		return SYS_PROCEED;
	if (key.family == AF_INET) {
		ctx->user_ip6[3] = addr.addr[0];
	} else {
		ctx->user_ip6[0] = addr.addr[0];
		ctx->user_ip6[1] = addr.addr[1];
		ctx->user_ip6[2] = addr.addr[2];
		ctx->user_ip6[3] = addr.addr[3];
	}
	ctx->user_port = port;
	return SYS_PROCEED;
}

static __always_inline void rev4(struct bpf_sock_addr *ctx)
{
	struct revnat_key rkey = {};
	struct revnat_value *rv;

	rkey.addr.addr[0] = ctx->user_ip4;
	rkey.port = (__u16)ctx->user_port;
	rkey.family = AF_INET;
	rv = reverse(ctx, &rkey);
	if (!rv)
		return;
	ctx->user_ip4 = rv->vip.addr[0];
	ctx->user_port = rv->port;
}

static __always_inline void rev6(struct bpf_sock_addr *ctx)
{
	struct revnat_key rkey = {};
	struct revnat_value *rv;
	int mapped;

	rkey.addr.addr[0] = ctx->user_ip6[0];
	rkey.addr.addr[1] = ctx->user_ip6[1];
	rkey.addr.addr[2] = ctx->user_ip6[2];
	rkey.addr.addr[3] = ctx->user_ip6[3];
	rkey.family = AF_INET6;
	mapped = is_v4_mapped(rkey.addr.addr);
	if (mapped) {
		rkey.addr.addr[0] = rkey.addr.addr[3];
		rkey.addr.addr[1] = rkey.addr.addr[2] = rkey.addr.addr[3] = 0;
		rkey.family = AF_INET;
	}
	rkey.port = (__u16)ctx->user_port;
	rv = reverse(ctx, &rkey);
	if (!rv)
		return;
	if (mapped) {
		ctx->user_ip6[3] = rv->vip.addr[0];
	} else {
		ctx->user_ip6[0] = rv->vip.addr[0];
		ctx->user_ip6[1] = rv->vip.addr[1];
		ctx->user_ip6[2] = rv->vip.addr[2];
		ctx->user_ip6[3] = rv->vip.addr[3];
	}
	ctx->user_port = rv->port;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx) { return xlate4(ctx); }

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx) { return xlate4(ctx); }

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx) { rev4(ctx); return SYS_PROCEED; }

SEC("cgroup/getpeername4")
int sock4_getpeer(struct bpf_sock_addr *ctx) { rev4(ctx); return SYS_PROCEED; }

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx) { return xlate6(ctx); }

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx) { return xlate6(ctx); }

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx) { rev6(ctx); return SYS_PROCEED; }

SEC("cgroup/getpeername6")
int sock6_getpeer(struct bpf_sock_addr *ctx) { rev6(ctx); return SYS_PROCEED; }

char __license[] SEC("license") = "Dual BSD/GPL";
