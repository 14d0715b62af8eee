package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// lbListRuns is how many times each command runs; the metrics are the medians.
const lbListRuns = 7

// lbListPins loads the socket-LB maps into a fresh pin dir of their own (loaded and
// pinned only: nothing is attached to any cgroup), programs n filler services of per
// backends each with the real writer, and closes every handle, so the pins alone hold
// the state, as after an agent exits. Removing the pins and the dir is registered with
// b.Cleanup, which runs when the benchmark fails midway too.
func lbListPins(b *testing.B, n, per int) string {
	b.Helper()
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("smtlblist%d-%d", os.Getpid(), n))
	b.Cleanup(func() {
		if err := bpf.Cleanup(dir); err != nil {
			b.Error(err)
		}
	})
	// 30k services of 10 backends are more backends and slots than the default room.
	lim := bpf.DefaultLimits
	lim.MaxBackends = max(lim.MaxBackends, 2*n*per)
	dp, err := bpf.Load(dir, lim)
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	if n == 0 {
		return dir
	}
	w, err := lbmap.NewWriter(lbmap.BPFTables(dp.Maps(), nil), nopObserver{})
	if err != nil {
		b.Fatal(err)
	}
	res, err := w.Apply(fillerSnapshot(n, per))
	if err != nil || res.Services != n || res.Backends != n*per {
		b.Fatalf("programmed %d services, %d backends, want %d, %d: %v", res.Services, res.Backends, n, n*per, err)
	}
	return dir
}

// lbListTiming is the medians of several runs of one command.
type lbListTiming struct {
	wall, cpu time.Duration // cpu: user and system time of the process
}

// timeLBCommand runs the binary lbListRuns times, its output going to a file as in
// `sockmesh lb list > services.txt`, and returns the medians (each run whole: start,
// run, exit) and the output of the last run.
func timeLBCommand(b *testing.B, bin string, args ...string) (lbListTiming, []byte) {
	b.Helper()
	outPath := filepath.Join(b.TempDir(), "out")
	var walls, cpus []time.Duration
	for i := 0; i < lbListRuns; i++ {
		out, err := os.Create(outPath)
		if err != nil {
			b.Fatal(err)
		}
		var stderr strings.Builder
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = out, &stderr
		start := time.Now()
		err = cmd.Run()
		walls = append(walls, time.Since(start))
		out.Close()
		if err != nil {
			b.Fatalf("sockmesh %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		cpus = append(cpus, cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
	}
	out, err := os.ReadFile(outPath)
	if err != nil {
		b.Fatal(err)
	}
	slices.Sort(walls)
	slices.Sort(cpus)
	return lbListTiming{walls[len(walls)/2], cpus[len(cpus)/2]}, out
}

func lbListMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkLBList30k times `sockmesh lb list` (table and JSON) as a whole process over
// pinned maps that hold 10k and 30k services of 10 backends each (text-ms and json-ms
// are the 30k figures). The fixed cost of the same binary is measured alongside:
// `lb list` over empty maps (process start, opening the pins) as empty-ms, and
// `sockmesh version` (process start alone) as version-ms. The *-cpu-ms metrics are
// the process's user and system time, steadier than wall time on a busy machine.
func BenchmarkLBList30k(b *testing.B) {
	harness.RequirePrivileged(b)
	bin := harness.Binary(b)
	const per = 10

	version, _ := timeLBCommand(b, bin, "version")
	b.ReportMetric(lbListMS(version.wall), "version-ms")

	empty := lbListPins(b, 0, per)
	took, out := timeLBCommand(b, bin, "lb", "list", "--bpffs", empty)
	if got := strings.Count(string(out), "\n"); got != 1 {
		b.Fatalf("lb list over empty maps printed %d lines, want the header alone:\n%s", got, out)
	}
	b.ReportMetric(lbListMS(took.wall), "empty-ms")
	b.ReportMetric(lbListMS(took.cpu), "empty-cpu-ms")

	for _, n := range []int{10000, 30000} {
		dir := lbListPins(b, n, per)
		text, out := timeLBCommand(b, bin, "lb", "list", "--bpffs", dir)
		if got := strings.Count(string(out), "\n"); got != n+1 {
			b.Fatalf("lb list at %d services printed %d lines, want %d", n, got, n+1)
		}
		js, out := timeLBCommand(b, bin, "lb", "list", "-o", "json", "--bpffs", dir)
		var svcs []lbmap.ListedService
		if err := json.Unmarshal(out, &svcs); err != nil || len(svcs) != n || len(svcs[0].Backends) != per {
			b.Fatalf("lb list -o json at %d services: %d services decoded: %v", n, len(svcs), err)
		}
		tag := fmt.Sprintf("%dk", n/1000)
		b.ReportMetric(lbListMS(text.wall), "text-"+tag+"-ms")
		b.ReportMetric(lbListMS(js.wall), "json-"+tag+"-ms")
		if n == 30000 {
			b.ReportMetric(lbListMS(text.wall), "text-ms")
			b.ReportMetric(lbListMS(js.wall), "json-ms")
			b.ReportMetric(lbListMS(text.cpu), "text-cpu-ms")
			b.ReportMetric(lbListMS(js.cpu), "json-cpu-ms")
		}
		// Free this scale's maps before loading the next.
		if err := bpf.Cleanup(dir); err != nil {
			b.Fatal(err)
		}
	}
}
