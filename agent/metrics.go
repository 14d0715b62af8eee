package agent

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/sockops"
)

// Metrics are the agent's Prometheus metrics, all named sockmesh_*.
type Metrics struct {
	Registry          *prometheus.Registry
	services          prometheus.Gauge
	backends          prometheus.Gauge
	mapOps            *prometheus.CounterVec
	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	inputErrors       *prometheus.CounterVec
	rejected          *prometheus.GaugeVec
	policyServices    *prometheus.GaugeVec
	xdsStreams        prometheus.Gauge
	xdsNacks          prometheus.Counter
	xdsErrors         prometheus.Counter
	xdsStreamsRefused prometheus.Counter
	xdsSlowStreams    prometheus.Counter
	mapRepairs        *prometheus.CounterVec
	sourceEvents      *prometheus.CounterVec
	spliceEnabled     prometheus.Gauge
	spliceCheck       *prometheus.GaugeVec
}

// NewMetrics registers the agent's metrics; maps, when not nil, adds the collectors that
// read the datapath's counters and map fill at scrape time.
func NewMetrics(maps *bpf.Maps) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		services: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockmesh_services",
			Help: "Service frontends (VIP, port, protocol) programmed in the datapath."}),
		backends: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockmesh_backends",
			Help: "Backend entries programmed in the datapath (one per service and selected endpoint)."}),
		mapOps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sockmesh_map_ops_total",
			Help: "BPF map entries written or deleted by the agent, by map, operation and result."}, []string{"map", "op", "result"}),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sockmesh_reconcile_duration_seconds",
			Help: "Time to bring the datapath maps to a new model snapshot.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_reconcile_errors_total",
			Help: "Reconcile passes that stopped on a map write error (retried)."}),
		inputErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sockmesh_input_errors_total",
			Help: "Input objects rejected or only partly used, by kind and reason, counted when they appear."}, []string{"kind", "reason"}),
		rejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sockmesh_rejected_objects",
			Help: "Input objects currently rejected or only partly used, by kind and reason."}, []string{"kind", "reason"}),
		policyServices: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sockmesh_policy_services",
			Help: "Services with AuthorizationPolicies: enforced, or fail_closed (a rejected policy targets them and every request is denied)."}, []string{"state"}),
		xdsStreams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockmesh_xds_streams",
			Help: "Open ADS streams (SotW and delta) from Envoy and proxyless gRPC clients."}),
		xdsNacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_xds_nacks_total",
			Help: "xDS responses a client rejected (it keeps its last good version)."}),
		xdsErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_xds_snapshot_errors_total",
			Help: "Model snapshots that could not be turned into a consistent xDS snapshot (the last good one is served)."}),
		xdsStreamsRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_xds_streams_refused_total",
			Help: "ADS streams refused because --xds-max-streams were open."}),
		xdsSlowStreams: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_xds_slow_streams_closed_total",
			Help: "ADS connections closed because a response stayed unsent (the client stopped reading) past the send timeout."}),
		mapRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sockmesh_map_repairs_total",
			Help: "BPF map entries rewritten or removed because the map had drifted from what the agent programmed, by map."}, []string{"map"}),
		sourceEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sockmesh_source_events_total",
			Help: "Informer events from the API server, by kind and whether the object changed (unchanged: a resync or relist re-delivering what is stored, which costs no pass)."}, []string{"kind", "change"}),
		spliceEnabled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockmesh_splice_enabled",
			Help: "1 when the datapath splices local socket pairs (--splice auto or on, and the kernel check found every receiver like TCP)."}),
		spliceCheck: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sockmesh_splice_kernel_check",
			Help: "The start-up kernel check, by receiver and behaviour: 1 = a spliced socket behaved like TCP, 0 = it did not (splicing stays off)."}, []string{"receiver", "behaviour"}),
	}
	m.Registry.MustRegister(m.spliceEnabled, m.spliceCheck)
	m.Registry.MustRegister(m.xdsStreams, m.xdsNacks, m.xdsErrors, m.xdsStreamsRefused, m.xdsSlowStreams, m.policyServices)
	m.Registry.MustRegister(m.mapRepairs, m.sourceEvents)
	m.Registry.MustRegister(m.services, m.backends, m.mapOps, m.reconcileDuration, m.reconcileErrors,
		m.inputErrors, m.rejected, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if maps != nil {
		m.Registry.MustRegister(&datapathCollector{maps: maps})
	}
	return m
}

// observePolicies counts the services policies apply to, and those failing closed.
func (m *Metrics) observePolicies(snap *model.Snapshot) {
	enforced, failClosed := 0, 0
	for _, ps := range snap.Policies {
		enforced++
		for _, p := range ps {
			if p.Rejected {
				failClosed++
				break
			}
		}
	}
	m.policyServices.WithLabelValues("enforced").Set(float64(enforced - failClosed))
	m.policyServices.WithLabelValues("fail_closed").Set(float64(failClosed))
}

