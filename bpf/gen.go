// Package bpf owns sockmesh's socket-LB datapath and the loader every BPF object of
// sockmesh shares: the socket-LB C programs in this folder, their bpf2go bindings
// (generated, committed), typed Go access to the pinned maps, pinning and cgroup
// attachment with bpf_link. The splice and L7-redirect programs live in package sockops
// and load through this package's loader into the same pin dir.
package bpf

// Debian's clang builds the object; -type exports every struct shared with C.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -tags linux -type svc_key -type svc_value -type slot_key -type backend_value -type affinity_key -type affinity_value -type revnat_key -type revnat_value -type svc_name -type counter_id -type lb_addr -type config -type svc_flags -type splice_mode -type origdst socklb sock_lb.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror

// The NodePort programs share the socket-LB headers; their own structs get the nodeport prefix.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -tags linux -type ct_key -type ct_forward -type ct_reply -type np_config -type np_device -type np_range_key -type np_counter -type np_prog -type ct_flags -type np_mode nodeport nodeport.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
