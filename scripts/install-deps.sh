#!/usr/bin/env bash
# Installs what building and testing sockmesh needs on a fresh Debian machine, by package
# name; idempotent and quiet when everything is already there.
set -euo pipefail

need=()
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -f /usr/include/x86_64-linux-gnu/asm/types.h ] || need+=(linux-libc-dev)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v conntrack >/dev/null || need+=(conntrack)
# kube-proxy's iptables mode, the baseline `make bench` measures sockmesh beside.
command -v iptables-legacy-restore >/dev/null || need+=(iptables)
# Real programs the end-to-end tests and benchmarks run as applications (nobody here
# wrote them): web server and clients, a key-value store, a bulk-throughput tool, and an
# intercepting proxy that reads SO_ORIGINAL_DST.
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v ab >/dev/null || need+=(apache2-utils)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v squid >/dev/null || need+=(squid)
# A real Kubernetes API for the kubernetes-source tests: etcd from Debian; kube-apiserver
# itself is built from k8s.io/kubernetes by scripts/kube-apiserver.sh (cached in .cache/).
command -v etcd >/dev/null || need+=(etcd-server)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: need root to apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "install-deps: apt-get install ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Go modules (and the staticcheck linter) come from the module proxy.
go mod download
