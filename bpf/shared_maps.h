/* Maps used by more than one BPF object. Each object declares them identically and
 * they are pinned by name, so the objects share one instance. */
#pragma once

#include "sock_lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CNT_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_config SEC(".maps");

/* Original destination by socket cookie, from connect() until the SYN leaves. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct origdst);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_origdst_ck SEC(".maps");

/* Addresses of this node (local pods, the Envoy listener), written by the agent's LB
 * writer: only connections to them can have a peer to splice with. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_addr);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_local SEC(".maps");

static __always_inline void count_n(__u32 id, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sm_counters, &id);
	if (v)
		*v += n;
}

static __always_inline void count(__u32 id) { count_n(id, 1); }

static __always_inline struct config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sm_config, &zero);
}
