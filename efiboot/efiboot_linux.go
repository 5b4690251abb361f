package efiboot

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// fsImmutableFL is FS_IMMUTABLE_FL from <linux/fs.h>.
const fsImmutableFL = 0x00000010

// efivarfsMagic is EFIVARFS_MAGIC from <linux/magic.h>.
const efivarfsMagic = 0xde5e81e4

// makeMutable clears the immutable flag efivarfs sets on well-known
// variables (Boot####, BootOrder, ...), as libefivar does before writing or
// deleting one. A missing file or a filesystem without inode flags is fine.
func makeMutable(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "FS_IOC_GETFLAGS", Path: path, Err: err}
	}
	if flags&fsImmutableFL == 0 {
		return nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags&^fsImmutableFL); err != nil {
		return &os.PathError{Op: "FS_IOC_SETFLAGS", Path: path, Err: err}
	}
	return nil
}

// isEfivarfs reports whether dir is an efivarfs mount.
func isEfivarfs(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return uint32(st.Type) == efivarfsMagic
}
