package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/sockmesh/sockmesh/agent/healthcheck"
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

	xds    *xds.Server // nil with --xds-listen ""
	health *healthcheck.Servers
	// devices is the NodePort device manager; nil without --devices (or when the
	// NodePort programs cannot load: npErrs says why).
	devices *deviceManager
	npErrs  []model.ObjectError

	pendingMu sync.Mutex
	pending   *source.Update
	// pendingTaken says the loop took pending; pendingLost that an untaken snapshot
	// was replaced by one without a snapshot, so the next one must be applied in full.
	pendingTaken, pendingLost bool
	wake                      chan struct{}
	prevErrs                  []model.ObjectError
	events                    reporter // nil: the source posts no Kubernetes Events
}

// reporter is a source that tells the API server about rejected objects (Events).
type reporter interface{ Report([]model.ObjectError) }

// Run starts the agent and blocks until ctx is done. Stopping leaves the programs attached
// and the maps pinned: services keep working until `sockmesh cleanup`.
//
// Everything that can fail on its own (flags, privileges, the pin lock, the listeners)
// is checked or taken before the programs or their config are touched: a start that
// cannot complete leaves the running datapath exactly as it was.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := bpf.CheckPrivileges(); err != nil {
		return err
	}
	created, err := bpf.EnsureBPFFS(cfg.BPFFS)
	if err != nil {
		return err
	}
	lock, err := bpf.LockPins(cfg.BPFFS)
	if err != nil {
		if created && !errors.Is(err, bpf.ErrPinsInUse) {
			_ = os.Remove(cfg.BPFFS)
		}
		return fmt.Errorf("--bpffs %s: %w", cfg.BPFFS, err)
	}
	defer lock.Unlock()
	cfg.BPFFS = lock.Dir()
	// A start that fails leaves no pin dir it made (deferred after Unlock, so it runs
	// while the lock is held, after the programs are closed).
	started := false
	defer func() {
		if created && !started {
			_ = bpf.Cleanup(cfg.BPFFS)
		}
	}()
	lns, err := openListeners(cfg)
	if err != nil {
		return err
	}
	defer lns.close()
	a := &Agent{cfg: cfg, log: log, wake: make(chan struct{}, 1)}
	src, err := newSource(cfg, log, a.offer)
	if err != nil {
		return err
	}
	a.events, _ = src.(reporter)
	if p, ok := src.(interface{ Preflight(context.Context) error }); ok {
		if err := p.Preflight(ctx); err != nil {
			return err
		}
	}

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
	np, npMaps := a.loadNodePort(cfg, log)
	if np != nil {
		defer np.Close()
	}
	started = true
	for _, d := range dp.Degraded {
		log.Warn("kernel feature missing", "detail", d)
	}
	a.dp, a.metrics = dp, NewMetrics(dp.Maps())
	if npMaps != nil {
		a.metrics.Registry.MustRegister(nodePortCollector{*npMaps})
		a.devices.obs = a.metrics
	}
	if k, ok := src.(*source.Kubernetes); ok {
		k.OnEvent = a.metrics.observeSourceEvent // set before Run starts the informers
	}
	if a.writer, err = lbmap.NewWriter(lbmap.BPFTables(dp.Maps(), npMaps), a.metrics); err != nil {
		return err
	}
	if err := a.writer.SetMaglev(cfg.MaglevTableSize, uint64(cfg.MaglevSeed)); err != nil {
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
		if rep.SharedNetns != "" {
			log.Info("the kernel check ran on loopback in the agent's own network namespace: its test connections (resets included) show in this namespace's TCP counters",
				"why", rep.SharedNetns)
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
	if a.devices != nil {
		// A bad device is reported and retried; the others and the cgroup hooks serve.
		if err := a.devices.sync(); err != nil {
			return err
		}
		defer a.devices.Close()
	}
	log.Info("datapath attached", "cgroup", cfg.CgroupPath, "bpffs", cfg.BPFFS,
		"envoyRedirect", nodeAddrs, "envoyMark", fmt.Sprintf("%#x", cfg.EnvoyMark), "splice", cfg.Splice,
		"splicing", dpCfg.Splice != bpf.SpliceOff)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.devices != nil {
		wg.Go(func() { a.devices.watch(ctx.Done()) })
	}

	for _, l := range []struct {
		ln      net.Listener
		handler http.Handler
		what    string
	}{{lns.http, a.handler(false), "serving metrics and health"}, {lns.debug, a.handler(true), "serving debug state"}} {
		if l.ln == nil {
			continue
		}
		srv := &http.Server{Handler: l.handler, ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() {
			if err := srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server", "addr", l.ln.Addr().String(), "err", err)
			}
		})
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		log.Info(l.what, "addr", l.ln.Addr().String())
	}

	if lns.xds != nil {
		a.xds = xds.NewServer(log, xds.Stats{
			Streams:           func(d int) { a.metrics.xdsStreams.Add(float64(d)) },
			Nacks:             a.metrics.xdsNacks.Inc,
			StreamsRefused:    a.metrics.xdsStreamsRefused.Inc,
			SlowStreamsClosed: a.metrics.xdsSlowStreams.Inc,
		}, &xds.Proxy{Listen: proxy.Redirect, Mark: proxy.Mark}, xds.Limits{MaxStreams: cfg.XDSMaxStreams})
		ln := lns.xds
		wg.Go(func() {
			if err := a.xds.Serve(ln); err != nil {
				log.Error("xds server", "err", err)
			}
		})
		defer a.xds.Stop()
		log.Info("serving xDS", "addr", cfg.XDSListen)
	}
	lns.http, lns.debug, lns.xds = nil, nil, nil // the servers own them now

	hcAddr, _ := cfg.HealthCheckAddr() // checked with the other flags
	a.health = healthcheck.New(hcAddr, a.state.proxyHealthy)
	defer a.health.Close()

	// A newcomer must not take a frontend the previous run programmed for another Service.
	src.Store().SeedHolders(a.writer.Programmed())
	nodePorts, _ := cfg.NodePorts() // checked with the other flags
	src.Store().SetNode(source.Node{Name: cfg.NodeName, NodePortRange: nodePorts})
	srcErr := make(chan error, 1)
	wg.Go(func() {
		err := src.Run(ctx)
		srcErr <- err
		cancel() // a source that stops (e.g. a missing permission) stops the agent
	})
	a.loop(ctx)
	cancel()
	if err := <-srcErr; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("agent stopped; programs and maps stay pinned", "bpffs", cfg.BPFFS)
	return nil
}

