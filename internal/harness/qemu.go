package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// The OVMF files of Debian 12's ovmf package.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Firmwares of the machines.
const (
	BIOS = "bios" // SeaBIOS, QEMU's default
	UEFI = "uefi" // OVMF, with a copy of its variables per machine
)

// Drive is one disk of a machine: a -drive (if=none) and the -device that
// presents it, e.g. "nvme,serial=x" or "scsi-hd,bus=hba0.0,vendor=...".
// Device gets ",drive=<id>" appended; an empty Device with If set is a
// plain -drive if=<If> (boot-check's virtio disk).
type Drive struct {
	File   string
	Format string // raw (default) or qcow2
	If     string // "" (none, with Device) or virtio, ...
	Device string
}

// Machine is one QEMU (TCG) machine shaped like a server. Fields are set
// before Start; a Machine is used by one goroutine.
type Machine struct {
	Name     string // for the report
	Dir      string // its files: consoles, QEMU's logs and command lines, OVMF variables, sockets
	Firmware string // BIOS or UEFI
	Memory   int    // MiB (default 1024)
	// SMP is -smp (default "1"). "1,maxcpus=2" keeps one vCPU but has TCG
	// translate the guest's memory barriers (docs/pxe-findings.md).
	SMP string
	// GraphicsOff is -machine pc,graphics=off: SeaBIOS's serial console
	// then carries iPXE's output too.
	GraphicsOff bool
	// VGA is -vga's value; "" is none (the serial console only). A VGA
	// gives the guest a VT (tty1) to type into with SendKeys.
	VGA string
	// NoReboot makes a guest reboot end QEMU.
	NoReboot bool
	// HostCPU pins all of QEMU's threads to this host CPU (taskset); -1:
	// no pinning.
	HostCPU int
	// NetDev is the -netdev value of the machine's NIC ("user,id=n0,...":
	// user-mode networking only).
	NetDev string
	// NIC is the NIC's -device ("virtio-net-pci,netdev=n0,mac=..."), and
	// NICBootIndex adds bootindex=1 to it for the next Start.
	NIC          string
	NICBootIndex bool
	Drives       []Drive
	// Devices are other -device values (controllers, virtio-rng-pci, a USB
	// keyboard, ...), in order.
	Devices []string
	// Extra are more QEMU arguments, last (-kernel, -machine options, ...).
	Extra []string

	qemu     *Proc
	boots    int
	console  string
	consoles []string
	// mu guards boots, console and consoles when another program powers
	// the machine (PoweredBy, launch.go): its boots are prepared on that
	// program's goroutine.
	mu      sync.Mutex
	powered func() bool
}

// PrepareUEFIVars gives a UEFI machine its own copy of OVMF's variables
// (kept across its power cycles).
func (m *Machine) PrepareUEFIVars() error {
	if m.Firmware != UEFI {
		return nil
	}
	b, err := os.ReadFile(OVMFVars)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(m.Dir, "OVMF_VARS.fd"), b, 0o644)
}

func (m *Machine) qmpPath() string { return filepath.Join(m.Dir, "qmp.sock") }

