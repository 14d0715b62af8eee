// Command benchreport is `make bench`: it runs sockmesh's benchmarks once (each measures
// its own baseline in the same run) and writes a Markdown report with the ratios and
// the goals they are held to.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// goal is a bound one reported metric must meet: |value| <= bound, or value >= bound when
// atLeast is set.
type goal struct {
	bench, metric string
	bound         float64
	what          string
	atLeast       bool
}

var goals = []goal{
	{"SocketLBConnectVsDirect", "overhead-mean-%", 5, "socket-LB connect+request overhead vs dialing the backend directly (mean)", false},
	{"SocketLBServiceScale", "svc1000-vs-svc1-%", 5, "1,000 services vs 1", false},
	{"SocketLBServiceScale", "svc10000-vs-svc1-%", 5, "10,000 services vs 1", false},
	{"SocketLBServiceScale", "svc30000-vs-svc1-%", 5, "30,000 services vs 1", false},
	{"Program10kServicesColdStart", "batched-ms", 1000, "programming 10k services × 10 backends into empty maps (ms)", false},
	{"FileEditToProgrammed", "svc1-edit-to-map-ms", 1000, "YAML edit → kernel map, 1 service (ms)", false},
	{"FileEditToProgrammed", "svc10000-edit-to-map-ms", 1000, "YAML edit → kernel map, 10,000 services in the file (ms)", false},
	{"SpliceVsTCP", "rr64-latency-cut-%", 30, "splice: p50 round trip cut at 64 B, app → relay → backend (%)", true},
	{"SpliceVsTCP", "rr1024-latency-cut-%", 30, "splice: p50 round trip cut at 1 KiB (%)", true},
	{"SpliceVsTCP", "rr4096-latency-cut-%", 30, "splice: p50 round trip cut at 4 KiB (%)", true},
	{"SpliceVsTCP", "hop-rr64-latency-cut-%", 30, "splice: p50 round trip cut at 64 B, one hop app → local backend (%)", true},
	{"SpliceVsTCP", "hop-rr1024-latency-cut-%", 30, "splice: p50 round trip cut at 1 KiB, one hop (%)", true},
	{"SpliceVsTCP", "hop-rr4096-latency-cut-%", 30, "splice: p50 round trip cut at 4 KiB, one hop (%)", true},
	{"SpliceVsTCP", "rr262144-latency-cut-%", 0, "splice: p50 round trip at 256 KiB not worse (%)", true},
	{"SpliceVsTCP", "stream-on/off-x", 1, "splice: bulk stream throughput, on / off", true},
	{"SpliceVsTCP", "auto-rr64-latency-cut-%", 0, "splice auto (the default): p50 at 64 B not worse, app → relay → backend (%)", true},
	{"SpliceVsTCP", "auto-rr262144-latency-cut-%", 0, "splice auto: p50 at 256 KiB not worse (%)", true},
	{"Snapshot10kServices", "ms/snapshot", 500, "xDS: full snapshot, 10k services × 10 endpoints (ms)", false},
	{"EndpointChangeDeltaVsSotW", "delta-bytes", 2048, "xDS: one endpoint change to a delta client, 10k services (bytes)", false},
	{"EndpointChangeDeltaVsSotW", "update-to-client-p50-ms", 10, "xDS: one endpoint change reaches a delta client, median of 50 (ms)", false},
}

var benchLine = regexp.MustCompile(`^Benchmark(\w+?)(-\d+)?\s+\d+\s+\d+ ns/op\s+(.*)$`)

func main() {
	out := flag.String("out", "bench-out", "report directory")
	requests := flag.Int("requests", 3000, "requests per target in each socket-LB benchmark")
	filter := flag.String("bench", ".", "which benchmarks to run (go test -bench)")
	flag.Parse()
	if err := run(*out, *requests, *filter); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(outDir string, requests int, filter string) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	var raw bytes.Buffer
	start := time.Now()
	for _, args := range [][]string{
		{"./tests/", "-args", "-sockmesh.requests=" + strconv.Itoa(requests)},
		{"./xds/"},
	} {
		cmd := exec.Command("go", append([]string{"test", "-run", "^$", "-bench", filter, "-benchtime", "1x", "-count", "1", "-timeout", "30m"}, args...)...)
		cmd.Stdout = ioTee(&raw)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go test -bench %s: %w", args[0], err)
		}
	}
	results := parse(raw.String())
	var md strings.Builder
	fmt.Fprintf(&md, "# sockmesh benchmarks\n\n%s, %d requests per target, took %s. Every ratio compares against a baseline measured in the same run.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), requests, time.Since(start).Round(time.Second))
	fmt.Fprintln(&md, "| goal | measured | bound | |\n|---|---|---|---|")
	failed := 0
	for _, g := range goals {
		v, ok := results[g.bench][g.metric]
		status := "ok"
		switch {
		case !ok:
			status = "not run"
		case g.atLeast && v < g.bound, !g.atLeast && math.Abs(v) > g.bound:
			status = "MISSED"
			failed++
		}
		rule := fmt.Sprintf("\\|x\\| ≤ %g", g.bound)
		if g.atLeast {
			rule = fmt.Sprintf("≥ %g", g.bound)
		}
		fmt.Fprintf(&md, "| %s | %s | %s | %s |\n", g.what, fmtVal(v, ok), rule, status)
	}
	fmt.Fprint(&md, "\n## All metrics\n\n")
	for _, name := range sortedKeys(results) {
		fmt.Fprintf(&md, "### %s\n\n| metric | value |\n|---|---|\n", name)
		for _, m := range sortedKeys(results[name]) {
			fmt.Fprintf(&md, "| %s | %s |\n", m, fmtVal(results[name][m], true))
		}
		fmt.Fprintln(&md)
	}
	fmt.Fprintf(&md, "## Raw output\n\n```\n%s```\n", raw.String())
	report := filepath.Join(outDir, "report.md")
	if err := os.WriteFile(report, []byte(md.String()), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s (%d goal(s) missed)\n", report, failed)
	return nil
}

func parse(out string) map[string]map[string]float64 {
	res := map[string]map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		metrics := map[string]float64{}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				metrics[f[i+1]] = v
			}
		}
		res[m[1]] = metrics
	}
	return res
}

func fmtVal(v float64, ok bool) string {
	if !ok {
		return "—"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
