package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sockmesh/sockmesh/agent"
)

// Agent is `sockmesh agent` running as a subprocess against the env.
type Agent struct {
	cmd   *exec.Cmd
	Addr  string // where /metrics and /readyz are served
	Debug string // the root-only unix socket serving /debug/state
	// viaDebug says /metrics and /readyz are read through Debug: the agent runs in
	// another network namespace, where its TCP listeners are.
	viaDebug bool
	log      *syncBuffer
	done     chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var listenLine = regexp.MustCompile(`serving metrics and health"? addr=(\S+)`)

// StartAgent runs the agent on the YAML file with the env's cgroup and pin dir and waits
// until it is ready. The agent is stopped at cleanup if the test has not stopped it.
func (e *Env) StartAgent(t testing.TB, yamlPath string, extra ...string) *Agent {
	t.Helper()
	a := e.launchAgent(t, yamlPath, extra...)
	a.WaitReady(t)
	return a
}

// LaunchAgent starts the agent without waiting for it to be ready: for starts on a bad
// input, or starts expected to fail.
func (e *Env) LaunchAgent(t testing.TB, yamlPath string, extra ...string) *Agent {
	t.Helper()
	return e.launchAgent(t, yamlPath, extra...)
}

// WaitReadyz waits until /readyz answers code with a body containing substr, and returns
// the body.
func (a *Agent) WaitReadyz(t testing.TB, code int, substr string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		if ok, err := a.Exited(25 * time.Millisecond); ok {
			t.Fatalf("agent exited (%v):\n%s", err, a.log.String())
		}
		resp, ok, err := a.get("/readyz")
		if !ok || err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		if resp.StatusCode == code && strings.Contains(string(body), substr) {
			return string(body)
		}
	}
	t.Fatalf("/readyz never answered %d with %q (last: %s):\n%s", code, substr, last, a.log.String())
	return ""
}

// launchAgent starts the agent without waiting for readiness.
func (e *Env) launchAgent(t testing.TB, yamlPath string, extra ...string) *Agent {
	t.Helper()
	args := append([]string{"agent", "--source", "file:" + yamlPath, "--cgroup", e.Cgroup.Path,
		"--bpffs", e.BPFFS, "--http-listen", "127.0.0.1:0", "--xds-listen", "unix:" + e.XDSSocket(),
		"--debug-listen", "unix:" + e.DebugSocket()}, extra...)
	a := &Agent{cmd: exec.Command(Binary(t), args...), Debug: e.DebugSocket(), log: &syncBuffer{}, done: make(chan error, 1)}
	t.Cleanup(func() { _ = os.Remove(e.XDSSocket()) }) // runs after the agent stops
	a.startAndReap(t)
	return a
}

// startAndReap starts the agent and stops it at cleanup (SIGTERM, then SIGKILL), with
// its log when the test failed.
func (a *Agent) startAndReap(t testing.TB) {
	t.Helper()
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() { _ = os.Remove(a.Debug) }) // runs after the agent stops
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-a.done:
			case <-time.After(10 * time.Second):
				_ = a.cmd.Process.Kill()
				<-a.done
			}
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
}

// get fetches one of the agent's HTTP paths, through the debug socket when its TCP
// listener is out of reach; ok is false while the listener's address is not known yet.
func (a *Agent) get(path string) (resp *http.Response, ok bool, err error) {
	if a.viaDebug {
		resp, err = a.DebugClient().Get("http://sockmesh" + path)
		return resp, true, err
	}
	if a.Addr == "" {
		if m := listenLine.FindStringSubmatch(a.log.String()); m != nil {
			a.Addr = m[1]
		}
		if a.Addr == "" {
			return nil, false, nil
		}
	}
	resp, err = http.Get("http://" + a.Addr + path)
	return resp, true, err
}

// XDSSocket is where the env's agent serves ADS (short: unix socket paths are limited
// to 108 bytes, test temp dirs can be longer).
func (e *Env) XDSSocket() string { return filepath.Join(os.TempDir(), e.Prefix+"-xds.sock") }

