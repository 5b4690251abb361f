package blockdev

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// InUseByPath is InUse for a device path: a whole disk or a partition node
// (/dev/sda, /dev/nvme0n1p2, or a /dev/disk/by-id symlink). A block device
// is resolved by the major:minor of its node (stat rdev) to its whole disk
// in sysfs; a node under DevRoot that is not a block device (fake trees in
// tests) is resolved by name. A partition is refused (a BYOI target is a
// whole disk). A regular file standing in for a disk is in use when a loop
// device over it (same device and inode) is, and a loop device is in use
// when another loop device over the same file is.
func (s System) InUseByPath(devPath string) (reason string, err error) {
	st, err := os.Stat(devPath)
	if err != nil {
		return "", fmt.Errorf("check %s in use: %w", devPath, err)
	}
	u, err := s.usage()
	if err != nil {
		return "", err
	}
	name := ""
	if maj, min, ok := deviceNumber(st); ok {
		dn := fmt.Sprintf("%d:%d", maj, min)
		name = u.devnum[dn]
		if name == "" {
			if real, err := filepath.EvalSymlinks(filepath.Join(s.sysRoot(), "dev", "block", dn)); err == nil {
				name = filepath.Base(real)
			}
		}
		if _, ok := u.diskOf[name]; !ok {
			return "", fmt.Errorf("check %s in use: block device %s: %w", devPath, dn, ErrNotFound)
		}
	} else {
		rel, err := filepath.Rel(s.devRoot(), devPath)
		if err == nil && !strings.HasPrefix(rel, "..") {
			if real, err := filepath.EvalSymlinks(devPath); err == nil {
				rel = filepath.Base(real)
			}
			if _, ok := u.diskOf[filepath.Base(rel)]; ok {
				name = filepath.Base(rel)
			}
		}
		if name == "" {
			if st.Mode().IsRegular() {
				// A disk image file: in use when a loop device over it
				// is (a mounted loop would be corrupted under it).
				return u.loopsOver(st, ""), nil
			}
			return "", fmt.Errorf("check %s in use: not a block device or regular file", devPath)
		}
	}
	disk := u.diskOf[name]
	if disk != name {
		// A BYOI target is a whole disk: writing a partition node would
		// put a partition table inside a partition.
		return fmt.Sprintf("it is partition %s of disk %s, not a whole disk", name, disk), nil
	}
	why := u.reason(disk)
	if strings.HasPrefix(name, "loop") {
		// Another loop device over the same file shares its bytes.
		if bst, ok := u.s.loopBacking(name); ok {
			if r := u.loopsOver(bst, name); r != "" {
				why = strings.TrimPrefix(why+"; "+r, "; ")
			}
		}
	}
	return why, nil
}

// loopsOver describes the loop devices other than skip whose backing file
// is the file st (same device and inode) and that the running system uses;
// "" when there are none.
func (u *usage) loopsOver(st os.FileInfo, skip string) string {
	var why []string
	for name := range u.diskOf {
		if name == skip || u.diskOf[name] != name || !strings.HasPrefix(name, "loop") {
			continue
		}
		bst, ok := u.s.loopBacking(name)
		if !ok || !os.SameFile(st, bst) {
			continue
		}
		if r := u.reason(name); r != "" {
			why = append(why, fmt.Sprintf("its file backs %s, which is in use (%s)", name, r))
		}
	}
	sort.Strings(why)
	return strings.Join(why, "; ")
}

// loopBacking returns the file behind loop device name, from sysfs
// (loop/backing_file); ok is false when it is not attached or the file
// cannot be found (deleted).
func (s System) loopBacking(name string) (os.FileInfo, bool) {
	p := readString(filepath.Join(s.sysRoot(), "block", name, "loop", "backing_file"))
	if p == "" || strings.HasSuffix(p, " (deleted)") {
		return nil, false
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, false
	}
	return st, true
}

// CheckNotInUse returns an error wrapping ErrInUse, naming the reason,
// when the disk at devPath (or the disk of the partition at devPath) is in
// use; nil when it is free. It is InUseByPath for callers that refuse.
func (s System) CheckNotInUse(devPath string) error {
	reason, err := s.InUseByPath(devPath)
	if err != nil {
		return err
	}
	if reason != "" {
		return fmt.Errorf("disk %s: %w: %s", devPath, ErrInUse, reason)
	}
	return nil
}
