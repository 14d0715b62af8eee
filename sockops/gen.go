package sockops

// Debian's clang builds the object; -type exports every struct shared with C. The
// socket-LB headers (shared maps and structs) come from ../bpf.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -tags linux -type sock_tuple -type sock_key -type origdst_key -type origdst_pending -type pending_key -type splice_pending -type splice_peer -type sk_splice -type splice_state sockops sockops.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror -mcpu=v3