// loadNodePort loads the NodePort programs when --devices names any, and detaches those
// an earlier run left on devices no longer named. Programs that cannot load (a kernel
// without tc or XDP BPF, say) are an error for each device: the cgroup datapath and the
// rest of the agent serve without them.
func (a *Agent) loadNodePort(cfg Config, log *slog.Logger) (*bpf.NodePort, *bpf.NodePortMaps) {
	gone, err := bpf.DetachNodePortExcept(cfg.BPFFS, cfg.Devices)
	tcGone, tcErr := bpf.DetachNetlinkTCExcept(cfg.Devices)
	if err := errors.Join(err, tcErr); err != nil {
		log.Error("detach NodePort programs of devices no longer in --devices", "err", err)
	}
	if gone = append(gone, tcGone...); len(gone) > 0 {
		log.Info("NodePort programs detached from devices no longer in --devices", "devices", gone)
	}
	if len(cfg.Devices) == 0 {
		return nil, nil
	}
	np, err := bpf.LoadNodePort(cfg.BPFFS, bpf.Limits{MaxServices: cfg.MaxServices, MaxBackends: cfg.MaxBackends})
	if err == nil {
		err = replaceMap(np.Maps().Config, map[uint32]bpf.NPConfig{0: npConfig(&cfg)}, false, nil)
		if err != nil {
			np.Close()
		}
	}
	if err != nil {
		for _, d := range cfg.Devices {
			a.npErrs = append(a.npErrs, deviceError(d, "nodeport_unavailable", fmt.Sprintf("NodePort programs not loaded: %v", err)))
		}
		log.Error("NodePort programs not loaded; NodePort, externalIP and LoadBalancer traffic is not served on --devices", "err", err)
		return nil, nil
	}
	a.devices = newDeviceManager(np, cfg.Devices, bpf.XDPMode(cfg.XDP), bpf.TCAttach(cfg.TCAttach), log)
	m := np.Maps()
	return np, &m
}

// listeners are opened before the datapath is touched, so a port in use fails the start
// while the previous run's programs and config still serve.
type listeners struct{ http, debug, xds net.Listener }

func openListeners(cfg Config) (*listeners, error) {
	l := &listeners{}
	var err error
	if cfg.HTTPListen != "" {
		if l.http, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
			return nil, fmt.Errorf("--http-listen %s: %w", cfg.HTTPListen, err)
		}
	}
	if cfg.DebugListen != "" {
		if l.debug, err = xds.Listen(cfg.DebugListen); err != nil {
			l.close()
			return nil, fmt.Errorf("--debug-listen %s: %w", cfg.DebugListen, err)
		}
	}
	if cfg.XDSListen != "" {
		if l.xds, err = xds.Listen(cfg.XDSListen); err != nil {
			l.close()
			return nil, fmt.Errorf("--xds-listen %s: %w", cfg.XDSListen, err)
		}
	}
	return l, nil
}

