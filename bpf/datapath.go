package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Limits sizes the maps that hold programmed state.
type Limits struct {
	MaxServices int // frontends (VIP, port, protocol)
	MaxBackends int // backend entries and slots
}

// DefaultLimits match Cilium's defaults for the service and backend tables.
var DefaultLimits = Limits{MaxServices: 65536, MaxBackends: 262144}

// Datapath is the loaded socket-LB programs and their maps, pinned under a bpffs dir.
type Datapath struct {
	dir  string
	objs socklbObjects
	// links stay open while the agent runs, so `sockmesh cleanup` can tell that an agent
	// still holds the attachments; they are pinned, so closing them detaches nothing.
	links []link.Link
	// Features the kernel lacks and what sockmesh does instead, for the start-up log.
	Degraded []string
}

// Maps returns the loaded maps.
func (d *Datapath) Maps() *Maps {
	lb := d.objs.socklbMaps
	return &Maps{
		SmServices: lb.SmServices, SmSlots: lb.SmSlots, SmBackends: lb.SmBackends,
		SmAffinity: lb.SmAffinity, SmRevnat: lb.SmRevnat, SmSvcNames: lb.SmSvcNames,
		SmCounters: lb.SmCounters, SmConfig: lb.SmConfig, SmOrigdstCk: lb.SmOrigdstCk,
		SmLocal: lb.SmLocal,
	}
}

// Load loads the socket-LB programs and maps. Maps are pinned by name in dir: existing
// pins are adopted with their contents, so a restarted agent sees what the last one
// programmed. Load it before other objects (sockops): it creates the shared maps.
func Load(dir string, lim Limits) (*Datapath, error) {
	if _, err := EnsureBPFFS(dir); err != nil {
		return nil, err
	}
	spec, err := loadSocklb()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	spec.Maps[socklbMapSmServices].MaxEntries = uint32(lim.MaxServices)
	spec.Maps[socklbMapSmSvcNames].MaxEntries = uint32(lim.MaxServices)
	// Backend ids are array indexes from 1: index 0 stays empty.
	spec.Maps[socklbMapSmBackends].MaxEntries = uint32(lim.MaxBackends) + 1
	spec.Maps[socklbMapSmSlots].MaxEntries = uint32(lim.MaxBackends)

	d := &Datapath{dir: dir}
	if err := features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval); err == nil {
		if err := spec.Variables["have_set_retval"].Set(uint8(1)); err != nil {
			return nil, err
		}
	} else {
		d.Degraded = append(d.Degraded, "bpf_set_retval unavailable (kernel < 5.18): connects to a service without backends fail with EPERM instead of ECONNREFUSED")
	}
	if err := migrateBackends(dir, spec.Maps[socklbMapSmBackends]); err != nil {
		return nil, err
	}
	if err := LoadPinned(spec, &d.objs, dir, "socket-LB"); err != nil {
		return nil, err
	}
	return d, nil
}

// LoadPinned loads one object into to (bpf2go's objects struct) with its maps pinned by
// name in dir, after checking that pins left by an earlier agent fit. Maps another
// object pinned there already (the shared ones) are reused.
func LoadPinned(spec *ebpf.CollectionSpec, to any, dir, what string) error {
	names := make([]string, 0, len(spec.Maps))
	for name := range spec.Maps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if m := spec.Maps[name]; m.Pinning == ebpf.PinByName {
			if err := checkPinned(filepath.Join(dir, name), m); err != nil {
				return err
			}
		}
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	if err := spec.LoadAndAssign(to, opts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("load %s programs: %+v", what, verr)
		}
		return fmt.Errorf("load %s programs: %w", what, err)
	}
	return nil
}

// checkPinned turns cilium/ebpf's generic incompatibility error into one that says which
// pin and what to do: a size change needs an explicit cleanup, never a silent flush.
func checkPinned(path string, spec *ebpf.MapSpec) error {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pinned map %s: %w", path, err)
	}
	defer m.Close()
	if err := spec.Compatible(m); err != nil {
		return fmt.Errorf("pinned map %s does not match this agent (%v); a changed --max-* flag needs `sockmesh cleanup` first, which drops programmed services", path, err)
	}
	return nil
}

// Close releases the agent's handles. Pinned maps and links stay: services keep working.
func (d *Datapath) Close() error {
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	return errors.Join(append(errs, d.objs.Close())...)
}

