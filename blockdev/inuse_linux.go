package blockdev

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// deviceNumber returns the major:minor of a block device node.
func deviceNumber(st os.FileInfo) (maj, min uint32, ok bool) {
	if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		return 0, 0, false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return unix.Major(sys.Rdev), unix.Minor(sys.Rdev), true
}
