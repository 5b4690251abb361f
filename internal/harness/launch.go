package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// A machine another program powers: a BMC simulator (internal/ipmisim)
// starts QEMU on power on and stops it on power off, as a server's BMC
// does. The harness then never starts or stops the machine itself: each
// boot is prepared through Command (called by the simulator, on its own
// goroutine), and Running asks the simulator.

// Command prepares the next boot as Start does (a new console-N.log,
// qemu-N.cmd) and returns QEMU's command line, argv[0] first, without
// starting it. QEMU's own output is the launcher's to keep.
func (m *Machine) Command() ([]string, error) {
	argv, _, err := m.prepare()
	return argv, err
}

// PoweredBy makes Running (and so WaitConsole's early end) ask running,
// the launcher's view of the power, instead of a QEMU that Start started.
// Set it before the launcher first powers the machine on.
func (m *Machine) PoweredBy(running func() bool) { m.powered = running }

// prepare is a boot's bookkeeping: its console file, its command line
// (pinned with taskset when HostCPU is set), and its number.
func (m *Machine) prepare() ([]string, int, error) {
	m.mu.Lock()
	m.boots++
	boot := m.boots
	console := filepath.Join(m.Dir, fmt.Sprintf("console-%d.log", boot))
	m.mu.Unlock()
	args := m.Args(console)
	os.Remove(m.qmpPath())
	if err := os.WriteFile(filepath.Join(m.Dir, fmt.Sprintf("qemu-%d.cmd", boot)), []byte("qemu-system-x86_64 "+strings.Join(args, " ")+"\n"), 0o644); err != nil {
		return nil, 0, err
	}
	if err := os.WriteFile(console, nil, 0o644); err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	m.console = console
	m.consoles = append(m.consoles, console)
	m.mu.Unlock()
	argv := append([]string{"qemu-system-x86_64"}, args...)
	if m.HostCPU >= 0 {
		if _, err := exec.LookPath("taskset"); err == nil {
			argv = append([]string{"taskset", "-c", strconv.Itoa(m.HostCPU % runtime.NumCPU())}, argv...)
		}
	}
	return argv, boot, nil
}

// current is the current boot's console file.
func (m *Machine) current() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.console
}
