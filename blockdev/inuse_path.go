package blockdev

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// InUseByPath is InUse for a device path: a whole disk or a partition node
// (/dev/sda, /dev/nvme0n1p2, or a /dev/disk/by-id symlink). A block device
// is resolved by the major:minor of its node (stat rdev) to its whole disk
// in sysfs; a node under DevRoot that is not a block device (fake trees in
// tests) is resolved by name. A regular file standing in for a disk is
// never in use: the reason is "".
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
				return "", nil
			}
			return "", fmt.Errorf("check %s in use: not a block device or regular file", devPath)
		}
	}
	return u.reason(u.diskOf[name]), nil
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
