package sockops

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockmesh/sockmesh/bpf"
)

// Programs is the loaded sockops object: the splice and L7-redirect programs with their
// maps, pinned in the agent's pin dir beside socket-LB's, whose shared maps (config,
// counters, local addresses, the original destination by cookie) they reuse.
type Programs struct {
	dir   string
	objs  sockopsObjects
	links []link.Link
}

// Load loads the sockops object with its maps pinned in dir. bpf.Load must have run
// first: it creates the shared maps this object finds pinned.
func Load(dir string) (*Programs, error) {
	spec, err := loadSockops()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	p := &Programs{dir: dir}
	if err := bpf.LoadPinned(spec, &p.objs, dir, "sockops"); err != nil {
		return nil, err
	}
	return p, nil
}

// Attach attaches the cgroup programs (sock_ops, getsockopt, sock_release) with pinned
// links, and the sk_msg program to the sockhash.
func (p *Programs) Attach(cgroupPath string) error {
	o := p.objs.sockopsPrograms
	links, err := bpf.AttachCgroup(cgroupPath, p.dir, []bpf.Hook{
		{Name: "sockops", Attach: ebpf.AttachCGroupSockOps, Prog: o.SockOps},
		{Name: "getsockopt", Attach: ebpf.AttachCGroupGetsockopt, Prog: o.SockGetsockopt},
		{Name: "sock_release", Attach: ebpf.AttachCgroupInetSockRelease, Prog: o.SockRelease},
	})
	p.links = append(p.links, links...)
	if err != nil {
		return err
	}
	// sk_msg attaches to the sockhash itself and lives as long as the pinned map; a
	// new program replaces the old one for sockets added from now on.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: p.objs.SmSockhash.FD(), Program: o.SockMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attach sk_msg to sm_sockhash: %w", err)
	}
	return nil
}

// Close releases the agent's handles; pinned maps and links stay.
func (p *Programs) Close() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	return errors.Join(append(errs, p.objs.Close())...)
}
