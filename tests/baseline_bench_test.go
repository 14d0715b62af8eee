package tests

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkKubeProxyBaselines times kube-proxy-like rule sets for N services × 10
// endpoints with the real tools, as the baselines socket-LB is compared against: the
// nftables mode's transaction loaded with `nft -f` into an empty table, the iptables
// mode's input loaded with iptables-restore, each cold (first full sync) and for one
// endpoint change applied as kube-proxy's partial sync. Every command runs as a whole
// process, timed from here, inside a network namespace made for it: the rules never
// reach the host's firewall. Each figure is the median of the runs made; every run's
// exit status is checked, and the result is listed and counted (outside the timing)
// so a failing tool cannot produce a fast number.
//
// At this scale the tools are slow, and superlinear: nft's partial update is
// dominated by the kernel's dump of the table's chains (quadratic in their number),
// iptables-restore's cold load by libiptc's chain lookups. So each step repeats up to
// -sockmesh.baseline-runs times but stops once its runs have taken
// -sockmesh.baseline-budget: at 30000 services the slow steps run once or twice.
// The rule sets and what deviates from kube-proxy are in baseline_rules_test.go.
//
// iptables is the legacy backend (iptables-legacy-restore): Debian's default
// iptables-nft 1.8.9 handles kube-proxy's --noflush restore in worse than quadratic
// time (7.5 s at 1000 services, 53 s at 2000 on these machines), so it cannot even
// reach 10000 services here.

const kpPerService = 10 // endpoints per service

var (
	kpRuns   = flag.Int("sockmesh.baseline-runs", 3, "most runs of each kube-proxy baseline step (the median is reported)")
	kpBudget = flag.Duration("sockmesh.baseline-budget", 30*time.Second, "stop repeating a kube-proxy baseline step once its runs took this long (it runs at least once)")
)

var kpScales = []int{10000, 30000}

// The tools: nft, and iptables' legacy backend.
const (
	kpRestore = "iptables-legacy-restore"
	kpSave    = "iptables-legacy-save"
)

func BenchmarkKubeProxyBaselines(b *testing.B) {
	kpRequireTools(b)
	dir := b.TempDir()
	for _, n := range kpScales {
		cold, change := kpBenchNFT(b, dir, n)
		b.ReportMetric(kpMillis(cold), fmt.Sprintf("nft-cold-%d-ms", n))
		b.ReportMetric(kpMillis(change), fmt.Sprintf("nft-change-%d-ms", n))
		cold, change = kpBenchIPT(b, dir, n)
		b.ReportMetric(kpMillis(cold), fmt.Sprintf("iptables-cold-%d-ms", n))
		b.ReportMetric(kpMillis(change), fmt.Sprintf("iptables-change-%d-ms", n))
	}
}

// kpRepeat runs step (given the run's index) up to *kpRuns times, fewer once the runs
// so far have taken *kpBudget, and returns the median and every run's time.
func kpRepeat(step func(r int) time.Duration) (time.Duration, []time.Duration) {
	var ds []time.Duration
	var total time.Duration
	for r := 0; r < max(1, *kpRuns) && (r == 0 || total < *kpBudget); r++ {
		d := step(r)
		ds = append(ds, d)
		total += d
	}
	return kpMedian(ds), ds
}

// kpRequireTools skips without root or without the tools; under CI it fails instead,
// as harness.RequirePrivileged does.
func kpRequireTools(b *testing.B) {
	b.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root (network namespaces, nftables, iptables)"
	} else {
		var missing []string
		for _, tool := range []string{"nft", kpRestore, kpSave} {
			if _, err := exec.LookPath(tool); err != nil {
				missing = append(missing, tool)
			}
		}
		if len(missing) > 0 {
			reason = "kube-proxy baselines need " + strings.Join(missing, ", ") + " (Debian packages nftables and iptables)"
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") != "" {
		b.Fatalf("baseline benchmark cannot run in CI: %s", reason)
	}
	b.Skip(reason)
}

