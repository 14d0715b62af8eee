package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/sockops"
	"github.com/sockmesh/sockmesh/xds"
)

// retryInterval is how soon a reconcile that failed on a map write is tried again.
const retryInterval = time.Second

// Agent is a running node agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	dp      *bpf.Datapath
	writer  *lbmap.Writer
	metrics *Metrics
	state   state

	xds *xds.Server // nil with --xds-listen ""

	pendingMu sync.Mutex
	pending   *model.Snapshot
	wake      chan struct{}
	prevErrs  []model.ObjectError
}

// Run starts the agent and blocks until ctx is done. Stopping leaves the programs attached
// and the maps pinned: services keep working until `sockmesh cleanup`.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	lock, err := bpf.LockPins(cfg.BPFFS)
	if err != nil {
		return fmt.Errorf("--bpffs %s: %w", cfg.BPFFS, err)
	}
	defer lock.Unlock()
	dp, err := bpf.Load(cfg.BPFFS, bpf.Limits{MaxServices: cfg.MaxServices, MaxBackends: cfg.MaxBackends})
	if err != nil {
		return err
	}
	defer dp.Close()
	ops, err := sockops.Load(cfg.BPFFS)
	if err != nil {
		return err
	}
	defer ops.Close()
	for _, d := range dp.Degraded {
		log.Warn("kernel feature missing", "detail", d)
	}
	a := &Agent{cfg: cfg, log: log, dp: dp, metrics: NewMetrics(dp.Maps()), wake: make(chan struct{}, 1)}
	if a.writer, err = lbmap.NewWriter(lbmap.BPFTables(dp.Maps()), a.metrics); err != nil {
		return err
	}
	proxy := proxySettings(cfg, log)
	dpCfg, nodeAddrs, err := proxy.Config()
	if err != nil {
		return err
	}
	a.writer.SetNode(cfg.NodeName, nodeAddrs)
	a.state.splice = DebugSplice{Mode: cfg.Splice}
	if rep := sockops.GateSplice(&dpCfg, sockops.CheckKernel); rep != nil {
		a.metrics.observeSpliceCheck(rep)
		for _, f := range rep.Differences() {
			a.state.splice.Differences = append(a.state.splice.Differences,
				fmt.Sprintf("%s receiver, %s: %q where TCP gives %q", f.Receiver, f.Behaviour, f.Got, f.TCP))
		}
		if rep.Err != nil {
			a.state.splice.CheckError = rep.Err.Error()
		}
		if !rep.Safe() {
			log.Warn("splicing is off: on this kernel a spliced socket does not behave like TCP, and real programs would stall or lose data (details: /debug/state, sockmesh_splice_kernel_check)",
				"splice", cfg.Splice, "differs", rep.Summary())
		}
	}
	a.state.splice.Splicing = dpCfg.Splice != bpf.SpliceOff
	a.metrics.spliceEnabled.Set(boolGauge(a.state.splice.Splicing))
	// Settings first: the programs must never run with a stale or empty redirect.
	if err := dp.SetConfig(dpCfg); err != nil {
		return err
	}
	if err := dp.Attach(cfg.CgroupPath); err != nil {
		return err
	}
	if err := ops.Attach(cfg.CgroupPath); err != nil {
		return err
	}
	log.Info("datapath attached", "cgroup", cfg.CgroupPath, "bpffs", cfg.BPFFS,
		"envoyRedirect", nodeAddrs, "envoyMark", fmt.Sprintf("%#x", cfg.EnvoyMark), "splice", cfg.Splice,
		"splicing", dpCfg.Splice != bpf.SpliceOff)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if cfg.HTTPListen != "" {
		ln, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("--http-listen %s: %w", cfg.HTTPListen, err)
		}
		srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server", "err", err)
			}
		}()
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		log.Info("serving metrics and health", "addr", ln.Addr().String())
	}

	if cfg.XDSListen != "" {
		ln, err := xds.Listen(cfg.XDSListen)
		if err != nil {
			return fmt.Errorf("--xds-listen %s: %w", cfg.XDSListen, err)
		}
		a.xds = xds.NewServer(log, xds.Stats{
			Streams: func(d int) { a.metrics.xdsStreams.Add(float64(d)) },
			Nacks:   a.metrics.xdsNacks.Inc,
		}, &xds.Proxy{Listen: proxy.Redirect, Mark: proxy.Mark})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.xds.Serve(ln); err != nil {
				log.Error("xds server", "err", err)
			}
		}()
		defer a.xds.Stop()
		log.Info("serving xDS", "addr", cfg.XDSListen)
	}

	path, _ := cfg.FilePath()
	src := source.NewFile(path, a.offer)
	srcErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		srcErr <- src.Run(ctx)
	}()
	a.loop(ctx)
	cancel()
	if err := <-srcErr; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("agent stopped; programs and maps stay pinned", "bpffs", cfg.BPFFS)
	return nil
}

