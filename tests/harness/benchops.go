package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Child operations for the splice benchmarks: an echo server and request/response
// latency through it.
func init() {
	extraOps["bench-echo"] = benchEcho
	extraOps["bench-rr"] = benchRR
}

// BenchEchoPort is where bench-echo listens.
const BenchEchoPort = 9000

// benchEcho echoes every byte back on every connection, copying through a buffer with
// read/write (as applications and Envoy do) until the client closes.
func benchEcho(ClientRequest) error {
	ln, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", BenchEchoPort))
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 256<<10))
		}()
	}
}

// RRSamples are the round trips of one message size on one connection, sorted.
type RRSamples struct {
	Size int
	Lat  []time.Duration
}

// rrWarmup round trips open every connection untimed: the first ones pay for slow
// start, page faults and cold caches, the same in every mode.
const rrWarmup = 5

// benchRR is a long-lived client driven over stdin, so that the benchmark can switch
// splice modes between batches without a process start (and its warm-up) in between:
// each stdin line "ADDR SIZE N" opens a fresh connection to ADDR (so the mode set
// before the line applies to it), makes rrWarmup untimed round trips, then N timed ones
// (write SIZE bytes, read all SIZE back), and prints one JSON RRSamples line.
func benchRR(ClientRequest) error {
	fmt.Println("ready")
	enc := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 3 {
			return fmt.Errorf("bench-rr: want ADDR SIZE N, got %q", in.Text())
		}
		size, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || size <= 0 || n <= 0 {
			return fmt.Errorf("bench-rr: want ADDR SIZE N, got %q", in.Text())
		}
		lat, err := roundTrips(f[0], size, n)
		if err != nil {
			return fmt.Errorf("bench-rr %s %d B: %w", f[0], size, err)
		}
		if err := enc.Encode(RRSamples{Size: size, Lat: lat}); err != nil {
			return err
		}
	}
	return in.Err()
}

func roundTrips(to string, size, n int) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", to, 3*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	msg := make([]byte, size)
	back := make([]byte, size)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < rrWarmup+n; i++ {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return nil, err
		}
		if i >= rrWarmup {
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	return lat, nil
}

// RRClient is a running bench-rr child.
type RRClient struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

// StartRRClient starts a bench-rr child in h (and the env's cgroup); it is stopped at
// cleanup.
func (e *Env) StartRRClient(t testing.TB, h *netlab.Host) *RRClient {
	t.Helper()
	cmd := e.childCmd(t, ClientRequest{Op: "bench-rr", NetNS: h.NetNS})
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
	c := &RRClient{in: in, out: bufio.NewScanner(out)}
	c.out.Buffer(make([]byte, 1<<20), 64<<20)
	t.Cleanup(func() {
		in.Close() // the child exits at end of input
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	if !c.out.Scan() || c.out.Text() != "ready" {
		t.Fatalf("bench-rr child did not start: %v", c.out.Err())
	}
	return c
}

// Measure makes n timed round trips of size bytes on a new connection to to.
func (c *RRClient) Measure(to netip.AddrPort, size, n int) (RRSamples, error) {
	var res RRSamples
	if _, err := fmt.Fprintf(c.in, "%s %d %d\n", to, size, n); err != nil {
		return res, err
	}
	if !c.out.Scan() {
		return res, fmt.Errorf("bench-rr child exited (its error is on stderr): %v", c.out.Err())
	}
	err := json.Unmarshal(c.out.Bytes(), &res)
	return res, err
}