// close closes the listeners no server has taken over.
func (l *listeners) close() {
	for _, ln := range []net.Listener{l.http, l.debug, l.xds} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// offer hands the run loop a new update; only the latest one matters.
//
// A snapshot that says which frontends Changed says so relative to the one before it:
// when it replaces one the loop never took, it must also carry that one's changes.
func (a *Agent) offer(u source.Update) {
	a.pendingMu.Lock()
	prev := a.pending
	if prev != nil && !a.pendingTaken && prev.Snapshot != nil {
		switch {
		case u.Snapshot == nil:
			a.pendingLost = true // an untaken snapshot's changes go with it
		case u.Snapshot.Changed != nil:
			var changed map[model.Frontend]bool // nil: the whole model
			if prev.Snapshot.Changed != nil {
				changed = maps.Clone(u.Snapshot.Changed)
				maps.Copy(changed, prev.Snapshot.Changed)
			}
			u.Snapshot = withChanged(u.Snapshot, changed)
		}
	}
	if a.pendingLost && u.Snapshot != nil {
		if u.Snapshot.Changed != nil {
			u.Snapshot = withChanged(u.Snapshot, nil)
		}
		a.pendingLost = false
	}
	a.pending, a.pendingTaken = &u, false
	a.pendingMu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// withChanged is s with another Changed (nil: every frontend may have changed), a copy
// so the source's snapshot stays as it made it.
func withChanged(s *model.Snapshot, changed map[model.Frontend]bool) *model.Snapshot {
	c := *s
	c.Changed = changed
	return &c
}

// loop reconciles every new snapshot, retries the last one after a failed write, and
// repairs drift in the maps on a period.
func (a *Agent) loop(ctx context.Context) {
	var current *model.Snapshot
	coldStartReleased := false
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	repair := time.NewTicker(a.cfg.RepairInterval)
	defer repair.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
			a.pendingMu.Lock()
			u := a.pending
			a.pendingTaken = true
			a.pendingMu.Unlock()
			if u.Snapshot == nil {
				a.waitForInput(u)
				continue
			}
			current = u.Snapshot
		case <-retry.C:
		case <-repair.C:
			a.repair()
			continue
		}
		if current == nil {
			continue
		}
		if err := a.reconcile(current); err != nil {
			a.log.Error("reconcile failed; retrying", "err", err, "in", retryInterval)
			retry.Reset(retryInterval)
			continue
		}
		if !coldStartReleased {
			// The first full pass (decoding every object, building every map entry
			// and xDS resource) leaves garbage several times what stays live; hand it
			// back to the OS now rather than over the scavenger's minutes. Once: a
			// forced collection on every pass would cost more than it saves.
			coldStartReleased = true
			debug.FreeOSMemory()
		}
	}
}

// waitForInput records that the source has no usable input: nothing is changed, so what
// is programmed (by this run, or adopted from the previous one) keeps serving.
func (a *Agent) waitForInput(u *source.Update) {
	a.logNewErrors(u.Errors)
	a.metrics.observeErrors(a.prevErrs, u.Errors)
	a.prevErrs = u.Errors
	a.state.mu.Lock()
	defer a.state.mu.Unlock()
	if !a.state.ready {
		a.state.noInput = u.NoInput
		a.state.adopted = len(a.writer.Programmed())
	}
	a.state.fileErrors = u.Errors
}

// repair reads the maps back and rewrites what drifted from the writer's record (another
// process, or an operator, changed them).
func (a *Agent) repair() {
	if a.devices != nil {
		// Notifications can be lost (a full socket buffer): read the devices again.
		if err := a.devices.sync(); err != nil {
			a.log.Error("NodePort devices: sync", "err", err)
		}
	}
	n, err := a.writer.Repair()
	if err != nil {
		a.log.Error("map repair failed", "err", err)
		return
	}
	if n > 0 {
		a.log.Warn("repaired map entries that differed from what the agent programmed (another process wrote to the pinned maps?)", "entries", n)
	}
}

func (a *Agent) reconcile(snap *model.Snapshot) error {
	start := time.Now()
	res, err := a.writer.Apply(snap)
	a.metrics.reconcileDuration.Observe(time.Since(start).Seconds())
	a.metrics.services.Set(float64(res.Services))
	a.metrics.backends.Set(float64(res.Backends))

	var xdsErrs []model.ObjectError
	if a.xds != nil {
		var xerr error
		if xdsErrs, xerr = a.xds.Update(context.Background(), snap); xerr != nil {
			a.metrics.xdsErrors.Inc()
			a.log.Error("xds snapshot not updated; serving the last good one", "err", xerr)
		}
	}

	a.metrics.observePolicies(snap)
	errs := slices.Concat(snap.Errors, res.Errors, xdsErrs, a.health.Sync(snap), a.npErrs, a.devices.Errors())
	a.logNewErrors(errs)
	if a.events != nil {
		a.events.Report(errs)
	}
	a.metrics.observeErrors(a.prevErrs, errs)
	a.prevErrs = errs

	a.state.mu.Lock()
	defer a.state.mu.Unlock()
	a.state.snapshot = snap
	a.state.mapErrors = res.Errors
	a.state.fileErrors = nil
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
	a.state.noInput = ""
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
			a.log.Error("rejected input", "kind", e.Kind, "object", objectName(e), "reason", e.Reason, "err", e.Error())
		}
	}
}

// objectName is "namespace/name", or the name alone for objects without a namespace
// (files, nodes).
func objectName(e model.ObjectError) string {
	if e.Namespace == "" {
		return e.Name
	}
	return e.Namespace + "/" + e.Name
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
