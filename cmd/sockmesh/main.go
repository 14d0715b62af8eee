// Command sockmesh is the node agent and its CLI: flags in, agent.Run and the CLI verbs
// out. Nothing else lives here.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "sockmesh:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "sockmesh",
		Short:         "Kubernetes services at the socket layer with eBPF",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newAgentCmd(), newLBCmd(), newCTCmd(), newStatusCmd(), newCleanupCmd(), newVersionCmd(), newDemoCmd(), newEnvoyCmd())
	return root
}
