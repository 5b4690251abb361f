package harness

import "syscall"

// procAttr puts a child in its own process group and has the kernel kill it
// when this program dies, so no QEMU outlives a killed check.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
