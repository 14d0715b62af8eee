package bpf

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// capability is one the agent needs, and what for.
type capability struct {
	bit  uint
	name string
	why  string
}

// agentCapabilities were measured on Linux 6.18 by starting the agent with each one
// dropped. CAP_SYS_ADMIN stands in for every one of them: the kernel accepts it in place
// of CAP_BPF, CAP_PERFMON and, for network program types, CAP_NET_ADMIN.
var agentCapabilities = []capability{
	{unix.CAP_BPF, "CAP_BPF", "to create BPF maps and load programs"},
	{unix.CAP_PERFMON, "CAP_PERFMON", "for the verifier to accept the sock_ops program, which spills pointers to the stack"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", "to load the cgroup socket, sock_ops and sk_msg programs"},
}

// CheckPrivileges says whether this process may load and attach the datapath, naming
// every capability it lacks and what for. It reads the effective set and touches
// nothing, so a starting agent calls it first: CheckPrivileges, EnsureBPFFS, LockPins,
// Load. Without it, a start lacking CAP_BPF fails at the first map with cilium/ebpf's
// hint at RLIMIT_MEMLOCK, after the pin dir was made.
//
// Mounting bpffs, needed only when /sys/fs/bpf has none, also takes CAP_SYS_ADMIN;
// EnsureBPFFS says so when it has to mount.
func CheckPrivileges() error {
	eff, err := effectiveCapabilities()
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	var missing []string
	for _, c := range missingCapabilities(eff) {
		missing = append(missing, c.name+" ("+c.why+")")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing capabilities: %s; grant these, or CAP_SYS_ADMIN, which the kernel takes in place of each",
		strings.Join(missing, ", "))
}

func missingCapabilities(eff uint64) []capability {
	if eff&(1<<unix.CAP_SYS_ADMIN) != 0 {
		return nil
	}
	var out []capability
	for _, c := range agentCapabilities {
		if eff&(1<<c.bit) == 0 {
			out = append(out, c)
		}
	}
	return out
}

// effectiveCapabilities returns the calling thread's effective set; Go threads of one
// process share it unless code changes one thread's on purpose.
func effectiveCapabilities() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3: two 32-bit halves
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}
