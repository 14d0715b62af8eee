package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// extraOps are child operations registered by other files of this package (init);
// each runs inside the host's namespace and the env's cgroup and writes its result to
// stdout.
var extraOps = map[string]func(ClientRequest) error{}

// childEnv carries a ClientRequest to a re-executed test binary (see MaybeRunChild).
const childEnv = "SOCKMESH_TEST_CLIENT"

// ClientRequest is what a client process does from inside a host's namespace.
type ClientRequest struct {
	Op    string // "tcp", "dns", "hold" or "bench"
	NetNS string
	To    netip.AddrPort
	N     int
	// Bench: Targets are measured in alternating rounds, so that drift and noise on a
	// shared machine hit every target alike.
	Targets []netip.AddrPort
	Rounds  int
	Name    string   // "serve": the name the servers answer with
	Args    []string // free-form arguments for extraOps
	Environ []string // extra environment for the child, "K=V"
	// Params are an extraOps operation's typed parameters, as JSON (the splice ops).
	Params json.RawMessage `json:",omitempty"`
}

// ClientResult is one client process's findings; each attempt yields an answer or an
// error string, so a test can count both.
type ClientResult struct {
	TCP    []netlab.TCPAnswer
	DNS    []netlab.DNSAnswer
	Errors []string
	Bench  []BenchResult // one per target, in request order
}

// MaybeRunChild must be the first thing in TestMain: in a re-executed child it runs the
// request and exits; in the test process itself it returns at once.
func MaybeRunChild() {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return
	}
	var req ClientRequest
	if err := json.Unmarshal([]byte(raw), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// nsenter started this whole process inside the host's namespace: every thread,
	// so sockets made on any goroutine stay there.
	if err := runChild(req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runChild(req ClientRequest) error {
	var res ClientResult
	switch req.Op {
	case "tcp":
		for i := 0; i < req.N; i++ {
			c, ans, err := netlab.DialTCP(req.To)
			if err != nil {
				res.Errors = append(res.Errors, err.Error())
				continue
			}
			c.Close()
			res.TCP = append(res.TCP, ans)
		}
	case "dns":
		for i := 0; i < req.N; i++ {
			ans, err := netlab.QueryDNS(req.To)
			if err != nil {
				res.Errors = append(res.Errors, err.Error())
				continue
			}
			res.DNS = append(res.DNS, ans)
		}
	case "hold":
		return hold(req.To)
	case "relay":
		return relay(req.Targets, req.N)
	case "serve":
		b, err := netlab.StartBackend(&netlab.Host{Name: req.Name, NetNS: req.NetNS}, netlab.BackendTCPPort, netlab.DNSPort)
		if err != nil {
			return err
		}
		defer b.Close()
		fmt.Println("ready")
		select {} // until killed
	case "bench":
		var err error
		if res.Bench, err = bench(req.Targets, req.N, req.Rounds); err != nil {
			return err
		}
	default:
		op, ok := extraOps[req.Op]
		if !ok {
			return fmt.Errorf("unknown op %q", req.Op)
		}
		return op(req)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// hold keeps one connection open and asks on it once per stdin line.
func hold(to netip.AddrPort) error {
	c, ans, err := netlab.DialTCP(to)
	if err != nil {
		return err
	}
	defer c.Close()
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(ans); err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		name, err := netlab.Ask(c)
		a := netlab.TCPAnswer{Backend: name}
		if err != nil {
			a.Backend = "error: " + err.Error()
		}
		if err := enc.Encode(a); err != nil {
			return err
		}
	}
	return nil
}

// childCmd prepares a re-executed test binary that starts inside the env's cgroup.
func (e *Env) childCmd(t testing.TB, req ClientRequest) *exec.Cmd {
	t.Helper()
	raw, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := e.Cgroup.FD()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	// Start inside the cgroup (CgroupFD) and, through nsenter, with every thread in the
	// host's network namespace: a socket made on any goroutine can never be in the host
	// machine's namespace, where a translated address could be routed off the machine.
	cmd := exec.Command("nsenter", "--net="+req.NetNS, "--", os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), req.Environ...), childEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	cmd.Stderr = os.Stderr
	return cmd
}

// RunOp runs a child for req to completion and returns its stdout.
func (e *Env) RunOp(t testing.TB, req ClientRequest) ([]byte, error) {
	t.Helper()
	return e.childCmd(t, req).Output()
}

// Run runs a client process in host h's namespace and the env's cgroup.
func (e *Env) Run(t testing.TB, h *netlab.Host, op string, to netip.AddrPort, n int) ClientResult {
	t.Helper()
	res, err := e.RunE(t, h, op, to, n)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Bench measures connect + one request/response + close to each target, n times each,
// from host h inside the env's cgroup.
func (e *Env) Bench(t testing.TB, h *netlab.Host, targets []netip.AddrPort, n, rounds int) []BenchResult {
	t.Helper()
	cmd := e.childCmd(t, ClientRequest{Op: "bench", NetNS: h.NetNS, Targets: targets, N: n, Rounds: rounds})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench client: %v", err)
	}
	var res ClientResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("bench output %q: %v", out, err)
	}
	return res.Bench
}

// RunE is Run for use off the test goroutine: it reports failure as an error.
func (e *Env) RunE(t testing.TB, h *netlab.Host, op string, to netip.AddrPort, n int) (ClientResult, error) {
	cmd := e.childCmd(t, ClientRequest{Op: op, NetNS: h.NetNS, To: to, N: n})
	out, err := cmd.Output()
	if err != nil {
		return ClientResult{}, fmt.Errorf("client %s %s: %w", op, to, err)
	}
	var res ClientResult
	if err := json.Unmarshal(out, &res); err != nil {
		return ClientResult{}, fmt.Errorf("client output %q: %w", out, err)
	}
	return res, nil
}

// Holder is a client process keeping one connection open.
type Holder struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *json.Decoder
	First netlab.TCPAnswer
}

// Hold opens one long-lived connection from h to the service.
func (e *Env) Hold(t testing.TB, h *netlab.Host, to netip.AddrPort) *Holder {
	t.Helper()
	cmd := e.childCmd(t, ClientRequest{Op: "hold", NetNS: h.NetNS, To: to})
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hd := &Holder{cmd: cmd, in: in, out: json.NewDecoder(out)}
	t.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	if err := hd.out.Decode(&hd.First); err != nil {
		t.Fatalf("hold %s: %v", to, err)
	}
	return hd
}

// Ask sends one request on the held connection and returns the backend's answer.
func (hd *Holder) Ask(t testing.TB) string {
	t.Helper()
	if _, err := hd.in.Write([]byte("ask\n")); err != nil {
		t.Fatal(err)
	}
	var a netlab.TCPAnswer
	if err := hd.out.Decode(&a); err != nil {
		t.Fatal(err)
	}
	return a.Backend
}
