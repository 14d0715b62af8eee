package harness

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
)

// Leftovers describes the machine state tests must not change: named network
// namespaces, cgroups under the cgroup2 root and entries under /sys/fs/bpf.
func Leftovers(t testing.TB) string {
	t.Helper()
	// A fresh machine has no bpffs: mount it now, so that the first test to mount it does
	// not count the kernel's own entries there as its leftovers.
	if _, err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatal(err)
	}
	var parts []string
	list := func(label, dir string, keep func(os.DirEntry) bool) {
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			if keep(e) {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		parts = append(parts, label+"=["+strings.Join(names, " ")+"]")
	}
	all := func(os.DirEntry) bool { return true }
	list("netns", "/run/netns", all)
	if root, err := agent.CgroupV2Root(); err == nil {
		list("cgroups", root, func(e os.DirEntry) bool { return e.IsDir() })
	}
	list("bpffs", filepath.Clean("/sys/fs/bpf"), all)
	return strings.Join(parts, " ")
}
