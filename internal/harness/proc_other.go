//go:build unix && !linux

package harness

import "syscall"

// procAttr puts a child in its own process group. Only Linux can have the
// kernel kill it with this program; the checks run QEMU on Linux only, this
// file keeps the package building (and vetted) elsewhere.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
