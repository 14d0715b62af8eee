package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Real programs (nginx, curl, redis, iperf3: installed from Debian by
// scripts/install-deps.sh) run the way the test's own children do: started inside the
// env's cgroup, so the agent's programs see their sockets, and with every thread in a
// host's network namespace, so nothing they dial can leave the env.

// Program prepares name with args to run in host h's namespace and the env's cgroup.
// The caller starts it; ctx bounds it (a stalled program is killed, never waited on).
func (e *Env) Program(t testing.TB, ctx context.Context, h *netlab.Host, name string, args ...string) *exec.Cmd {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (scripts/install-deps.sh installs it): %v", name, err)
	}
	fd, err := e.Cgroup.FD()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + h.NetNS, "--", path}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Setpgid: true}
	// Kill the whole group: nsenter execs the program, but the program may fork workers.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// RunProgram runs a program to completion within timeout and returns its stdout; a
// non-zero exit or a timeout fails the test with what the program printed.
func (e *Env) RunProgram(t testing.TB, timeout time.Duration, h *netlab.Host, name string, args ...string) string {
	t.Helper()
	out, err := e.RunProgramE(t, timeout, h, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunProgramE is RunProgram that returns the failure instead.
func (e *Env) RunProgramE(t testing.TB, timeout time.Duration, h *netlab.Host, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := e.Program(t, ctx, h, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return stdout.String(), fmt.Errorf("%s %v in %s did not finish in %v (stalled?)\nstdout: %s\nstderr: %s", name, args, h.Name, timeout, tail(stdout.String()), tail(stderr.String()))
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %v in %s: %v\nstdout: %s\nstderr: %s", name, args, h.Name, err, tail(stdout.String()), tail(stderr.String()))
	}
	return stdout.String(), nil
}

// StartProgram starts a long-running program (a server) in h and waits until it accepts
// TCP connections on ready (dialed from inside h); it is killed at cleanup.
func (e *Env) StartProgram(t testing.TB, h *netlab.Host, ready netip.AddrPort, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := e.Program(t, ctx, h, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cancel(); <-exited })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := h.Do(func() error {
			c, err := net.DialTimeout("tcp", ready.String(), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s %v exited before it listened on %s: %s", name, args, ready, tail(out.String()))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %v never listened on %s: %v\n%s", name, args, ready, err, tail(out.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail keeps the end of a program's output for an error message.
func tail(s string) string {
	const max = 4000
	if len(s) > max {
		return "…" + s[len(s)-max:]
	}
	return s
}
