package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/bpf"
)

func newCleanupCmd() *cobra.Command {
	var pins pinFlags
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach every program and remove every pin sockmesh made (services stop being translated)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bpf.Cleanup(pins.bpffs); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed sockmesh links and maps under %s\n", pins.bpffs)
			return nil
		},
	}
	pins.register(cmd.Flags())
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "sockmesh %s\n", version)
		},
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"
