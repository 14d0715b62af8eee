package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/internal/demo"
)

func newDemoCmd() *cobra.Command {
	opt := demo.Options{Requests: 100}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Self-contained demo on this machine: namespaces, the agent, real TCP and DNS traffic to a ClusterIP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opt.Out = cmd.OutOrStdout()
			opt.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			// Interrupted or terminated, the demo still removes what it made.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return demo.Run(ctx, opt)
		},
	}
	cmd.Flags().IntVar(&opt.Requests, "requests", opt.Requests, "TCP requests and DNS queries per address family")
	return cmd
}
