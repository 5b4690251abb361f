package power

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/ipmisim"
	"github.com/byoi/byoi/job"
)

// simDriver returns the driver for a simulator, as byoi-api will build it
// from "ipmi://USER@HOST:PORT" and the password file.
func simDriver(t *testing.T, s *ipmisim.Sim, pw string) *IPMI {
	t.Helper()
	spec, err := ParseBMC(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	p, err := ReadPassword(strings.NewReader(pw + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewIPMI(spec, p, Options{Logger: nil})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// judge asks ipmitool -I lanplus for the power state.
func judge(t *testing.T, s *ipmisim.Sim) State {
	t.Helper()
	out, err := s.Ipmitool(t.Context(), "chassis", "power", "status")
	if err != nil {
		t.Fatal(err)
	}
	switch strings.TrimSpace(out) {
	case "Chassis Power is on":
		return On
	case "Chassis Power is off":
		return Off
	}
	t.Fatalf("ipmitool: %q", out)
	return ""
}

// bootCount is how many times the machine has started (each start writes
// a line, shortly after the process exists: it waits up to 5 s for want).
func bootCount(t *testing.T, marker string, want ...int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(marker)
		n := len(strings.Fields(string(b)))
		if len(want) == 0 || n >= want[0] || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIPMISim drives OpenIPMI's ipmi_sim through the IPMI driver: status,
// on, off, cycle and the boot override, each judged by ipmitool and by the
// simulated machine (a process the BMC starts and stops).
func TestIPMISim(t *testing.T) {
	ipmisim.RequireIpmitool(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "boots")
	s := ipmisim.Start(t, ipmisim.Config{Dir: dir, Command: []string{"/bin/sh", "-c", "echo $$ >> " + marker + "; exec sleep 600"}})
	d := simDriver(t, s, s.Password())
	ctx := t.Context()

	st, err := d.Status(ctx)
	if err != nil || st != Off || judge(t, s) != Off {
		t.Fatalf("Status = %q, %v (ipmitool %q), want poweroff", st, err, judge(t, s))
	}
	if err := d.On(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Status(ctx); err != nil || st != On || judge(t, s) != On || !s.Powered() {
		t.Fatalf("after On: Status %q %v, ipmitool %q, machine running %v", st, err, judge(t, s), s.Powered())
	}
	if err := d.On(ctx); err != nil || bootCount(t, marker, 1) != 1 {
		t.Errorf("On twice: %v, the machine started %d times", err, bootCount(t, marker))
	}

	if err := d.BootFromNetwork(ctx, BootUEFI); err != nil {
		t.Fatal(err)
	}
	if got := s.PendingBoot(); got != "pxe" {
		t.Errorf("the BMC's pending boot device is %q, want pxe", got)
	}
	out, err := s.Ipmitool(ctx, "chassis", "bootparam", "get", "5")
	if err != nil || !strings.Contains(out, "Boot Device Selector : Force PXE") {
		t.Errorf("ipmitool bootparam get 5: %v\n%s", err, out)
	}

	pid, n := s.PID(), len(s.Events())
	if err := d.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	on, _, err := s.WaitEvent(wctx, n, func(e ipmisim.Event) bool { return e.Kind == "power on" })
	if err != nil {
		t.Fatalf("no power on after Cycle: %v %v", err, s.Events())
	}
	if on.Boot != "pxe" || s.PID() == pid || bootCount(t, marker, 2) != 2 {
		t.Errorf("after Cycle: boot consumed %q (want pxe), pid %d then %d, %d boots", on.Boot, pid, s.PID(), bootCount(t, marker))
	}
	if judge(t, s) != On {
		t.Error("ipmitool: off after the cycle")
	}

	if err := d.Off(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Status(ctx); err != nil || st != Off || judge(t, s) != Off || s.Powered() {
		t.Fatalf("after Off: Status %q %v, machine running %v", st, err, s.Powered())
	}

	// Reboot: powered off, it powers on; powered on, it cycles; both with
	// the override set.
	out1, err := Reboot(ctx, d, BootLegacy)
	if err != nil || out1.Action != ActionPoweredOn || out1.Override != OverrideSet || out1.Before != Off {
		t.Fatalf("Reboot from off: %+v, %v", out1, err)
	}
	n = len(s.Events())
	out2, err := Reboot(ctx, d, BootUEFI)
	if err != nil || out2.Action != ActionCycled || out2.Override != OverrideSet || out2.Before != On {
		t.Fatalf("Reboot from on: %+v, %v", out2, err)
	}
	if on, _, err := s.WaitEvent(wctx, n, func(e ipmisim.Event) bool { return e.Kind == "power on" }); err != nil || on.Boot != "pxe" {
		t.Errorf("the reboot's boot consumed %q, %v", on.Boot, err)
	}
	if got := strings.Join(s.BootDevices(), ","); got != "pxe,pxe,pxe" {
		t.Errorf("boot devices set: %s", got)
	}
	if c, _ := out2.Warning(); c != "" {
		t.Errorf("a warning without a refusal: %s", c)
	}
}

// TestIPMISimBootOverrideRefused: ipmi_sim without a chassis_control
// program (its own startcmd powers the machine) refuses the boot flags;
// Reboot tolerates it, reports it, and still powers the server.
func TestIPMISimBootOverrideRefused(t *testing.T) {
	ipmisim.RequireIpmitool(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "boots")
	s := ipmisim.Start(t, ipmisim.Config{Dir: dir, Mode: ipmisim.ModeStartCmd,
		Command: []string{"/bin/sh", "-c", "echo $$ >> " + marker + "; exec sleep 600"}})
	d := simDriver(t, s, s.Password())
	ctx := t.Context()

	err := d.BootFromNetwork(ctx, BootUEFI)
	var pe *Error
	if !errors.Is(err, ErrUnsupported) || !errors.As(err, &pe) || !strings.Contains(pe.Detail, "0xcc") {
		t.Fatalf("BootFromNetwork = %v, want ErrUnsupported with completion code 0xcc", err)
	}
	out, err := Reboot(ctx, d, BootUEFI)
	if err != nil || out.Override != OverrideRefused || out.Action != ActionPoweredOn {
		t.Fatalf("Reboot = %+v, %v", out, err)
	}
	code, msg := out.Warning()
	if code != job.WarnBootOverride || msg != job.Text(job.WarnBootOverride, "completion code 0xcc (invalid data field)") {
		t.Errorf("warning %s %q", code, msg)
	}
	if judge(t, s) != On || bootCount(t, marker, 1) != 1 {
		t.Errorf("after Reboot: ipmitool %q, %d boots", judge(t, s), bootCount(t, marker))
	}
	if err := d.Off(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := d.Status(ctx)
		if err == nil && st == Off {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %q %v 15 s after Off", st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if judge(t, s) != Off {
		t.Error("ipmitool: still on")
	}
}

// TestIPMISimWrongPassword: ipmi_sim refuses the login; the driver says so
// at once, without retrying, and prints no password.
func TestIPMISimWrongPassword(t *testing.T) {
	s := ipmisim.Start(t, ipmisim.Config{})
	const wrong = "Not-The-Password"
	d := simDriver(t, s, wrong)
	start := time.Now()
	_, err := d.Status(t.Context())
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("the refusal took %v", el)
	}
	checkCredentialError(t, err, wrong, "wrong user name or password")
	t.Logf("%v (%v)", err, time.Since(start))
	// Unknown user.
	spec, _ := ParseBMC(strings.Replace(s.URL(), s.User()+"@", "nobody@", 1))
	nd, _ := NewIPMI(spec, mustPassword(t, wrong), Options{})
	_, err = nd.Status(t.Context())
	if !errors.Is(err, ErrCredentials) {
		t.Errorf("unknown user: %v", err)
	}
	// And the right password still works afterwards (no lock-out).
	if _, err := simDriver(t, s, s.Password()).Status(t.Context()); err != nil {
		t.Errorf("after the refusals: %v", err)
	}
}

// TestIPMISimSlowCycleOnce: a BMC that answers the power cycle only once
// the power is down (ipmi_sim waits for its chassis program; here the
// machine takes 2 s to stop, as a QEMU or a real server may) gets the
// command once: a retransmitted Chassis Control would be executed again
// (IPMI leaves duplicate detection to the BMC, and ipmi_sim has none),
// and a second cycle could reboot the server twice.
func TestIPMISimSlowCycleOnce(t *testing.T) {
	ipmisim.RequireIpmitool(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "boots")
	s := ipmisim.Start(t, ipmisim.Config{Dir: dir, PoweredOn: true, StopGrace: 5 * time.Second,
		Command: []string{"/bin/sh", "-c", "echo $$ >> " + marker + "; trap 'sleep 2; exit 0' TERM; while :; do sleep 1 & wait $!; done"}})
	d := simDriver(t, s, s.Password())
	ctx := t.Context()
	bootCount(t, marker, 1)
	n := len(s.Events())
	start := time.Now()
	if err := d.Cycle(ctx); err != nil {
		t.Fatalf("Cycle: %v (after %v)", err, time.Since(start))
	}
	took := time.Since(start)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, _, err := s.WaitEvent(wctx, n, func(e ipmisim.Event) bool { return e.Kind == "power on" }); err != nil {
		t.Fatalf("no power on after Cycle: %v %v", err, s.Events()[n:])
	}
	time.Sleep(3 * time.Second) // a repeated cycle would show by now
	offs, ons := 0, 0
	for _, e := range s.Events()[n:] {
		switch e.Kind {
		case "power off":
			offs++
		case "power on":
			ons++
		}
	}
	if offs != 1 || ons != 1 || bootCount(t, marker) != 2 {
		t.Errorf("the BMC executed %d power offs and %d power ons, the machine started %d times; want one cycle: %+v", offs, ons, bootCount(t, marker), s.Events()[n:])
	}
	t.Logf("the cycle was answered after %v", took)
}
