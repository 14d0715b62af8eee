// Package demo is `sockmesh demo`: a client and backends in their own network namespaces
// (internal/netlab, the same topology the end-to-end tests use), the agent on a
// generated Service, real TCP and DNS traffic to the ClusterIP, a printed result.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
)

// Options tune the demo.
type Options struct {
	Requests int // TCP requests and DNS queries per family
	Out      io.Writer
	Log      *slog.Logger
}

// Run is `sockmesh demo`: it builds the namespaces, runs the agent on the generated YAML
// against a cgroup of its own, sends real traffic to the ClusterIP from the client
// namespace, prints where it went, and removes everything it made, also on failure.
func Run(ctx context.Context, opt Options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespaces, cgroups, BPF): run it with sudo")
	}
	prefix := fmt.Sprintf("smdemo%d", os.Getpid())
	out := opt.Out
	cleanup := []func() error{}
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			err = errors.Join(err, cleanup[i]())
		}
	}()

	env, err := netlab.NewEnv(prefix, "client", "backend-1", "backend-2")
	if err != nil {
		return err
	}
	cleanup = append(cleanup, env.Close)
	backendHosts := []*netlab.Host{env.Host("backend-1"), env.Host("backend-2")}
	for _, h := range backendHosts {
		b, err := netlab.StartBackend(h, netlab.BackendTCPPort, netlab.DNSPort)
		if err != nil {
			return err
		}
		cleanup = append(cleanup, b.Close)
	}
	fmt.Fprintf(out, "namespaces: client %s, backends %s %s (no default routes)\n", env.Host("client").IPv4, backendHosts[0].IPv4, backendHosts[1].IPv4)

	dir, err := os.MkdirTemp("", "sockmesh-demo-")
	if err != nil {
		return err
	}
	cleanup = append(cleanup, func() error { return os.RemoveAll(dir) })
	yamlPath := filepath.Join(dir, "services.yaml")
	if err := os.WriteFile(yamlPath, []byte(netlab.ServiceYAML("demo", "web", backendHosts)), 0o644); err != nil {
		return err
	}

	root, err := agent.CgroupV2Root()
	if err != nil {
		return err
	}
	cg, err := netlab.NewCgroup(root, prefix)
	if err != nil {
		return err
	}
	cleanup = append(cleanup, cg.Close)
	// The demo's own sockets are its client's: move this process into the demo cgroup.
	if err := cg.EnterSelf(); err != nil {
		return err
	}

	bpffs := filepath.Join("/sys/fs/bpf", prefix)
	cfg := agent.DefaultConfig()
	cfg.Source, cfg.CgroupPath, cfg.BPFFS = "file:"+yamlPath, cg.Path, bpffs
	cfg.HTTPListen, cfg.XDSListen, cfg.DebugListen = "", "", ""
	agentCtx, stopAgent := context.WithCancel(ctx)
	var agentErr error
	agentExited := make(chan struct{})
	go func() {
		agentErr = agent.Run(agentCtx, cfg, opt.Log)
		close(agentExited)
	}()
	cleanup = append(cleanup, func() error {
		stopAgent()
		<-agentExited
		return errors.Join(agentErr, bpf.Cleanup(bpffs))
	})
	fmt.Fprintf(out, "agent: --source file:%s --cgroup %s --bpffs %s\n", yamlPath, cg.Path, bpffs)
	if err := waitProgrammed(ctx, bpffs, 4, agentExited); err != nil {
		return err
	}

	client := env.Host("client")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nTRAFFIC\tTO\tANSWERS BY BACKEND\tSEEN PEER")
	for _, vip := range []netip.Addr{netlab.ClusterIPv4, netlab.ClusterIPv6} {
		tcp, peer, err := spreadTCP(client, netip.AddrPortFrom(vip, netlab.ServiceHTTPPort), opt.Requests)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "TCP connect+request\t%s\t%s\t%s\n", netip.AddrPortFrom(vip, netlab.ServiceHTTPPort), tcp, peer)
		udp, from, err := spreadDNS(client, netip.AddrPortFrom(vip, netlab.DNSPort), opt.Requests)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "DNS query (UDP)\t%s\t%s\t%s\n", netip.AddrPortFrom(vip, netlab.DNSPort), udp, from)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printDatapath(out, bpffs)
}

// waitProgrammed polls the pinned maps until the agent has programmed n frontends.
func waitProgrammed(ctx context.Context, bpffs string, n int, agentExited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-agentExited:
			return errors.New("agent exited before programming the service")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		maps, err := bpf.OpenPinned(bpffs)
		if err != nil {
			continue
		}
		svcs, err := lbmap.ListMaps(maps)
		maps.Close()
		if err == nil && len(svcs) >= n {
			return nil
		}
	}
	return errors.New("agent did not program the demo service within 10s")
}

func spreadTCP(client *netlab.Host, to netip.AddrPort, n int) (string, string, error) {
	counts := map[string]int{}
	peers := map[string]bool{}
	err := client.Do(func() error {
		for i := 0; i < n; i++ {
			c, ans, err := netlab.DialTCP(to)
			if err != nil {
				return fmt.Errorf("TCP to %s: %w", to, err)
			}
			c.Close()
			counts[ans.Backend]++
			peers[ans.Peer.String()] = true
		}
		return nil
	})
	return formatCounts(counts), formatSet(peers), err
}

func spreadDNS(client *netlab.Host, to netip.AddrPort, n int) (string, string, error) {
	counts := map[string]int{}
	froms := map[string]bool{}
	err := client.Do(func() error {
		for i := 0; i < n; i++ {
			ans, err := netlab.QueryDNS(to)
			if err != nil {
				return fmt.Errorf("DNS to %s: %w", to, err)
			}
			counts[ans.Backend]++
			froms[ans.From.String()] = true
		}
		return nil
	})
	return formatCounts(counts), formatSet(froms), err
}

func printDatapath(out io.Writer, bpffs string) error {
	maps, err := bpf.OpenPinned(bpffs)
	if err != nil {
		return err
	}
	defer maps.Close()
	counts, err := maps.Counters()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\ndatapath counters:")
	for i, v := range counts {
		if v > 0 {
			fmt.Fprintf(out, " %s=%d", bpf.CounterNames[i], v)
		}
	}
	fmt.Fprintln(out)
	svcs, err := lbmap.ListMaps(maps)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\nsockmesh lb list:")
	for _, s := range svcs {
		var bs []string
		for _, b := range s.Backends {
			bs = append(bs, b.Address.String())
		}
		fmt.Fprintf(out, "  %-16s %-22s -> %s\n", s.Name, s.Frontend, strings.Join(bs, ", "))
	}
	return nil
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func formatSet(m map[string]bool) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, " ")
}
