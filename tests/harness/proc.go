package harness

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Proc is a long-running child (a relay, servers) inside the env's cgroup and a host's
// namespace. Its stdout lines after "ready" are kept for the test to read.
type Proc struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
	stop  func()
}

// StartRelay runs the original-destination relay in h, listening on the addresses.
func (e *Env) StartRelay(t testing.TB, h *netlab.Host, listen []netip.AddrPort, mark int) *Proc {
	t.Helper()
	return e.startProc(t, ClientRequest{Op: "relay", NetNS: h.NetNS, Targets: listen, N: mark})
}

// StartServers runs the demo backend servers in h as a process inside the env's cgroup
// (so that their sockets can be spliced), instead of inside the test process.
func (e *Env) StartServers(t testing.TB, h *netlab.Host) *Proc {
	t.Helper()
	return e.startProc(t, ClientRequest{Op: "serve", NetNS: h.NetNS, Name: h.Name})
}

// StartProc runs a long-lived child for req (an extraOps operation that prints "ready"
// once it is set up) and stops it at cleanup.
func (e *Env) StartProc(t testing.TB, req ClientRequest) *Proc { return e.startProc(t, req) }

func (e *Env) startProc(t testing.TB, req ClientRequest) *Proc {
	t.Helper()
	cmd := e.childCmd(t, req)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Proc{done: make(chan struct{})}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-p.done
		})
	}
	ready := make(chan struct{})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				close(ready)
				continue
			}
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(p.stop)
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("%s exited before it was ready", req.Op)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s not ready after 10s", req.Op)
	}
	return p
}

// Stop kills the process and waits for it.
func (p *Proc) Stop() { p.stop() }

// Lines returns the process's output lines after "ready", so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Events decodes the relay's JSON lines so far.
func (p *Proc) Events(t testing.TB) []RelayEvent {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []RelayEvent
	for _, l := range p.lines {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var ev RelayEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}