// DebugSocket is where the env's agent serves /debug/state.
func (e *Env) DebugSocket() string { return filepath.Join(os.TempDir(), e.Prefix+"-debug.sock") }

// WaitReady waits for /readyz, failing the test with the agent's log if it exits.
func (a *Agent) WaitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("agent exited before ready (%v):\n%s", err, a.log.String())
		case <-time.After(25 * time.Millisecond):
		}
		resp, ok, err := a.get("/readyz")
		if !ok {
			continue
		}
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
	t.Fatalf("agent not ready after 20s:\n%s", a.log.String())
}

// Stop sends SIGTERM and waits; the agent must exit cleanly.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		if err != nil {
			t.Fatalf("agent exited with %v:\n%s", err, a.log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("agent did not stop on SIGTERM:\n%s", a.log.String())
	}
}

// Exited waits up to d for the agent to exit by itself and returns its error.
func (a *Agent) Exited(d time.Duration) (bool, error) {
	select {
	case err := <-a.done:
		a.done <- err
		return true, err
	case <-time.After(d):
		return false, nil
	}
}

// PID is the agent's process id.
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// WaitMetric polls /metrics until the metric equals want, for up to timeout.
func (a *Agent) WaitMetric(t testing.TB, name string, labels map[string]string, want float64, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if a.Metric(t, name, labels) == want {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s%v never reached %v (now %v)", name, labels, want, a.Metric(t, name, labels))
	return 0
}

// WaitIdle waits until the agent has used no CPU for a quiet period (after a large
// reconcile, the garbage collector and file re-reads would otherwise compete with a
// measurement), for up to timeout.
func (a *Agent) WaitIdle(t testing.TB, quiet, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	last := cpuTicks(t, a.PID())
	for time.Since(start) < timeout {
		time.Sleep(quiet)
		now := cpuTicks(t, a.PID())
		if now == last {
			return
		}
		last = now
	}
}

// cpuTicks is utime+stime of a process from /proc/PID/stat.
func cpuTicks(t testing.TB, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the ")" that ends the command name; utime and stime are 14 and 15.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// Log is everything the agent printed so far.
func (a *Agent) Log() string { return a.log.String() }

// Metrics scrapes /metrics.
func (a *Agent) Metrics(t testing.TB) map[string]*dto.MetricFamily {
	t.Helper()
	resp, ok, err := a.get("/metrics")
	if !ok {
		t.Fatal("the agent has not said where it serves /metrics")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// Metric returns the sum of the samples of family name whose labels include want (for a
// histogram, the sum of its observations).
func (a *Agent) Metric(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	fam := a.Metrics(t)[name]
	if fam == nil {
		return 0
	}
	sum := 0.0
	for _, m := range fam.Metric {
		if !labelsMatch(m, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += m.Histogram.GetSampleSum()
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.Label {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// WaitLog waits until the agent's log contains every substring.
func (a *Agent) WaitLog(t testing.TB, substrs ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		log := a.log.String()
		ok := true
		for _, s := range substrs {
			ok = ok && strings.Contains(log, s)
		}
		if ok {
			return log
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("agent log never contained %q:\n%s", substrs, a.log.String())
	return ""
}

// CLI runs a sockmesh verb with the env's pin flags and returns its output.
func (e *Env) CLI(t testing.TB, args ...string) string {
	t.Helper()
	args = append(args, "--bpffs", e.BPFFS, "--cgroup", e.Cgroup.Path)
	out, err := exec.Command(Binary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("sockmesh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// String helps failure messages.
func (a *Agent) String() string { return fmt.Sprintf("agent(%s)", a.Addr) }

// DebugClient is an HTTP client that reaches the agent's debug socket, whatever host a
// URL names.
func (a *Agent) DebugClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", a.Debug)
		}}}
}

// DebugState fetches and decodes the agent's /debug/state.
func (a *Agent) DebugState(t testing.TB) agent.DebugState {
	t.Helper()
	resp, err := a.DebugClient().Get("http://sockmesh/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st agent.DebugState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}
