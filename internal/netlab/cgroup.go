package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Cgroup is a child cgroup v2 made for the demo or a test: the socket hooks attach here,
// never to the root, and only processes moved in on purpose are affected.
type Cgroup struct {
	Path string
	// restore is where the current process goes back to if it moved itself in.
	restore string
}

// NewCgroup creates DIR/name under the cgroup v2 mount root.
func NewCgroup(root, name string) (*Cgroup, error) {
	p := filepath.Join(root, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", p, err)
	}
	return &Cgroup{Path: p}, nil
}

// EnterSelf moves the current process into the cgroup; Close moves it back.
func (c *Cgroup) EnterSelf() error {
	cur, err := selfCgroupV2()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(cur, "/") {
		return fmt.Errorf("unexpected cgroup path %q", cur)
	}
	c.restore = filepath.Join(cgroupRootOf(c.Path), cur)
	return writeProcs(c.Path, os.Getpid())
}

// FD opens the cgroup directory, for starting a child directly inside it
// (SysProcAttr.UseCgroupFD).
func (c *Cgroup) FD() (int, error) {
	return unix.Open(c.Path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// Close moves this process back out if it entered, kills anything else left inside
// (cgroup.kill), and removes the cgroup.
func (c *Cgroup) Close() error {
	var errs []error
	if c.restore != "" {
		errs = append(errs, writeProcs(c.restore, os.Getpid()))
		c.restore = ""
	}
	if err := os.WriteFile(filepath.Join(c.Path, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// Killed processes leave the cgroup asynchronously; rmdir says EBUSY until then.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(c.Path)
		if err == nil || errors.Is(err, unix.ENOENT) {
			break
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", c.Path, err))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.Join(errs...)
}

func writeProcs(dir string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move pid %d to cgroup %s: %w", pid, dir, err)
	}
	return nil
}

// selfCgroupV2 returns this process's path in the unified hierarchy ("0::/path").
func selfCgroupV2() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("process has no cgroup v2 membership")
}

// cgroupRootOf walks up from a cgroup dir to the cgroup2 mount point.
func cgroupRootOf(p string) string {
	for {
		parent := filepath.Dir(p)
		var st unix.Statfs_t
		if parent == p || unix.Statfs(parent, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			return p
		}
		p = parent
	}
}