// Hook is one cgroup attachment: a program and the pin name of its link.
type Hook struct {
	Name   string
	Attach ebpf.AttachType
	Prog   *ebpf.Program
}

func (d *Datapath) hooks() []Hook {
	p := d.objs.socklbPrograms
	return []Hook{
		{"connect4", ebpf.AttachCGroupInet4Connect, p.Sock4Connect},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, p.Sock4Sendmsg},
		{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, p.Sock4Recvmsg},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, p.Sock4Getpeer},
		{"connect6", ebpf.AttachCGroupInet6Connect, p.Sock6Connect},
		{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, p.Sock6Sendmsg},
		{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, p.Sock6Recvmsg},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername, p.Sock6Getpeer},
	}
}

// LinksDir is where the attachments' bpf_links are pinned.
func LinksDir(dir string) string { return filepath.Join(dir, "links") }

// Attach attaches the socket-LB programs to the cgroup (see AttachCgroup).
func (d *Datapath) Attach(cgroupPath string) error {
	links, err := AttachCgroup(cgroupPath, d.dir, d.hooks())
	d.links = append(d.links, links...)
	return err
}

// AttachCgroup attaches each hook's program to the cgroup with a bpf_link pinned under
// LinksDir(dir). A link pinned by an earlier agent on the same cgroup is updated in
// place (atomically, no gap in service); one pinned for another cgroup is replaced. The
// returned links stay open while the agent runs, so `sockmesh cleanup` can tell that an
// agent still holds the attachments.
func AttachCgroup(cgroupPath, dir string, hooks []Hook) ([]link.Link, error) {
	cgID, err := CgroupID(cgroupPath)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(LinksDir(dir), 0o700); err != nil {
		return nil, err
	}
	var links []link.Link
	for _, h := range hooks {
		l, err := attachOne(h, cgroupPath, cgID, filepath.Join(LinksDir(dir), h.Name))
		if err != nil {
			return links, fmt.Errorf("attach %s to cgroup %s: %w", h.Name, cgroupPath, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// SetConfig writes the runtime settings the programs read.
func (d *Datapath) SetConfig(c Config) error {

	if err := d.objs.SmConfig.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write sm_config: %w", err)
	}
	return nil
}

func attachOne(h Hook, cgroupPath string, cgID uint64, pin string) (link.Link, error) {
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID {
			if err := old.Update(h.Prog); err != nil {
				old.Close()
				return nil, err
			}
			return old, nil
		}
		// Pinned for another cgroup (the --cgroup flag changed): detach it.
		if err := old.Unpin(); err != nil {
			old.Close()
			return nil, err
		}
		old.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pinned link %s: %w", pin, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.Attach, Program: h.Prog})
	if err != nil {
		return nil, err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// CgroupID returns the cgroup v2 id (the directory's inode number).
func CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not a cgroup v2 directory", path)
	}
	return st.Ino, nil
}

// AttachedLinks lists the names of sockmesh programs attached by bpf_link to the cgroup
// at path, whether pinned or held open by a running agent.
func AttachedLinks(cgroupPath string) ([]string, error) {
	cgID, err := CgroupID(cgroupPath)
	if err != nil {
		return nil, err
	}
	return AttachedLinksByID(cgID)
}

// AttachedLinksByID is AttachedLinks for a cgroup id (the cgroup may be gone already).
func AttachedLinksByID(cgID uint64) ([]string, error) {
	ours := map[string]bool{}
	for _, name := range ProgramNames() {
		ours[name] = true
	}
	var out []string
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, ierr := it.Link.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID {
			if prog, perr := ebpf.NewProgramFromID(info.Program); perr == nil {
				if pi, err := prog.Info(); err == nil && ours[pi.Name] {
					out = append(out, pi.Name)
				}
				prog.Close()
			}
		}
		it.Link.Close()
	}
	return out, it.Err()
}

// ProgramNames are the kernel names of every sockmesh cgroup program, socket-LB and
// sockops alike (each fits the kernel's 15-byte name limit, so names read back from the
// kernel match): how attachments are recognised as sockmesh's.
func ProgramNames() []string {
	return []string{"sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeer",
		"sock6_connect", "sock6_sendmsg", "sock6_recvmsg", "sock6_getpeer", "sock_ops", "sock_getsockopt", "sock_release"}
}
