package harness

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/ipmisim"
	"github.com/byoi/byoi/internal/testutil"
)

// TestMachinePoweredByBMC: a machine whose QEMU a BMC simulator starts
// (Command, PoweredBy): power on through ipmitool boots it on a new
// console; a reset inside the machine (QMP system_reset, what a guest's
// reboot does) keeps the same QEMU process and console, the BMC seeing
// nothing; a power cycle is a new process on a new console; power off ends
// it and Running says so.
func TestMachinePoweredByBMC(t *testing.T) {
	if os.Getenv("BYOI_SKIP_BOOT") == "1" {
		t.Skip("BYOI_SKIP_BOOT=1: QEMU is left out")
	}
	testutil.RequireCommand(t, "qemu-system-x86_64")
	ipmisim.RequireIpmitool(t)
	dir := t.TempDir()
	m := &Machine{Name: "bios", Dir: dir, Firmware: BIOS, Memory: 128, GraphicsOff: true, HostCPU: -1,
		NetDev: "user,id=n0", NIC: "virtio-net-pci,netdev=n0", NICBootIndex: true}
	sim := ipmisim.Start(t, ipmisim.Config{CommandFor: func(b *ipmisim.Sim) []string {
		argv, err := m.Command()
		if err != nil {
			t.Error(err)
			return nil
		}
		return append(append([]string{"nice", "-n", "10"}, argv...), b.QEMUArgs("")...)
	}})
	m.PoweredBy(sim.Powered)
	ctx := t.Context()
	ipxe := regexp.MustCompile(`iPXE \(http://ipxe\.org\)`)
	if m.Running() {
		t.Fatal("running before the power on")
	}
	if _, err := sim.Ipmitool(ctx, "chassis", "power", "on"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WaitConsole(ctx, 0, ipxe, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	first, pid, n := m.Console(), sim.PID(), len(sim.Events())
	if !strings.HasSuffix(first, "console-1.log") || !m.Running() {
		t.Fatalf("console %s, running %v", first, m.Running())
	}
	// The guest's reboot: QEMU resets, the process and the console stay.
	mark := m.ConsoleSize()
	if _, err := m.QMP(map[string]any{"execute": "system_reset"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WaitConsole(ctx, mark, ipxe, 60*time.Second); err != nil {
		t.Fatalf("after the reset: %v", err)
	}
	if m.Console() != first || sim.PID() != pid || len(sim.Events()) != n {
		t.Fatalf("the reset changed the machine: console %s, pid %d (was %d), events %+v", m.Console(), sim.PID(), pid, sim.Events()[n:])
	}
	// A power cycle: a new QEMU on a new console.
	if _, err := sim.Ipmitool(ctx, "chassis", "power", "cycle"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, _, err := sim.WaitEvent(wctx, n, func(e ipmisim.Event) bool { return e.Kind == "power on" }); err != nil {
		t.Fatalf("no power on after the cycle: %v %+v", err, sim.Events())
	}
	if _, err := m.WaitConsole(ctx, 0, ipxe, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if c := m.Consoles(); len(c) != 2 || m.Console() != c[1] || sim.PID() == pid {
		t.Fatalf("after the cycle: consoles %v, current %s, pid %d (was %d)", c, m.Console(), sim.PID(), pid)
	}
	if _, err := sim.Ipmitool(ctx, "chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	if m.Running() {
		t.Fatal("running after the power off")
	}
}
