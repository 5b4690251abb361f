package controlplane_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/power"
	"github.com/byoi/byoi/internal/ipmisim"
	"github.com/byoi/byoi/job"
)

// TestPowerIPMISim: byoi-api drives OpenIPMI's ipmi_sim over IPMI lanplus
// (the real driver, go-ipmi): a reinstall makes it set the one-time boot
// device PXE and power-cycle the machine, judged by the simulator's own
// record and by ipmitool, and so does OVH's POST .../reboot; powerState is the BMC's; a wrong password and
// an unreachable BMC fail their deployments with PowerCredentials and
// PowerNoAnswer, bounded, and the password is in no log or answer.
func TestPowerIPMISim(t *testing.T) {
	ipmisim.RequireIpmitool(t)
	sim := ipmisim.Start(t, ipmisim.Config{PoweredOn: true})
	// A UDP port nothing answers on.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := pc.LocalAddr().String()
	pc.Close()

	e := newEnv(t, cfg(func(c *controlplane.Config) {
		c.Power.Options = power.Options{Timeout: 500 * time.Millisecond, Retries: 1, OpTimeout: 5 * time.Second, Attempts: 2, Backoff: 100 * time.Millisecond}
	}))
	e.secret(sim.Password())
	cu := e.customer("acme")
	ctx := context.Background()
	set := func(server, url, pw string) {
		e.server(server, "acme")
		spec, err := power.ParseBMC(url)
		if err != nil {
			t.Fatal(err)
		}
		p, err := power.NewPassword(pw)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.admin.SetBMC(ctx, server, spec, p); err != nil {
			t.Fatal(err)
		}
	}
	set("ns1", sim.URL(), sim.Password())
	set("ns2", sim.URL(), "wrong-"+sim.Password()[:8])
	set("ns3", "ipmi://admin@"+deadAddr, sim.Password())

	var view map[string]any
	if err := cu.bearer.Get(path("ns1", ""), &view); err != nil || view["powerState"] != "poweron" {
		t.Fatalf("powerState %v %v", view["powerState"], err)
	}
	n := len(sim.Events())
	pid := sim.PID()
	for _, s := range []string{"ns1", "ns2", "ns3"} {
		if err := cu.bearer.Post(path(s, "/reinstall"), reinstallBody(), nil); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	e.round()
	took := time.Since(start)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	on, _, err := sim.WaitEvent(wctx, n, func(ev ipmisim.Event) bool { return ev.Kind == "power on" || ev.Kind == "reset" })
	if err != nil {
		t.Fatalf("the machine was not restarted: %v %v", err, sim.Events())
	}
	if on.Boot != "pxe" || sim.PID() == pid {
		t.Errorf("restart consumed boot device %q (want pxe); pid %d then %d; events %+v", on.Boot, pid, sim.PID(), sim.Events()[n:])
	}
	if devs := sim.BootDevices(); len(devs) == 0 || devs[len(devs)-1] != "pxe" {
		t.Errorf("boot devices set: %v", devs)
	}
	out, err := sim.Ipmitool(ctx, "chassis", "power", "status")
	if err != nil || strings.TrimSpace(out) != "Chassis Power is on" {
		t.Errorf("ipmitool after the cycle: %q %v", out, err)
	}
	d, h := e.history("ns1")
	if en := hasCode(h, job.MsgPowerRebooted); en == nil || en.Message != job.Text(job.MsgPowerRebooted, "power-cycled", sim.URL()) || d.Status != "doing" {
		t.Errorf("ns1 history %+v", h)
	}
	for _, c := range []struct {
		server string
		code   job.Code
	}{{"ns2", job.PowerCredentials}, {"ns3", job.PowerNoAnswer}} {
		var st byoiStatus
		if err := cu.bearer.Get(path(c.server, "/bringYourOwnImage"), &st); err != nil {
			t.Fatal(err)
		}
		d, _ := e.history(c.server)
		if st.Status != "error" || d.Code != c.code || st.Message == nil || strings.Contains(*st.Message, sim.Password()) {
			t.Errorf("%s: %s %s %v", c.server, st.Status, d.Code, st.Message)
		}
	}
	// OVH's POST .../reboot: a hardReboot task byoi-api carries out
	// through the BMC, PXE first; the task ends done with the outcome.
	var rt task
	if err := cu.bearer.Post(path("ns1", "/reboot"), nil, &rt); err != nil {
		t.Fatal(err)
	}
	n, pid = len(sim.Events()), sim.PID()
	e.round()
	on, _, err = sim.WaitEvent(wctx, n, func(ev ipmisim.Event) bool { return ev.Kind == "power on" || ev.Kind == "reset" })
	if err != nil || on.Boot != "pxe" || sim.PID() == pid {
		t.Errorf("reboot request: %+v %v (pid %d then %d)", on, err, pid, sim.PID())
	}
	if out, err := sim.Ipmitool(ctx, "chassis", "power", "status"); err != nil || strings.TrimSpace(out) != "Chassis Power is on" {
		t.Errorf("ipmitool after the reboot request: %q %v", out, err)
	}
	var done task
	if err := cu.bearer.Get(path("ns1", "/task/"+rt.TaskID.String()), &done); err != nil || done.Status != "done" || done.Comment != job.Text(job.MsgPowerRebooted, "power-cycled", sim.URL()) {
		t.Errorf("reboot task %+v %v", done, err)
	}
	if took > 30*time.Second {
		t.Errorf("the power round took %v", took)
	}
	t.Logf("power round of 3 servers (one cycled, one refused, one silent): %v", took)
}
