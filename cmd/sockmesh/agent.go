package main

import (
	"log/slog"
	"os"
	"os/signal"
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
	fs.StringVar(&cfg.Source, "source", "", "where services come from: file:PATH (multi-document Kubernetes YAML, watched)")
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "this node's name")
	fs.StringVar(&cfg.HTTPListen, "http-listen", cfg.HTTPListen, "address for /metrics /healthz /readyz /debug/state (empty: off)")
	fs.IntVar(&cfg.MaxServices, "max-services", cfg.MaxServices, "capacity of the service map (frontends)")
	fs.IntVar(&cfg.MaxBackends, "max-backends", cfg.MaxBackends, "capacity of the backend and slot maps")
	fs.BoolVar(&logJSON, "log-json", false, "log as JSON lines")
	_ = cmd.MarkFlagRequired("source")
	return cmd
}