// offer hands the run loop a new snapshot; only the latest one matters.
func (a *Agent) offer(s *model.Snapshot) {
	a.pendingMu.Lock()
	a.pending = s
	a.pendingMu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// loop reconciles every new snapshot, and retries the last one after a failed write.
func (a *Agent) loop(ctx context.Context) {
	var current *model.Snapshot
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
			a.pendingMu.Lock()
			current = a.pending
			a.pendingMu.Unlock()
		case <-retry.C:
		}
		if current == nil {
			continue
		}
		if err := a.reconcile(current); err != nil {
			a.log.Error("reconcile failed; retrying", "err", err, "in", retryInterval)
			retry.Reset(retryInterval)
		}
	}
}

func (a *Agent) reconcile(snap *model.Snapshot) error {
	start := time.Now()
	res, err := a.writer.Apply(snap)
	a.metrics.reconcileDuration.Observe(time.Since(start).Seconds())
	a.metrics.services.Set(float64(res.Services))
	a.metrics.backends.Set(float64(res.Backends))

	if a.xds != nil {
		if xerr := a.xds.Update(context.Background(), snap); xerr != nil {
			a.metrics.xdsErrors.Inc()
			a.log.Error("xds snapshot not updated; serving the last good one", "err", xerr)
		}
	}

	a.metrics.observePolicies(snap)
	errs := append(append([]model.ObjectError(nil), snap.Errors...), res.Errors...)
	a.logNewErrors(errs)
	a.metrics.observeErrors(a.prevErrs, errs)
	a.prevErrs = errs

	a.state.mu.Lock()
	defer a.state.mu.Unlock()
	a.state.snapshot = snap
	a.state.mapErrors = res.Errors
	if err != nil {
		a.metrics.reconcileErrors.Inc()
		a.state.lastError = err.Error()
		return err
	}
	a.state.lastError = ""
	if !a.state.ready {
		a.log.Info("datapath programmed", "services", res.Services, "backends", res.Backends, "took", time.Since(start))
	}
	a.state.ready = true
	return nil
}

// logNewErrors logs each input error once, when it appears.
func (a *Agent) logNewErrors(errs []model.ObjectError) {
	seen := map[model.ObjectError]bool{}
	for _, e := range a.prevErrs {
		seen[e] = true
	}
	for _, e := range errs {
		if !seen[e] {
			a.log.Error("rejected input", "kind", e.Kind, "object", e.Namespace+"/"+e.Name, "reason", e.Reason, "err", e.Error())
		}
	}
}

// proxySettings gathers the Envoy and splice flags; without --envoy-redirect, Envoy is
// expected on the node IP at the default port.
func proxySettings(cfg Config, log *slog.Logger) sockops.Settings {
	addrs, _ := cfg.RedirectAddrs() // validated already
	if len(addrs) == 0 {
		ip, err := sockops.NodeIPv4()
		if err != nil {
			log.Warn("no --envoy-redirect and no node IPv4 address found: connections to L7 services will be refused", "err", err)
		} else {
			addrs = []netip.AddrPort{netip.AddrPortFrom(ip, DefaultEnvoyPort)}
		}
	}
	return sockops.Settings{Redirect: addrs, Mark: cfg.EnvoyMark, Splice: cfg.Splice}
}
