package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

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
			if err := cleanPins(cmd.OutOrStdout(), pins.bpffs); err != nil {
				return err
			}
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
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("cannot check cgroup %s for sockmesh programs still attached: %w (listing BPF links needs CAP_SYS_ADMIN)", cg, err)
			}
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

// cleanPins removes the pins under dir while holding the dir's lock, which an agent on
// it holds under whatever path it was given, so no cleanup runs under a live agent.
func cleanPins(out io.Writer, dir string) (err error) {
	lock, err := bpf.LockPins(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintf(out, "nothing to clean: %s does not exist\n", dir)
		return nil
	case errors.Is(err, bpf.ErrPinsInUse):
		return fmt.Errorf("%w: is an agent running? stop it first", err)
	case errors.Is(err, bpf.ErrNotBPFFS):
		return fmt.Errorf("refusing to clean: %w", err)
	case err != nil:
		return err
	}
	defer func() { err = errors.Join(err, lock.Unlock()) }()
	if err := bpf.Cleanup(lock.Dir()); err != nil {
		return err
	}
	fmt.Fprintf(out, "removed sockmesh links and maps under %s\n", lock.Dir())
	return nil
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
