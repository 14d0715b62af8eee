package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/bpf"
)

func newStatusCmd() *cobra.Command {
	var pins pinFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Datapath counters and map fill, read from the pinned maps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			maps, err := bpf.OpenPinned(pins.bpffs)
			if err != nil {
				return err
			}
			defer maps.Close()
			counts, err := maps.Counters()
			if err != nil {
				return err
			}
			fill, err := maps.Fill()
			if err != nil {
				return err
			}
			var cfg bpf.Config
			if err := maps.SmConfig.Lookup(uint32(0), &cfg); err != nil {
				return fmt.Errorf("read sm_config: %w", err)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			// What the agent programmed, after its kernel check: see README, Splicing.
			fmt.Fprintf(tw, "splicing\t%s\n\n", map[uint32]string{bpf.SpliceOff: "off", bpf.SpliceOn: "on", bpf.SpliceAuto: "auto (app -> Envoy)"}[cfg.Splice])
			fmt.Fprintln(tw, "COUNTER\tVALUE")
			for i, v := range counts {
				if bpf.CounterNames[i] == "" {
					continue
				}
				fmt.Fprintf(tw, "%s\t%d\n", bpf.CounterNames[i], v)
			}
			fmt.Fprintln(tw, "\nMAP\tENTRIES\tMAX\tFILL")
			for _, f := range fill {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f%%\n", f.Name, f.Entries, f.MaxEntries, 100*float64(f.Entries)/float64(f.MaxEntries))
			}
			return tw.Flush()
		},
	}
	pins.register(cmd.Flags())
	return cmd
}
