package ipmisim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"
)

// TestPowerThroughIpmitool drives the simulator with ipmitool alone: power
// on starts the command, off stops it, cycle restarts it, the boot device
// is recorded and consumed by the next boot.
func TestPowerThroughIpmitool(t *testing.T) {
	RequireIpmitool(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "boots")
	s := Start(t, Config{Dir: dir, Command: []string{"/bin/sh", "-c", "echo $$ >> " + marker + "; exec sleep 600"}})
	ctx := t.Context()
	status := func() string {
		t.Helper()
		out, err := s.Ipmitool(ctx, "chassis", "power", "status")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if got := status(); got != "Chassis Power is off" || s.Powered() {
		t.Fatalf("at start: %q, powered %v", got, s.Powered())
	}
	if _, err := s.Ipmitool(ctx, "chassis", "bootdev", "pxe"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ipmitool(ctx, "chassis", "power", "on"); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != "Chassis Power is on" || !s.Powered() {
		t.Fatalf("after on: %q, powered %v", got, s.Powered())
	}
	on, _, err := s.WaitEvent(ctx, 0, func(e Event) bool { return e.Kind == "power on" })
	if err != nil || on.Boot != "pxe" || s.PendingBoot() != "" {
		t.Errorf("the boot consumed %q (pending %q), want pxe: %v", on.Boot, s.PendingBoot(), err)
	}
	pid := s.PID()
	n := len(s.Events())
	if _, err := s.Ipmitool(ctx, "chassis", "power", "cycle"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, _, err := s.WaitEvent(wctx, n, func(e Event) bool { return e.Kind == "power on" }); err != nil {
		t.Fatalf("no power on after the cycle: %v (%v)", err, s.Events())
	}
	waitFile(t, marker, 2)
	if s.PID() == pid || s.PID() == 0 {
		t.Errorf("the cycle did not restart the command (pid %d, then %d)", pid, s.PID())
	}
	if _, err := s.Ipmitool(ctx, "chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != "Chassis Power is off" || s.Powered() {
		t.Fatalf("after off: %q, powered %v", got, s.Powered())
	}
	b, _ := os.ReadFile(marker)
	if lines := strings.Fields(string(b)); len(lines) != 2 {
		t.Errorf("the command started %d times, want 2: %q", len(lines), b)
	}
	if got := s.BootDevices(); strings.Join(got, ",") != "pxe" {
		t.Errorf("boot devices %v, want [pxe]", got)
	}
}

// TestStartCmdMode: ipmi_sim's own startcmd powers the command; boot
// flags are refused (no chassis_control program).
func TestStartCmdMode(t *testing.T) {
	RequireIpmitool(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "boots")
	s := Start(t, Config{Dir: dir, Mode: ModeStartCmd, Command: []string{"/bin/sh", "-c", "echo $$ >> " + marker + "; exec sleep 600"}})
	ctx := t.Context()
	if _, err := s.Ipmitool(ctx, "chassis", "power", "on"); err != nil {
		t.Fatal(err)
	}
	waitFile(t, marker, 1)
	out, err := s.Ipmitool(ctx, "chassis", "power", "status")
	if err != nil || !strings.Contains(out, "is on") {
		t.Fatalf("status %q %v", out, err)
	}
	// ipmitool's "chassis bootdev" exits 0 even when refused: the raw
	// Set System Boot Options (parameter 5: valid, next boot, PXE) shows
	// the completion code.
	if out, err := s.Ipmitool(ctx, "raw", "0x00", "0x08", "0x05", "0x80", "0x04", "0x00", "0x00", "0x00"); err == nil || !strings.Contains(err.Error(), "rsp=0xcc") {
		t.Errorf("ipmi_sim without chassis_control: boot flags %q %v, want completion code 0xcc", out, err)
	}
	start := time.Now()
	if _, err := s.Ipmitool(ctx, "chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	for {
		out, err := s.Ipmitool(ctx, "chassis", "power", "status")
		if err == nil && strings.Contains(out, "is off") {
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("still on after 15 s (poweroff_wait not short?): %q %v", out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("power off took %v", time.Since(start))
}

func waitFile(t *testing.T, path string, lines int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		if len(strings.Fields(string(b))) >= lines {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not get %d lines", path, lines)
}

func TestQEMUArgs(t *testing.T) {
	s := &Sim{vmPort: 9002}
	got := strings.Join(s.QEMUArgs(""), " ")
	want := "-chardev socket,id=bmc0-chr,host=127.0.0.1,port=9002,reconnect=2 -device ipmi-bmc-extern,id=bmc0,chardev=bmc0-chr -device isa-ipmi-kcs,bmc=bmc0"
	if got != want {
		t.Errorf("QEMUArgs = %q, want %q", got, want)
	}
}

// TestQEMUThroughTheBMC runs a real QEMU as the machine, with QEMUArgs:
// power on starts it and its ipmi-bmc-extern chardev connects to
// ipmi_sim's VM port; power off stops it.
func TestQEMUThroughTheBMC(t *testing.T) {
	if os.Getenv("BYOI_SKIP_BOOT") == "1" {
		t.Skip("BYOI_SKIP_BOOT=1: QEMU is left out")
	}
	qemu := testutil.RequireCommand(t, "qemu-system-x86_64")
	RequireIpmitool(t)
	dir := t.TempDir()
	cmd := []string{"nice", "-n", "10", qemu, "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg",
		"-m", "64", "-smp", "1", "-serial", "null", "-monitor", "none", "-boot", "menu=off"}
	s := Start(t, Config{Dir: dir, StopGrace: 5 * time.Second,
		CommandFor: func(s *Sim) []string { return append(append([]string(nil), cmd...), s.QEMUArgs("")...) }})
	ctx := t.Context()
	if _, err := s.Ipmitool(ctx, "chassis", "power", "on"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !established(t, s.vmPort) {
		if time.Now().After(deadline) || !s.Powered() {
			b, _ := os.ReadFile(filepath.Join(dir, "machine.log"))
			t.Fatalf("QEMU did not connect to ipmi_sim's VM port %d (running %v): %s", s.vmPort, s.Powered(), b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := s.Ipmitool(ctx, "chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	if s.Powered() {
		t.Error("QEMU still runs after power off")
	}
	if out, err := s.Ipmitool(ctx, "chassis", "power", "status"); err != nil || !strings.Contains(out, "is off") {
		t.Errorf("status %q %v", out, err)
	}
}

// established reports whether a TCP connection to 127.0.0.1:port is up
// (/proc/net/tcp, state 01).
func established(t *testing.T, port int) bool {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && f[2] == want && f[3] == "01" {
			return true
		}
	}
	return false
}
