/* The service tables every load-balancing object reads: socket-LB at connect() and the
 * NodePort programs per packet find the same frontends and pick from the same slots
 * and backends. Each object
 * declares them identically (the agent sizes them alike) and they are pinned by name. */
#pragma once

#include "sock_lb.h"

/* Map sizes are defaults; the agent sets them from its flags before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct slot_key);
	__type(value, __u32);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_slots SEC(".maps");

/* An array by backend id, mmapable so a reader (`sockmesh lb list`) sees every backend
 * without a syscall per entry; the agent hands out ids below max_entries. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_backends SEC(".maps");

/* Every address of every NodePort device: where NodePorts answer, to packets from
 * outside (the NodePort programs) and to connects on this node (socket-LB). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_addr);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_np_addrs SEC(".maps");

/* lookup_frontend finds the service of key: by its address, else, when the address is
 * one of this node's NodePort addresses, the NodePort (the family's unspecified
 * address) of an external frontend. */
static __always_inline struct svc_value *lookup_frontend(const struct svc_key *key)
{
	struct svc_value *svc = bpf_map_lookup_elem(&sm_services, key);
	struct svc_key any;

	if (svc || !bpf_map_lookup_elem(&sm_np_addrs, &key->vip))
		return svc;
	any = *key;
	__builtin_memset(&any.vip, 0, sizeof(any.vip));
	svc = bpf_map_lookup_elem(&sm_services, &any);
	return svc && (svc->flags & SVC_F_EXTERNAL) ? svc : NULL;
}
