package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

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
			svcs, err := lbmap.List(lbmap.BPFTables(maps))
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(svcs)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tFRONTEND\tAFFINITY\tBACKENDS")
			for _, s := range svcs {
				var bs []string
				for _, b := range s.Backends {
					e := b.Address.String()
					if len(s.Backends) > 0 && b.Slots != int(s.Slots)/len(s.Backends) {
						e += fmt.Sprintf(" (%d/%d)", b.Slots, s.Slots)
					}
					bs = append(bs, e)
				}
				if len(bs) == 0 {
					bs = []string{"(none: connects refused)"}
				}
				aff := "-"
				if s.AffinitySeconds > 0 {
					aff = fmt.Sprintf("%ds", s.AffinitySeconds)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Frontend, aff, strings.Join(bs, ", "))
			}
			return tw.Flush()
		},
	}
	pins.register(list.Flags())
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	lb.AddCommand(list)
	return lb
}