func kpMillis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func kpMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func kpWrite(b *testing.B, dir, name string, data []byte) string {
	b.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

// ---- nftables ----

func kpBenchNFT(b *testing.B, dir string, n int) (cold, change time.Duration) {
	svcs := kpServices(n, kpPerService)
	coldData := kpNFTCold(svcs)
	coldFile := kpWrite(b, dir, fmt.Sprintf("nft-cold-%d.nft", n), coldData)
	defer os.Remove(coldFile)
	var ns *kpNetns
	cold, colds := kpRepeat(func(int) time.Duration {
		if ns != nil {
			kpNFTTeardown(b, ns)
		}
		ns = kpNewNetns(b)
		if out := ns.MustRun(b, "", "nft", "list", "ruleset"); len(bytes.TrimSpace(out)) != 0 {
			b.Fatalf("fresh namespace has nftables rules:\n%s", kpTail(out))
		}
		d, out, err := ns.Run("", "nft", "-f", coldFile)
		if err != nil {
			b.Fatalf("nft -f (cold, %d services): %v\n%s", n, err, kpTail(out))
		}
		return d
	})
	kpCheckNFTCold(b, ns, svcs)

	changeLines := 0
	change, changes := kpRepeat(func(k int) time.Duration {
		s := &svcs[kpChangedService(k, n)]
		old, repl := kpChange(s, k)
		data := kpNFTChange(s, old)
		changeLines = bytes.Count(data, []byte{'\n'})
		f := kpWrite(b, dir, fmt.Sprintf("nft-change-%d-%d.nft", n, k), data)
		d, out, err := ns.Run("", "nft", "-f", f)
		if err != nil {
			b.Fatalf("nft -f (change, %d services): %v\n%s", n, err, kpTail(out))
		}
		kpCheckNFTChange(b, ns, s, old, repl)
		return d
	})
	kpNFTTeardown(b, ns)
	b.Logf("nft, %d services × %d endpoints: cold %v (runs %v), change %v (runs %v); cold transaction %d lines, change %d lines",
		n, kpPerService, cold, colds, change, changes, bytes.Count(coldData, []byte{'\n'}), changeLines)
	return cold, change
}

// kpChangedService picks a different service for each change, spread over the table.
func kpChangedService(k, n int) int { return (k*7919 + n/2 + 1) % n }

// kpNFTTeardown empties the namespace's ruleset (so the kernel frees it now, not in
// the background during the next timed run) and closes the namespace.
func kpNFTTeardown(b *testing.B, ns *kpNetns) {
	b.Helper()
	ns.MustRun(b, "", "nft", "flush", "ruleset")
	ns.Close()
}

// kpCheckNFTCold checks what the cold load made. nft -f commits its transaction
// whole or not at all, so counting the service-ips and cluster-ips elements (one per
// service, added throughout the transaction) and reading a few services' chains in
// full is enough; listing the whole table would take minutes at this size (its chain
// dump is quadratic in the kernel).
func kpCheckNFTCold(b *testing.B, ns *kpNetns, svcs []kpService) {
	b.Helper()
	n := len(svcs)
	m := string(ns.MustRun(b, "", "nft", "list", "map", "ip", "kube-proxy", "service-ips"))
	if c := strings.Count(m, " : goto service-"); c != n {
		b.Fatalf("after the cold nft load, service-ips has %d elements, want %d", c, n)
	}
	set := string(ns.MustRun(b, "", "nft", "list", "set", "ip", "kube-proxy", "cluster-ips"))
	addrs := 0
	for _, f := range strings.FieldsFunc(set, func(r rune) bool { return strings.ContainsRune(" \t\n,{}", r) }) {
		if a, err := netip.ParseAddr(f); err == nil && a.Is4() {
			addrs++
		}
	}
	if addrs != n {
		b.Fatalf("after the cold nft load, cluster-ips has %d addresses, want %d", addrs, n)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		s := &svcs[i]
		kpCheckNFTService(b, ns, s, s.Endpoints[0], s.Endpoints[len(s.Endpoints)-1])
	}
}

// kpCheckNFTService reads one service's chain and the chains of endpoints eps: the
// service chain checks for masquerade and goes to exactly its endpoints' chains; each
// endpoint chain read DNATs to its endpoint. (Each `nft list chain` costs up to a
// second at 30000 services.)
func kpCheckNFTService(b *testing.B, ns *kpNetns, s *kpService, eps ...netip.AddrPort) {
	b.Helper()
	svc := string(ns.MustRun(b, "", "nft", "list", "chain", "ip", "kube-proxy", s.nftServiceChain()))
	ok := strings.Count(svc, "goto endpoint-") == len(s.Endpoints) && strings.Contains(svc, "jump mark-for-masquerade")
	for _, ep := range s.Endpoints {
		ok = ok && strings.Contains(svc, "goto "+s.nftEndpointChain(ep)+"\n")
	}
	if !ok {
		b.Fatalf("%s is:\n%s\nwant a masquerade check and gotos to %v", s.nftServiceChain(), svc, s.Endpoints)
	}
	for _, ep := range eps {
		out := string(ns.MustRun(b, "", "nft", "list", "chain", "ip", "kube-proxy", s.nftEndpointChain(ep)))
		if !strings.Contains(out, "dnat to "+ep.String()+"\n") || !strings.Contains(out, "jump mark-for-masquerade") {
			b.Fatalf("%s is:\n%s\nwant a hairpin masquerade and a dnat to %s", s.nftEndpointChain(ep), out, ep)
		}
	}
}

// kpCheckNFTChange checks the changed service goes to its new endpoint set, the new
// endpoint chain DNATs to the new address, and the stale chain is empty.
func kpCheckNFTChange(b *testing.B, ns *kpNetns, s *kpService, old, repl netip.AddrPort) {
	b.Helper()
	kpCheckNFTService(b, ns, s, repl)
	svc := string(ns.MustRun(b, "", "nft", "list", "chain", "ip", "kube-proxy", s.nftServiceChain()))
	if strings.Contains(svc, s.nftEndpointChain(old)) {
		b.Fatalf("after the nft change, %s still goes to %s:\n%s", s.nftServiceChain(), old, svc)
	}
	stale := string(ns.MustRun(b, "", "nft", "list", "chain", "ip", "kube-proxy", s.nftEndpointChain(old)))
	if strings.Contains(stale, "dnat") {
		b.Fatalf("after the nft change, the stale endpoint chain still has rules:\n%s", stale)
	}
}

// ---- iptables ----

// kube-proxy runs iptables-restore with -w, --noflush and --counters, its input on
// stdin, on every sync, full or partial.
var kpRestoreArgs = []string{"-w", "5", "--noflush", "--counters"}

func kpBenchIPT(b *testing.B, dir string, n int) (cold, change time.Duration) {
	svcs := kpServices(n, kpPerService)
	coldData := kpIPTCold(svcs)
	coldFile := kpWrite(b, dir, fmt.Sprintf("ipt-cold-%d.rules", n), coldData)
	defer os.Remove(coldFile)
	empty := kpWrite(b, dir, "ipt-empty.rules", []byte("*nat\nCOMMIT\n*filter\nCOMMIT\n"))
	teardown := func(ns *kpNetns) {
		// Replace the tables with empty ones (no --noflush), then close.
		ns.MustRun(b, empty, kpRestore, "-w", "5")
		ns.Close()
	}
	var ns *kpNetns
	cold, colds := kpRepeat(func(int) time.Duration {
		if ns != nil {
			teardown(ns)
		}
		ns = kpNewNetns(b)
		if rules, _ := kpIPTSave(b, ns); len(rules) != 0 {
			b.Fatalf("fresh namespace has nat rules: %q", rules)
		}
		d, out, err := ns.Run(coldFile, kpRestore, kpRestoreArgs...)
		if err != nil {
			b.Fatalf("%s (cold, %d services): %v\n%s", kpRestore, n, err, kpTail(out))
		}
		return d
	})
	wantRules := 3 + 3 + 1 + n + 1 + n*(1+kpPerService) + 2*n*kpPerService
	wantChains := 4 + n*(1+kpPerService)
	kpCheckIPT(b, ns, "cold", wantRules, wantChains, nil)

	type applied struct {
		s         *kpService
		old, repl netip.AddrPort
	}
	var done []applied
	changeLines := 0
	change, changes := kpRepeat(func(k int) time.Duration {
		s := &svcs[kpChangedService(k, n)]
		old, repl := kpChange(s, k)
		data := kpIPTChange(svcs, s)
		changeLines = bytes.Count(data, []byte{'\n'})
		f := kpWrite(b, dir, fmt.Sprintf("ipt-change-%d-%d.rules", n, k), data)
		d, out, err := ns.Run(f, kpRestore, kpRestoreArgs...)
		if err != nil {
			b.Fatalf("%s --noflush (change, %d services): %v\n%s", kpRestore, n, err, kpTail(out))
		}
		done = append(done, applied{s, old, repl})
		return d
	})
	// One listing after all the changes: the same rules, plus each stale KUBE-SEP
	// chain (2 rules), which kube-proxy's large-cluster mode leaves until a cleanup.
	kpCheckIPT(b, ns, "changes", wantRules+2*len(done), wantChains+len(done), func(rules []string) error {
		for _, c := range done {
			svc, toNew, toOld, dnat := 0, 0, 0, 0
			for _, r := range rules {
				if strings.HasPrefix(r, "-A "+c.s.iptSVC()+" ") && strings.Contains(r, "-j KUBE-SEP-") {
					svc++
				}
				if strings.HasSuffix(r, " -j "+c.s.iptSEP(c.repl)) {
					toNew++
				}
				if strings.HasSuffix(r, " -j "+c.s.iptSEP(c.old)) {
					toOld++
				}
				if strings.HasPrefix(r, "-A "+c.s.iptSEP(c.repl)+" ") && strings.HasSuffix(r, "--to-destination "+c.repl.String()) {
					dnat++
				}
			}
			if svc != len(c.s.Endpoints) || toNew != 1 || toOld != 0 || dnat != 1 {
				return fmt.Errorf("%s (%s replaced by %s): %d endpoint rules (want %d), %d jumps to the new endpoint, %d to the old, %d DNATs to the new (want 1, 0, 1)",
					c.s.iptSVC(), c.old, c.repl, svc, len(c.s.Endpoints), toNew, toOld, dnat)
			}
		}
		return nil
	})
	teardown(ns)
	b.Logf("iptables (%s), %d services × %d endpoints: cold %v (runs %v), change %v (runs %v); cold input %d lines, change input %d lines",
		kpIPTVersion(), n, kpPerService, cold, colds, change, changes,
		bytes.Count(coldData, []byte{'\n'}), changeLines)
	return cold, change
}

// kpIPTSave lists the nat table: its rule lines and how many KUBE- chains it has.
func kpIPTSave(b *testing.B, ns *kpNetns) (rules []string, chains int) {
	b.Helper()
	out := ns.MustRun(b, "", kpSave, "-t", "nat")
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "-A "):
			rules = append(rules, line)
		case strings.HasPrefix(line, ":KUBE-"):
			chains++
		}
	}
	return rules, chains
}