// Args is QEMU's command line for the next boot (console file given).
func (m *Machine) Args(console string) []string {
	mem := m.Memory
	if mem == 0 {
		mem = 1024
	}
	smp := m.SMP
	if smp == "" {
		smp = "1"
	}
	args := []string{"-accel", "tcg"}
	if m.GraphicsOff {
		args = append(args, "-machine", "pc,graphics=off")
	}
	args = append(args, "-m", strconv.Itoa(mem), "-smp", smp, "-display", "none")
	if m.VGA == "" {
		args = append(args, "-vga", "none")
	} else {
		args = append(args, "-vga", m.VGA)
	}
	if m.NoReboot {
		args = append(args, "-no-reboot")
	}
	args = append(args, "-parallel", "none", "-serial", "file:"+console, "-monitor", "none",
		"-qmp", "unix:"+m.qmpPath()+",server=on,wait=off")
	if m.Firmware == UEFI {
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+filepath.Join(m.Dir, "OVMF_VARS.fd"))
	}
	if m.NetDev != "" {
		args = append(args, "-netdev", m.NetDev)
	}
	if m.NIC != "" {
		nic := m.NIC
		if m.NICBootIndex {
			nic += ",bootindex=1"
		}
		args = append(args, "-device", nic)
	}
	for _, d := range m.Devices {
		args = append(args, "-device", d)
	}
	for i, d := range m.Drives {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		if d.Device == "" {
			args = append(args, "-drive", fmt.Sprintf("file=%s,format=%s,if=%s,cache=unsafe", d.File, format, d.If))
			continue
		}
		args = append(args, "-drive", fmt.Sprintf("if=none,id=d%d,file=%s,format=%s,cache=unsafe", i, d.File, format),
			"-device", fmt.Sprintf("%s,drive=d%d", d.Device, i))
	}
	return append(args, m.Extra...)
}

// Start starts QEMU; the console goes to a new file (console-N.log), the
// command line to qemu-N.cmd and QEMU's own output to qemu-N.log.
func (m *Machine) Start() error {
	argv, boot, err := m.prepare()
	if err != nil {
		return err
	}
	p, err := StartProc(filepath.Join(m.Dir, fmt.Sprintf("qemu-%d.log", boot)), argv[0], argv[1:]...)
	if err != nil {
		return err
	}
	m.qemu = p
	return nil
}

// Stop ends QEMU (a power-off).
func (m *Machine) Stop() {
	if m.qemu != nil {
		m.qemu.Stop()
	}
}

// PowerCycle turns the machine off and on again: a new QEMU process (the
// UEFI variables kept in their file; the console goes to a new file). Not
// QEMU's system_reset, which keeps user-mode networking's state (once the
// iPXE after it had its HTTP request time out); a real server's power
// cycle is what a BMC's hardware reboot does anyway.
func (m *Machine) PowerCycle() error {
	m.Stop()
	return m.Start()
}

// Running tells whether QEMU runs.
func (m *Machine) Running() bool {
	if m.powered != nil {
		return m.powered()
	}
	return m.qemu != nil && m.qemu.Running()
}

// Exited is how QEMU ended, for a report.
func (m *Machine) Exited() error {
	if m.powered != nil || m.qemu == nil { // a launcher's QEMU: its own log says
		return nil
	}
	return m.qemu.Err()
}

// Console is the current boot's console file; Consoles every boot's.
func (m *Machine) Console() string { return m.current() }
func (m *Machine) Consoles() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.consoles...)
}

// QEMULog is the current boot's QEMU output.
func (m *Machine) QEMULog() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return filepath.Join(m.Dir, fmt.Sprintf("qemu-%d.log", m.boots))
}

// ConsoleSize is where the current console is now: a mark for waits.
func (m *Machine) ConsoleSize() int64 { return FileSize(m.current()) }

// Tail is the current console's last n lines, for a report.
func (m *Machine) Tail(n int) string { return TailFile(m.current(), n) }

// WaitConsole waits until re matches a line of the current console after
// mark, for at most limit, and returns the line. It fails early when QEMU
// exited.
func (m *Machine) WaitConsole(ctx context.Context, mark int64, re *regexp.Regexp, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	console := m.current() // this boot's: a power cycle meanwhile makes a new one
	for {
		s := Searchable(console, mark)
		if l := re.FindString(s); l != "" {
			return LineOf(s, l), nil
		}
		if !m.Running() {
			s = Searchable(console, mark)
			if l := re.FindString(s); l != "" {
				return LineOf(s, l), nil
			}
			return "", fmt.Errorf("QEMU exited before /%s/ showed on the console (%v)", re, m.Exited())
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("/%s/ not on the console after %s", re, limit)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("/%s/ not on the console: %w", re, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
