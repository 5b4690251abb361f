package ipmisim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
