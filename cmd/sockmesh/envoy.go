package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/sockmesh/sockmesh/agent"
	"github.com/sockmesh/sockmesh/envoy"
)

func newEnvoyCmd() *cobra.Command {
	root := &cobra.Command{Use: "envoy", Short: "Run the node's Envoy beside the agent"}
	opt := envoy.Options{XDSListen: agent.DefaultXDSListen, AdminPort: 15000}
	opt.NodeName, _ = os.Hostname()
	boot := &cobra.Command{
		Use:   "bootstrap",
		Short: "Print the Envoy bootstrap (JSON) that connects Envoy to this agent's xDS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := envoy.Bootstrap(opt)
			if err != nil {
				return err
			}
			js, err := envoy.JSON(b)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(append(js, '\n'))
			return err
		},
	}
	fs := boot.Flags()
	fs.StringVar(&opt.NodeName, "node-name", opt.NodeName, "this node's name: Envoy's node id")
	fs.StringVar(&opt.XDSListen, "xds-listen", opt.XDSListen, "the agent's --xds-listen")
	fs.Uint32Var(&opt.AdminPort, "admin-port", opt.AdminPort, "Envoy's admin port, on 127.0.0.1")
	root.AddCommand(boot)
	return root
}
