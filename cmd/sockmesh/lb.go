package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
)

// listMemoryLimit is the heap `lb list` grows to before it collects: ten times what
// 30k services of 10 backends take (some 100 MB).
const listMemoryLimit = 1 << 30

func newLBCmd() *cobra.Command {
	lb := &cobra.Command{Use: "lb", Short: "Inspect the load-balancing maps"}
	var pins pinFlags
	var output string
	list := &cobra.Command{
		Use:   "list",
		Short: "Services and their backends, read from the pinned maps (works while the agent is down)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			// Everything read is held until the process exits, so a collection would
			// free nothing; at 30k services the collector's passes cost a third of
			// the run. Only a heap nearing the limit collects.
			debug.SetGCPercent(-1)
			debug.SetMemoryLimit(listMemoryLimit)
			maps, err := bpf.OpenPinned(pins.bpffs)
			if err != nil {
				return err
			}
			defer maps.Close()
			listing, err := lbmap.OpenListing(maps)
			if err != nil {
				return err
			}
			defer listing.Close()
			// The backends are filled a chunk of rows at a time as the rows are
			// written, never all at once.
			svcs := listing.Headers()
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), svcs, fillFrom(listing))
			}
			return writeTable(cmd.OutOrStdout(), svcs, fillFrom(listing))
		},
	}
	pins.register(list.Flags())
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	lb.AddCommand(list)
	return lb
}
