package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/bpf"
)

func newCleanupCmd() *cobra.Command {
	var pins pinFlags
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach every program and remove every pin sockmesh made (services stop being translated)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lock, err := bpf.LockPins(pins.bpffs)
			if err != nil {
				return fmt.Errorf("%w: is an agent running? stop it first", err)
			}
			defer lock.Unlock()
			if err := bpf.Cleanup(pins.bpffs); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed sockmesh links and maps under %s\n", pins.bpffs)
			// Unpinning detaches what was pinned; a running agent still holds its own links.
			cg := pins.cgroup
			if cg == "" {
				root, err := agent.CgroupV2Root()
				if err != nil {
					return err
				}
				cg = root
			}
			left, err := bpf.AttachedLinks(cg)
			if err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("cgroup %s still has sockmesh programs attached (%s), held by a process other than an agent on --bpffs %s", cg, strings.Join(left, ", "), pins.bpffs)
			}
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
