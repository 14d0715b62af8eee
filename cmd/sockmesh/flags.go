package main

import (
	"github.com/spf13/pflag"

	"github.com/sockmesh/sockmesh/agent"
)

// pinFlags are the flags every verb that touches pins or attachments shares.
type pinFlags struct {
	bpffs  string
	cgroup string
}

func (p *pinFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&p.bpffs, "bpffs", agent.DefaultBPFFS, "pin dir for sockmesh's maps and links (bpffs is mounted if missing)")
	fs.StringVar(&p.cgroup, "cgroup", "", "cgroup v2 dir the socket hooks attach to (default: the cgroup2 root)")
}
