package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/bpf"
)

func newCTCmd() *cobra.Command {
	ct := &cobra.Command{Use: "ct", Short: "Inspect the NodePort connection tracking"}
	var pins pinFlags
	var output string
	list := &cobra.Command{
		Use:   "list",
		Short: "NodePort flows the datapath tracks, read from the pinned maps (works while the agent is down)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			flows, err := bpf.ReadFlows(pins.bpffs)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if flows == nil {
					flows = []bpf.Flow{}
				}
				return enc.Encode(flows)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "PROTO\tCLIENT\tFRONTEND\tBACKEND\tSNAT\tIDLE\tSTATE")
			for _, f := range flows {
				nat, state := "-", "open"
				if f.NAT.IsValid() {
					nat = f.NAT.String()
				}
				if f.Closing {
					state = "closing"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Protocol, f.Client, f.Frontend, f.Backend, nat, f.Idle, state)
			}
			return w.Flush()
		},
	}
	pins.register(list.Flags())
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	ct.AddCommand(list)
	return ct
}
