package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/agent"
)

func newAgentCmd() *cobra.Command {
	cfg := agent.DefaultConfig()
	var pins pinFlags
	var logJSON bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: program services into the socket-LB datapath",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.BPFFS, cfg.CgroupPath = pins.bpffs, pins.cgroup
			var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
			if logJSON {
				h = slog.NewJSONHandler(os.Stderr, nil)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return agent.Run(ctx, cfg, slog.New(h))
		},
	}
	fs := cmd.Flags()
	pins.register(fs)
	fs.StringVar(&cfg.Source, "source", "kubernetes", "where services come from: kubernetes (the API server: --kubeconfig, $KUBECONFIG or in-cluster), or file:PATH (multi-document Kubernetes YAML, watched)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for --source kubernetes outside a cluster (default $KUBECONFIG, else in-cluster)")
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "this node's name")
	fs.StringVar(&cfg.XDSListen, "xds-listen", cfg.XDSListen, "ADS for the node's Envoy and proxyless gRPC: unix:PATH (mode 0600) or tcp:HOST:PORT; empty: off")
	fs.StringVar(&cfg.HTTPListen, "http-listen", cfg.HTTPListen, "address for /metrics /healthz /readyz (empty: off)")
	fs.StringVar(&cfg.DebugListen, "debug-listen", cfg.DebugListen, "root-only unix socket for /debug/state and the --http-listen paths: unix:PATH (mode 0600); empty: off")
	fs.Int64Var(&cfg.MaxInputBytes, "max-input-bytes", cfg.MaxInputBytes, "largest input file read (decoding costs several times its size in memory)")
	fs.IntVar(&cfg.XDSMaxStreams, "xds-max-streams", cfg.XDSMaxStreams, "concurrent ADS streams served; more are refused")
	fs.DurationVar(&cfg.RepairInterval, "map-repair-interval", cfg.RepairInterval, "how often the LB maps are read back and drift from what the agent programmed is repaired")
	fs.IntVar(&cfg.MaxServices, "max-services", cfg.MaxServices, "capacity of the service map (frontends)")
	fs.IntVar(&cfg.MaxBackends, "max-backends", cfg.MaxBackends, "capacity of the backend and slot maps")
	fs.StringVar(&cfg.EnvoyRedirect, "envoy-redirect", "", "where L7-policy connections go: IP:PORT[,IP:PORT] (default <node IPv4>:15001)")
	fs.Var(hexUint32{&cfg.EnvoyMark}, "envoy-mark", "SO_MARK (hex) on Envoy's own sockets, which are never redirected")
	fs.StringVar(&cfg.HealthCheckBind, "health-check-bind-address", cfg.HealthCheckBind, "address the healthCheckNodePort servers (LoadBalancer Services with externalTrafficPolicy Local) listen on; empty: every address")
	fs.StringSliceVar(&cfg.Devices, "devices", nil, "NodePort devices (comma-separated): NodePort, externalIP and LoadBalancer traffic arriving on them is load-balanced in tc (and XDP); empty: none")
	fs.StringVar(&cfg.NodePortMode, "nodeport-mode", cfg.NodePortMode, "how NodePort traffic reaches a backend on another node: snat (the reply returns through this node), dsr (the backend sees the client and its node answers directly) or hybrid (dsr for TCP, snat for UDP)")
	fs.StringVar(&cfg.XDP, "xdp", cfg.XDP, "XDP on the NodePort devices: native (falls back to generic where the driver lacks it), generic or off")
	fs.StringVar(&cfg.TCAttach, "tc-attach", cfg.TCAttach, "how the NodePort tc programs attach: auto (TCX links where the kernel has them, Linux 6.6+, else netlink clsact filters), tcx or netlink")
	fs.StringVar(&cfg.NodePortRange, "node-port-range", cfg.NodePortRange, "NodePorts served (kube-apiserver's --service-node-port-range); a Service's NodePort outside it is reported and not served")
	fs.Uint32Var(&cfg.MaglevTableSize, "maglev-table-size", cfg.MaglevTableSize, "entries of a Maglev table (a prime: 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071); each takes that many slots of --max-backends")
	fs.Var(hexUint32{&cfg.MaglevSeed}, "maglev-seed", "seed (hex) of the Maglev tables and flow hash: give every node the same one")
	fs.StringVar(&cfg.Splice, "splice", cfg.Splice, "splice local socket pairs with sock_ops/sk_msg: auto, on or off (both only where the kernel's spliced sockets behave like TCP; see README)")
	fs.BoolVar(&logJSON, "log-json", false, "log as JSON lines")
	return cmd
}

// hexUint32 is a flag value written in hex (0x prefix optional).
type hexUint32 struct{ v *uint32 }

func (h hexUint32) String() string {
	if h.v == nil {
		return "0x0"
	}
	return fmt.Sprintf("%#x", *h.v)
}

func (h hexUint32) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 32)
	if err != nil {
		return fmt.Errorf("want a hex number such as 0x539")
	}
	*h.v = uint32(n)
	return nil
}

func (hexUint32) Type() string { return "hex" }