func kpCheckIPT(b *testing.B, ns *kpNetns, what string, wantRules, wantChains int, check func([]string) error) {
	b.Helper()
	rules, chains := kpIPTSave(b, ns)
	if len(rules) != wantRules || chains != wantChains {
		b.Fatalf("after %s (%s): %d nat rules in %d KUBE chains, want %d in %d",
			kpRestore, what, len(rules), chains, wantRules, wantChains)
	}
	if check != nil {
		if err := check(rules); err != nil {
			b.Fatalf("after %s (%s): %v", kpRestore, what, err)
		}
	}
}

func kpIPTVersion() string {
	out, err := exec.Command(kpRestore, "--version").CombinedOutput()
	if err != nil {
		return "version unknown"
	}
	return strings.TrimSpace(string(out))
}

func kpTail(out []byte) string {
	const max = 2000
	if len(out) > max {
		return "…" + string(out[len(out)-max:])
	}
	return string(out)
}

// ---- a private network namespace ----

// kpNetns is a network namespace of its own, held by one locked OS thread that did
// unshare(CLONE_NEWNET). Commands are started from that thread, so they are born in
// the namespace (a child gets the namespaces of the thread that forks it). Nothing
// names or mounts the namespace: when Close lets the thread exit, the namespace and
// every rule in it go with it.
type kpNetns struct {
	jobs chan func()
	done chan struct{}
	ino  uint64 // the namespace's inode, checked before every command
	host uint64 // the namespace the thread started in, which must never be used
}

