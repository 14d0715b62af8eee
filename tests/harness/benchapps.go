package harness

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Load generators from Debian for the splice benchmark (iperf3, redis-benchmark, wrk;
// the servers are apps.go's), run with RunProgramE: inside the env's cgroup, so the
// agent's programs see (and may splice) their sockets, and inside a host's namespace.
// They return an error instead of failing the benchmark, so that a mode known to break
// real programs (splicing forced on where the kernel check says no) is reported as
// broken while the other modes are still measured.

// Ports the bench servers listen on in the backend namespace.
const (
	BenchIperfPort = 5201
	BenchRedisPort = 6379
	BenchNginxPort = 8080
)

// BenchIperf3 runs `iperf3 -c to -t seconds -J` (with -R: the server sends) from h and
// returns what the receiver measured, in bits/s.
func (e *Env) BenchIperf3(t testing.TB, h *netlab.Host, to netip.AddrPort, seconds int, reverse bool) (float64, error) {
	t.Helper()
	args := []string{"-c", to.Addr().String(), "-p", strconv.Itoa(int(to.Port())), "-t", strconv.Itoa(seconds), "-J", "--connect-timeout", "3000"}
	if reverse {
		args = append(args, "-R")
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		out, err := e.RunProgramE(t, time.Duration(seconds+8)*time.Second, h, "iperf3", args...)
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
					Bytes         int64   `json:"bytes"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
			if err == nil {
				err = fmt.Errorf("iperf3 output: %w: %s", jerr, tail(out))
			}
			return 0, err
		}
		// The server takes a moment between tests before it accepts the next one.
		if strings.Contains(res.Error, "busy") {
			lastErr = fmt.Errorf("iperf3: %s", res.Error)
			time.Sleep(300 * time.Millisecond)
			continue
		}
		if res.Error != "" {
			return 0, fmt.Errorf("iperf3 %v: %s", args, res.Error)
		}
		if err != nil {
			return 0, err
		}
		if res.End.SumReceived.Bytes == 0 {
			return 0, fmt.Errorf("iperf3 %v: nothing received", args)
		}
		return res.End.SumReceived.BitsPerSecond, nil
	}
	return 0, lastErr
}

// BenchRedis runs `redis-benchmark -q -n n -c conns -t tests -P 1 --csv` from h
// against to and returns requests/s by test name in lower case ("set", "get").
func (e *Env) BenchRedis(t testing.TB, h *netlab.Host, to netip.AddrPort, n, conns int, tests string) (map[string]float64, error) {
	t.Helper()
	out, err := e.RunProgramE(t, 60*time.Second, h, "redis-benchmark", "-h", to.Addr().String(), "-p", strconv.Itoa(int(to.Port())),
		"-q", "-n", strconv.Itoa(n), "-c", strconv.Itoa(conns), "-t", tests, "-P", "1", "--csv")
	if err != nil {
		return nil, err
	}
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) < 2 {
		return nil, fmt.Errorf("redis-benchmark output (%v): %s", err, tail(out))
	}
	col := -1
	for i, h := range rows[0] {
		if h == "rps" {
			col = i
		}
	}
	if col < 0 {
		return nil, fmt.Errorf("redis-benchmark output has no rps column: %s", tail(out))
	}
	res := map[string]float64{}
	for _, r := range rows[1:] {
		if len(r) <= col {
			continue
		}
		v, err := strconv.ParseFloat(r[col], 64)
		if err != nil {
			return nil, fmt.Errorf("redis-benchmark rps %q: %w", r[col], err)
		}
		res[strings.ToLower(r[0])] = v
	}
	for _, want := range strings.Split(tests, ",") {
		if res[want] == 0 {
			return nil, fmt.Errorf("redis-benchmark: no %s result: %s", want, tail(out))
		}
	}
	return res, nil
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// BenchWrk runs `wrk -tthreads -cconns -dDs url` from h and returns requests/s; any
// socket error or non-2xx answer is an error.
func (e *Env) BenchWrk(t testing.TB, h *netlab.Host, url string, threads, conns int, d time.Duration) (float64, error) {
	t.Helper()
	secs := int(d.Round(time.Second) / time.Second)
	out, err := e.RunProgramE(t, d+10*time.Second, h, "wrk", "-t"+strconv.Itoa(threads), "-c"+strconv.Itoa(conns),
		"-d"+strconv.Itoa(secs)+"s", "--timeout", "2s", url)
	if err != nil {
		return 0, err
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		return 0, fmt.Errorf("wrk: %s non-2xx answers:\n%s", m[1], tail(out))
	}
	if m := wrkErrors.FindStringSubmatch(out); m != nil {
		return 0, fmt.Errorf("wrk: %s:\n%s", m[0], tail(out))
	}
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk output has no Requests/sec: %s", tail(out))
	}
	return strconv.ParseFloat(m[1], 64)
}
