// Package bpf owns sockmesh's kernel datapath: the C programs in this folder, their
// bpf2go bindings (generated, committed) and typed Go access to the pinned maps.
package bpf

// Debian's clang builds the objects; -type exports every struct shared with C.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -tags linux -type svc_key -type svc_value -type slot_key -type backend_value -type affinity_key -type affinity_value -type revnat_key -type revnat_value -type svc_name -type counter_id -type lb_addr -type config -type svc_flags -type splice_mode -type origdst socklb sock_lb.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -tags linux -type sock_tuple -type sock_key -type pending_key -type splice_pending -type splice_peer -type sk_splice -type splice_state sockops sockops.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror -mcpu=v3