func kpNewNetns(b *testing.B) *kpNetns {
	b.Helper()
	ns := &kpNetns{jobs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(ns.done)
		// Never unlocked: the thread exits with this goroutine and takes the
		// namespace with it, so no other goroutine ever runs in it.
		runtime.LockOSThread()
		host, err := kpThreadNetns()
		if err != nil {
			errc <- err
			return
		}
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		ino, err := kpThreadNetns()
		if err == nil && ino == host {
			err = errors.New("unshare(CLONE_NEWNET) left the thread in its namespace")
		}
		if err != nil {
			errc <- err
			return
		}
		ns.ino, ns.host = ino, host
		errc <- nil
		for job := range ns.jobs {
			job()
		}
	}()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ns.Close)
	return ns
}

func kpThreadNetns() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Close ends the thread, and with it the namespace. It may be called more than once.
func (ns *kpNetns) Close() {
	select {
	case <-ns.done:
		return
	default:
	}
	close(ns.jobs)
	<-ns.done
}

// Run runs one command in the namespace, its stdin from the file stdin (if not ""),
// and returns its wall time (start to exit) and its combined output.
func (ns *kpNetns) Run(stdin, name string, args ...string) (time.Duration, []byte, error) {
	var (
		took time.Duration
		out  bytes.Buffer
		err  error
	)
	finished := make(chan struct{})
	job := func() {
		defer close(finished)
		ino, e := kpThreadNetns()
		if e != nil || ino != ns.ino || ino == ns.host {
			err = fmt.Errorf("refusing to run %s: thread is not in the benchmark's namespace (%d, want %d): %v", name, ino, ns.ino, e)
			return
		}
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if stdin != "" {
			f, e := os.Open(stdin)
			if e != nil {
				err = e
				return
			}
			defer f.Close()
			cmd.Stdin = f
		}
		start := time.Now()
		err = cmd.Run()
		took = time.Since(start)
	}
	select {
	case ns.jobs <- job:
	case <-ns.done:
		return 0, nil, errors.New("namespace closed")
	}
	<-finished
	return took, out.Bytes(), err
}

// MustRun runs a command (untimed) and fails the benchmark if it fails.
func (ns *kpNetns) MustRun(b *testing.B, stdin, name string, args ...string) []byte {
	b.Helper()
	_, out, err := ns.Run(stdin, name, args...)
	if err != nil {
		b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, kpTail(out))
	}
	return out
}
