package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/bpf"
)

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
			maps, err := bpf.OpenPinned(pins.bpffs)
			if err != nil {
				return err
			}
			defer maps.Close()
			svcs, err := lbmap.ListMaps(maps)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), svcs)
			}
			return writeTable(cmd.OutOrStdout(), svcs)
		},
	}
	pins.register(list.Flags())
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	lb.AddCommand(list)
	return lb
}
