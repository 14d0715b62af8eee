package bpf_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// privilegesChildEnv makes the test binary, run again by the test, report what it may do.
const privilegesChildEnv = "SOCKMESH_TEST_PRIVILEGES_CHILD"

func TestCheckPrivilegesNamesWhatIsMissing(t *testing.T) {
	if os.Getenv(privilegesChildEnv) != "" {
		reportPrivileges()
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs itself with capabilities dropped")
	}
	if err := bpf.CheckPrivileges(); err != nil {
		t.Fatalf("as root: %v", err)
	}
	all := []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}
	for _, tc := range []struct {
		drop []uintptr
		want []string // named in the error; none: no error
	}{
		{[]uintptr{unix.CAP_BPF, unix.CAP_SYS_ADMIN}, []string{"CAP_BPF"}},
		{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN}, all},
		{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN}, nil}, // CAP_SYS_ADMIN stands in
	} {
		check, mapErr := runWithout(t, tc.drop)
		t.Logf("without %v: CheckPrivileges: %s; creating a map: %s", tc.drop, check, mapErr)
		for _, c := range all {
			if named, want := strings.Contains(check, c), slices.Contains(tc.want, c); named != want {
				t.Errorf("without %v: CheckPrivileges says %q; names %s: %v, want %v", tc.drop, check, c, named, want)
			}
		}
		// The check must agree with the kernel: a map can be made exactly when it passes.
		if passed, mapMade := check == "ok", mapErr == "ok"; passed != mapMade {
			t.Errorf("without %v: CheckPrivileges says %q but creating a map says %q", tc.drop, check, mapErr)
		}
	}
}

// reportPrivileges is the child's side: what CheckPrivileges says and whether the
// kernel lets it create a map.
func reportPrivileges() {
	result := func(err error) string {
		if err != nil {
			return err.Error()
		}
		return "ok"
	}
	fmt.Println("check:", result(bpf.CheckPrivileges()))
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err == nil {
		m.Close()
	}
	fmt.Println("map:", result(err))
}

// runWithout runs this test again in a child that lacks the capabilities drop, and
// returns what the child reported.
func runWithout(t *testing.T, drop []uintptr) (check, mapErr string) {
	t.Helper()
	type result struct {
		out []byte
		err error
	}
	done := make(chan result)
	go func() {
		// Capability sets belong to threads, and a child starts with the set of the thread
		// that forked it: drop them on a thread of this goroutine's own, which exits with
		// it (it is never unlocked), so nothing else ever runs with them dropped.
		runtime.LockOSThread()
		if err := dropFromThread(drop); err != nil {
			done <- result{err: err}
			return
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCheckPrivilegesNamesWhatIsMissing$")
		cmd.Env = append(os.Environ(), privilegesChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		done <- result{out, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("child without %v: %v\n%s", drop, r.err, r.out)
	}
	for _, line := range strings.Split(string(r.out), "\n") {
		if v, ok := strings.CutPrefix(line, "check: "); ok {
			check = v
		} else if v, ok := strings.CutPrefix(line, "map: "); ok {
			mapErr = v
		}
	}
	if check == "" || mapErr == "" {
		t.Fatalf("child without %v reported nothing:\n%s", drop, r.out)
	}
	return check, mapErr
}

// dropFromThread removes capabilities from the calling thread's bounding and inheritable
// sets, which is what limits a program root executes.
func dropFromThread(caps []uintptr) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	for _, c := range caps {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("drop %d from the bounding set: %w", c, err)
		}
		data[c/32].Inheritable &^= 1 << (c % 32)
	}
	return unix.Capset(&hdr, &data[0])
}
