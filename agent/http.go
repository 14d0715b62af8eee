package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sync"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sockmesh/sockmesh/agent/model"
)

// state is what /readyz and /debug/state report.
type state struct {
	mu        sync.Mutex
	ready     bool
	snapshot  *model.Snapshot
	mapErrors []model.ObjectError
	lastError string
	splice    DebugSplice // set once at start
	// noInput says why the source has no usable input yet; adopted is how many services
	// the previous run left programmed, which keep serving meanwhile.
	noInput    string
	adopted    int
	fileErrors []model.ObjectError // the input's own problems while there is no snapshot
}

// proxyHealthy is the health the healthCheckNodePort servers report: the datapath is
// programmed and the last pass programmed it all (a failing map write makes load
// balancers send new flows elsewhere, as kube-proxy's failing syncs do).
func (s *state) proxyHealthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready && s.lastError == ""
}

// readiness is /readyz's answer: ready once a snapshot was programmed.
func (s *state) readiness() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ready:
		return true, "ok"
	case s.noInput != "":
		return false, fmt.Sprintf("not ready: no input yet (%s); the %d services programmed before keep serving", s.noInput, s.adopted)
	case s.lastError != "":
		return false, "not ready: programming failed: " + s.lastError
	}
	return false, "not ready: no snapshot programmed yet"
}

// DebugSplice is the splice decision in /debug/state: what was asked, whether the
// datapath splices, and where the kernel check found a receiver unlike TCP.
type DebugSplice struct {
	Mode        string   `json:"mode"`
	Splicing    bool     `json:"splicing"`
	Differences []string `json:"kernelDifferences,omitempty"`
	CheckError  string   `json:"kernelCheckError,omitempty"`
}

// DebugService is one frontend in /debug/state.
type DebugService struct {
	Name     string   `json:"name"`
	Frontend string   `json:"frontend"`
	Backends []string `json:"backends"`
	Selected []string `json:"selected"`
	// L7 services go through the node's Envoy; Policies names the AuthorizationPolicies
	// that apply, a rejected one as "NS/NAME (rejected: denies all)".
	L7       bool     `json:"l7,omitempty"`
	Protocol string   `json:"appProtocol,omitempty"`
	Policies []string `json:"policies,omitempty"`
}

// DebugState is the JSON body of /debug/state.
type DebugState struct {
	Ready          bool           `json:"ready"`
	NoInput        string         `json:"noInput,omitempty"`
	Services       []DebugService `json:"services"`
	Errors         []string       `json:"errors"`
	LastApplyError string         `json:"lastApplyError,omitempty"`
	Splice         DebugSplice    `json:"splice"`
}

func (s *state) debug() DebugState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := DebugState{Ready: s.ready, NoInput: s.noInput, LastApplyError: s.lastError, Services: []DebugService{}, Errors: []string{}, Splice: s.splice}
	if s.snapshot != nil {
		for _, svc := range s.snapshot.SortedServices() {
			ds := DebugService{Name: svc.Name.String(), Frontend: svc.Frontend.String(), Backends: []string{}, Selected: []string{},
				L7: svc.L7}
			if svc.L7 {
				ds.Protocol = svc.AppProtocol.String()
			}
			for _, p := range s.snapshot.Policies[svc.Name] {
				name := p.Name.String() + " (" + p.Action.String() + ")"
				if p.Rejected {
					name = p.Name.String() + " (rejected: denies all)"
				}
				ds.Policies = append(ds.Policies, name)
			}
			for _, b := range svc.Backends {
				ds.Backends = append(ds.Backends, b.AddrPort().String())
			}
			for _, b := range svc.Selected() {
				ds.Selected = append(ds.Selected, b.AddrPort().String())
			}
			out.Services = append(out.Services, ds)
		}
		for _, e := range s.snapshot.Errors {
			out.Errors = append(out.Errors, e.Error())
		}
	}
	for _, e := range append(s.mapErrors, s.fileErrors...) {
		out.Errors = append(out.Errors, e.Error())
	}
	return out
}

// handler serves metrics and health; with debug (the root-only socket) also the state.
func (a *Agent) handler(debug bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, msg := a.state.readiness()
		if !ready {
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(msg + "\n"))
	})
	if debug {
		mux.HandleFunc("/debug/state", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(a.state.debug())
		})
		// Go's profiles, as Cilium's --pprof serves them, but only on the root-only
		// socket: a heap or CPU profile of a live agent is how its memory and reconcile
		// time get explained.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	}
	return mux
}
