package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/byoi/byoi/internal/harness"
	"github.com/byoi/byoi/internal/ipmisim"
)

// disk is one NVMe disk of the machine: a sparse file.
type disk struct {
	name, serial string
	size         int64
	group        int // the disk group the agent should report
	path         string
	digest       string // content digest before the run (group 1's disks)
}

// server is one simulated server: its QEMU machine, its disks and its
// BMC.
type server struct {
	*harness.Machine
	sshPort int
	disks   []*disk
	bmc     *ipmisim.Sim
}

// newServer shapes the machine, pinned to the host CPU cpu. The disks, in PCI order: group 1 (two
// 6 GiB disks) around group 2 (one 4 GiB disk), so that group 2's disk is
// neither the first NVMe nor the BIOS's first hard disk. Group 1's get
// random bytes (not bootable), and their digest proves at the end that
// nothing wrote them.
func newServer(dir, fw, mac, bootURL string, cpu int) (*server, error) {
	s := &server{}
	var err error
	if s.sshPort, err = harness.FreePort(); err != nil {
		return nil, err
	}
	s.disks = []*disk{
		{name: "g1a", serial: "byoi-g1a", size: 6 << 30, group: 1},
		{name: "g2", serial: "byoi-g2", size: 4 << 30, group: 2},
		{name: "g1b", serial: "byoi-g1b", size: 6 << 30, group: 1},
	}
	m := &harness.Machine{
		Name: fw, Dir: dir, Firmware: fw, Memory: 1536,
		// -smp 1,maxcpus=2: one vCPU, but TCG then translates the guest's
		// memory barriers (with one possible vCPU it drops them). QEMU's
		// NVMe reads the guest's shadow doorbells from another thread:
		// without the barrier the driver and the device can each miss the
		// other's update, and an I/O is never seen (docs/pxe-findings.md).
		SMP: "1,maxcpus=2", GraphicsOff: true,
		// All of QEMU's threads on one host CPU, its QEMU slot's (each
		// machine its own): the vCPU and the NVMe emulation then see each
		// other's memory writes in order, a second guard against the lost
		// doorbell besides maxcpus=2.
		HostCPU: cpu,
		// User-mode networking only: DHCP gives iPXE the boot file's URL;
		// 10.0.2.2 is the host's 127.0.0.1; SSH to the deployed system
		// through a forward on 127.0.0.1.
		NetDev:  fmt.Sprintf("user,id=n0,bootfile=%s/boot/boot.ipxe,hostfwd=tcp:127.0.0.1:%d-:22", bootURL, s.sshPort),
		NIC:     "virtio-net-pci,netdev=n0,mac=" + mac,
		Devices: []string{"virtio-rng-pci"},
		// SeaBIOS: the network first, then its first hard disk. OVMF: only
		// for the seeding boot (rescue step).
		NICBootIndex: fw == harness.BIOS,
	}
	for _, d := range s.disks {
		d.path = filepath.Join(dir, d.name+".raw")
		if d.group == 1 {
			d.digest, err = harness.MakeDecoy(d.path, d.size)
		} else {
			err = harness.MakeSparse(d.path, d.size)
		}
		if err != nil {
			return nil, err
		}
		m.Drives = append(m.Drives, harness.Drive{File: d.path, Device: "nvme,serial=" + d.serial})
	}
	if err := m.PrepareUEFIVars(); err != nil {
		return nil, err
	}
	s.Machine = m
	return s, nil
}

// startBMC gives the server its BMC: OpenIPMI's ipmi_sim serving IPMI
// lanplus on 127.0.0.1 (internal/ipmisim), which starts the machine's QEMU
// on power on and stops it on power off (a cycle is off, then on a second
// later), and records every boot device set through it. QEMU gets the
// BMC as the guest's KCS interface (ipmi-bmc-extern on a socket to
// ipmi_sim, isa-ipmi-kcs). A reboot inside the guest (the agent's at the
// end of a deployment) is QEMU's reset: the machine is not started with
// -no-reboot, so the same QEMU process keeps running under the same BMC.
// The BMC starts powered off.
func (s *server) startBMC(ctx context.Context, dir string) error {
	if s.NoReboot {
		return fmt.Errorf("a machine powered by its BMC must reset on a guest reboot, not exit (-no-reboot)")
	}
	bdir := filepath.Join(dir, "bmc")
	if err := os.MkdirAll(bdir, 0o700); err != nil {
		return err
	}
	sim, err := ipmisim.New(ctx, ipmisim.Config{
		Dir: bdir, Mode: ipmisim.ModeChassisControl, StopGrace: 3 * time.Second,
		CommandFor: func(b *ipmisim.Sim) []string {
			argv, err := s.Command()
			if err != nil {
				log.Say("[%s] BMC: cannot prepare the machine's boot: %v", s.Name, err)
				return nil // ipmi_sim answers the power on with an error
			}
			return append(argv, b.QEMUArgs("")...)
		},
	})
	if err != nil {
		return fmt.Errorf("the BMC (ipmi_sim): %w", err)
	}
	s.bmc = sim
	return nil
}

// bmcEvents is the BMC's record after mark, for a report.
func bmcEvents(sim *ipmisim.Sim, mark int, t0 time.Time) string {
	ev := sim.Events()
	if mark > len(ev) {
		mark = len(ev)
	}
	var parts []string
	for _, e := range ev[mark:] {
		p := fmt.Sprintf("+%.0fs %s", e.Time.Sub(t0).Seconds(), e.Kind)
		if e.Boot != "" {
			p += " (" + e.Boot + ")"
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}
