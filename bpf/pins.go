package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// bpffsRoot is where bpffs is mounted on a fresh machine that has none.
const bpffsRoot = "/sys/fs/bpf"

// ErrNotBPFFS says a pin dir is on another filesystem: there, sm_* names are someone's
// files, not pins.
var ErrNotBPFFS = errors.New("not on a bpf filesystem")

// EnsureBPFFS makes sure dir exists on a bpf filesystem, so that it can hold pins and be
// locked (LockPins). It mounts bpffs on /sys/fs/bpf when dir is under it and a fresh
// machine has none there (mounting needs CAP_SYS_ADMIN), then makes dir and any missing
// parents. It makes nothing on another filesystem. A dir that is a symlink is made where
// the symlink points.
//
// created says this call made dir. A start that fails later removes such a dir, but only
// while it holds the dir's lock: a dir this start made may already be the lock holder's.
func EnsureBPFFS(dir string) (created bool, err error) {
	target, err := followLinks(dir)
	if err != nil {
		return false, err
	}
	if isUnder(target, bpffsRoot) && checkBPFFS(bpffsRoot) != nil {
		if err := mountBPFFS(bpffsRoot); err != nil {
			return false, err
		}
	}
	if fi, err := os.Stat(target); err == nil {
		if !fi.IsDir() {
			return false, fmt.Errorf("pin dir %s: not a directory", dir)
		}
		if err := checkBPFFS(target); err != nil {
			return false, fmt.Errorf("pin dir %s: %w", dir, err)
		}
		return false, nil
	}
	// Check where dir would be made before making anything, so a wrong --bpffs leaves
	// no directory behind on another filesystem.
	if err := checkBPFFS(existingAncestor(target)); err != nil {
		return false, fmt.Errorf("pin dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return false, fmt.Errorf("pin dir %s: %w", dir, err)
	}
	return true, nil
}

func mountBPFFS(root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	err := unix.Mount("bpffs", root, "bpf", 0, "mode=0700")
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("mount bpffs on %s: %w (mounting needs CAP_SYS_ADMIN; or mount it beforehand: mount -t bpf bpffs %s)", root, err, root)
	}
	if err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", root, err)
	}
	return nil
}

// followLinks follows dir while it is a symlink, also one that points nowhere: Cleanup
// removes the directory a symlinked pin dir points to, and the next start makes it again.
func followLinks(dir string) (string, error) {
	path, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for range 40 { // the kernel's own limit on symlinks in one lookup
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			return path, nil
		}
		to, err := os.Readlink(path)
		if err != nil {
			return "", fmt.Errorf("pin dir %s: %w", dir, err)
		}
		if !filepath.IsAbs(to) {
			to = filepath.Join(filepath.Dir(path), to)
		}
		path = to
	}
	return "", fmt.Errorf("pin dir %s: %w", dir, unix.ELOOP)
}

// existingAncestor returns path or its nearest parent that exists.
func existingAncestor(path string) string {
	for {
		if _, err := os.Stat(path); err == nil {
			return path
		}
		parent := filepath.Dir(path)
		if parent == path {
			return path
		}
		path = parent
	}
}

// Cleanup removes every link (detaching the programs) and map sockmesh pinned in dir,
// then dir itself. It works without a running agent; callers hold the dir's lock
// (LockPins) so that it never runs under one. Every sockmesh map, of any object, is named
// sm_*. A dir that is not on a bpf filesystem is refused, a dir that does not exist has
// nothing to clean, and a symlinked dir is cleaned where it points (the symlink stays).
func Cleanup(dir string) error {
	resolved, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("clean pin dir %s: %w", dir, err)
	}
	if err := checkBPFFS(resolved); err != nil {
		return fmt.Errorf("refusing to clean %s: %w", describePath(dir, resolved), err)
	}
	dir = resolved
	var errs []error
	links, _ := os.ReadDir(LinksDir(dir))
	for _, e := range links {
		pin := filepath.Join(LinksDir(dir), e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("pinned link %s: %w", pin, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		l.Close()
	}
	if err := os.Remove(LinksDir(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// NodePort tc filters attached with netlink (kernels without TCX) are no links:
	// they are found on the devices of this namespace by name.
	if _, err := DetachNetlinkTCExcept(nil); err != nil {
		errs = append(errs, err)
	}
	pins, _ := filepath.Glob(filepath.Join(dir, "sm_*"))
	for _, pin := range pins {
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s (not empty?): %w", dir, err))
	}
	return errors.Join(errs...)
}

// checkBPFFS says whether path is on a bpf filesystem, and if not, on which one.
func checkBPFFS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%w (it is on %s)", ErrNotBPFFS, fsName(int64(st.Type)))
	}
	return nil
}

// fsName names the filesystems a mistyped pin dir most likely lands on.
func fsName(magic int64) string {
	switch magic {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.SYSFS_MAGIC:
		return "sysfs"
	case unix.PROC_SUPER_MAGIC:
		return "procfs"
	case unix.CGROUP2_SUPER_MAGIC:
		return "cgroup2"
	}
	return fmt.Sprintf("filesystem type %#x", magic)
}

// describePath names a path as given, and where it leads when that differs.
func describePath(given, resolved string) string {
	if abs, err := filepath.Abs(given); err == nil && abs == resolved {
		return given
	}
	return fmt.Sprintf("%s (%s)", given, resolved)
}

func isUnder(path, root string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !filepath.IsAbs(rel) && (len(rel) < 3 || rel[:3] != "../")
}