// observeSpliceCheck publishes the kernel check's findings.
func (m *Metrics) observeSpliceCheck(rep *sockops.Report) {
	for _, f := range rep.Findings {
		m.spliceCheck.WithLabelValues(f.Receiver, f.Behaviour).Set(boolGauge(f.LikeTCP()))
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// MapOp implements lbmap.Observer.
func (m *Metrics) MapOp(table, op string, n int, err error) {
	m.mapOps.WithLabelValues(table, op, "ok").Add(float64(n))
	if err != nil {
		m.mapOps.WithLabelValues(table, op, "error").Inc()
	}
}

// observeSourceEvent counts one informer event.
func (m *Metrics) observeSourceEvent(kind string, changed bool) {
	change := "unchanged"
	if changed {
		change = "changed"
	}
	m.sourceEvents.WithLabelValues(kind, change).Inc()
}

// MapRepairs implements lbmap.Observer.
func (m *Metrics) MapRepairs(table string, n int) {
	m.mapRepairs.WithLabelValues(table).Add(float64(n))
}

// kindLabel keeps the kind label to the kinds sockmesh reads (and "File"): an unknown
// kind is named in the log, and counted under "other" with its reason.
func kindLabel(kind string) string {
	switch kind {
	case model.KindService, model.KindEndpointSlice, model.KindPod, model.KindAuthorizationPolicy, source.KindFile, KindDevice:
		return kind
	}
	return "other"
}

// observeErrors counts errors new since the previous snapshot and sets the gauge.
func (m *Metrics) observeErrors(prev, cur []model.ObjectError) {
	seen := map[model.ObjectError]bool{}
	for _, e := range prev {
		seen[e] = true
	}
	m.rejected.Reset()
	for _, e := range cur {
		m.rejected.WithLabelValues(kindLabel(e.Kind), e.Reason).Inc()
		if !seen[e] {
			m.inputErrors.WithLabelValues(kindLabel(e.Kind), e.Reason).Inc()
		}
	}
}

var (
	translationsDesc = prometheus.NewDesc("sockmesh_translations_total",
		"Socket-LB translations of a service address to a backend, by protocol and family.", []string{"protocol"}, nil)
	redirectsDesc = prometheus.NewDesc("sockmesh_redirects_total",
		"Connects to L7 services sent to Envoy's redirect listener (result=refused: no listener for the family, failed closed).", []string{"result"}, nil)
	origDstDesc = prometheus.NewDesc("sockmesh_origdst_lookups_total",
		"getsockopt(SO_ORIGINAL_DST) calls, by result (hit = answered for a redirected socket, miss = left to the kernel).", []string{"result"}, nil)
	spliceDesc = prometheus.NewDesc("sockmesh_splice_total",
		"Splicing: sockets put in the sockhash, connections paired, messages and bytes moved without the TCP/IP stack.", []string{"what"}, nil)
	fallbacksDesc = prometheus.NewDesc("sockmesh_splice_fallbacks_total",
		"Connections or directions left on (or returned to) TCP, by reason.", []string{"reason"}, nil)
	datapathEventsDesc = prometheus.NewDesc("sockmesh_datapath_events_total",
		"Other socket-LB datapath events (no_backend = a connect refused for lack of backends).", []string{"event"}, nil)
	mapEntriesDesc = prometheus.NewDesc("sockmesh_map_entries",
		"Entries in a BPF map.", []string{"map"}, nil)
	mapPressureDesc = prometheus.NewDesc("sockmesh_map_pressure",
		"Fill ratio (entries / max entries) of a BPF map.", []string{"map"}, nil)
	datapathErrDesc = prometheus.NewDesc("sockmesh_datapath_read_errors", "1 when the last scrape could not read the datapath maps.", nil, nil)
)

// counterMetric places one datapath counter in its metric family and label.
func counterMetric(name string) (*prometheus.Desc, string) {
	switch {
	case strings.HasPrefix(name, "xlate_"):
		return translationsDesc, strings.TrimPrefix(name, "xlate_")
	case name == "redirect":
		return redirectsDesc, "ok"
	case name == "redirect_no_proxy":
		return redirectsDesc, "refused"
	case strings.HasPrefix(name, "origdst_"):
		return origDstDesc, strings.TrimPrefix(name, "origdst_")
	case strings.HasPrefix(name, "splice_fallback_"):
		return fallbacksDesc, strings.TrimPrefix(name, "splice_fallback_")
	case strings.HasPrefix(name, "splice_"):
		return spliceDesc, strings.TrimPrefix(name, "splice_")
	}
	return datapathEventsDesc, name
}

// datapathCollector reads the per-CPU counters and map fill from the kernel at scrape.
type datapathCollector struct{ maps *bpf.Maps }

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{translationsDesc, redirectsDesc, origDstDesc, spliceDesc, fallbacksDesc, datapathEventsDesc} {
		ch <- d
	}
	ch <- mapEntriesDesc
	ch <- mapPressureDesc
	ch <- datapathErrDesc
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.maps.Counters()
	for i, v := range counts {
		if bpf.CounterNames[i] == "" {
			continue
		}
		desc, label := counterMetric(bpf.CounterNames[i])
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), label)
	}
	fill, ferr := c.maps.Fill()
	for _, f := range fill {
		ch <- prometheus.MustNewConstMetric(mapEntriesDesc, prometheus.GaugeValue, float64(f.Entries), f.Name)
		ch <- prometheus.MustNewConstMetric(mapPressureDesc, prometheus.GaugeValue, float64(f.Entries)/float64(f.MaxEntries), f.Name)
	}
	failed := 0.0
	if errors.Join(err, ferr) != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(datapathErrDesc, prometheus.GaugeValue, failed)
}
