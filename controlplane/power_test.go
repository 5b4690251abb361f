package controlplane_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/power"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// bmcPassword is the fake BMCs' password: never in a log, an error or an
// answer.
const bmcPassword = "BMC-s3cret-pw"

// fakeBMC is a power.Driver that records what it is asked.
type fakeBMC struct {
	mu       sync.Mutex
	spec     power.BMC
	state    power.State
	calls    []string
	refuse   bool  // the password is wrong
	silent   bool  // nothing answers
	override error // BootFromNetwork's answer
}

func (f *fakeBMC) check(op power.Op) error {
	switch {
	case f.silent:
		return &power.Error{Kind: power.ErrUnreachable, Op: op, Timeout: time.Second}
	case f.refuse:
		return &power.Error{Kind: power.ErrCredentials, Op: op}
	}
	return nil
}

func (f *fakeBMC) record(op power.Op, s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(op); err != nil {
		return err
	}
	f.calls = append(f.calls, s)
	return nil
}

func (f *fakeBMC) Kind() string { return power.DriverIPMI }
func (f *fakeBMC) Status(context.Context) (power.State, error) {
	if err := f.record(power.OpStatus, "status"); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, nil
}
func (f *fakeBMC) On(context.Context) error {
	err := f.record(power.OpOn, "on")
	f.mu.Lock()
	f.state = power.On
	f.mu.Unlock()
	return err
}
func (f *fakeBMC) Off(context.Context) error   { return f.record(power.OpOff, "off") }
func (f *fakeBMC) Cycle(context.Context) error { return f.record(power.OpCycle, "cycle") }
func (f *fakeBMC) BootFromNetwork(_ context.Context, m power.BootMode) error {
	if err := f.record(power.OpBootOverride, "pxe-"+m.String()); err != nil {
		return err
	}
	return f.override
}
func (f *fakeBMC) String() string { return f.spec.String() }

func (f *fakeBMC) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

// fakeBMCs are the BMCs by host; their driver checks the password.
type fakeBMCs struct {
	mu sync.Mutex
	m  map[string]*fakeBMC
}

func (b *fakeBMCs) get(host string) *fakeBMC {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*fakeBMC{}
	}
	if b.m[host] == nil {
		b.m[host] = &fakeBMC{state: power.On}
	}
	return b.m[host]
}

func (b *fakeBMCs) opt() envOpt {
	return cfg(func(c *controlplane.Config) {
		c.Power.NewDriver = func(spec power.BMC, pw power.Password) (power.Driver, error) {
			f := b.get(spec.Host)
			f.mu.Lock()
			f.spec = spec
			if pw.Reveal() != bmcPassword {
				f.refuse = true
			}
			f.mu.Unlock()
			return f, nil
		}
	})
}

func (e *env) setBMC(server, host, pw string) {
	e.t.Helper()
	spec, err := power.ParseBMC("ipmi://admin@" + host)
	if err != nil {
		e.t.Fatal(err)
	}
	p, err := power.NewPassword(pw)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.admin.SetBMC(context.Background(), server, spec, p); err != nil {
		e.t.Fatal(err)
	}
	e.secret(pw)
}

func (e *env) round() []store.PowerTask {
	e.t.Helper()
	ran, err := e.srv.PowerRound(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return ran
}

// history is the current deployment's history of a server.
func (e *env) history(server string) (store.Deployment, []store.Entry) {
	e.t.Helper()
	ctx := context.Background()
	sv, err := e.st.ServerByName(ctx, server)
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := e.st.CurrentDeployment(ctx, sv.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	h, err := e.st.History(ctx, d.ID, 0, 100)
	if err != nil {
		e.t.Fatal(err)
	}
	return d, h
}

func hasCode(h []store.Entry, c job.Code) *store.Entry {
	for i := range h {
		if h[i].Code == c {
			return &h[i]
		}
	}
	return nil
}

func equalCalls(got []string, want ...string) bool {
	return strings.Join(got, " ") == strings.Join(want, " ")
}

// TestPowerDeployment: a deployment of a server with a BMC is booted into
// rescue by byoi-api (one-time PXE override in the server's boot mode,
// power cycle, network boot armed), the outcome in the history; a server
// that is off is powered on; a server without a BMC is left alone;
// powerState comes from the BMC, cached.
func TestPowerDeployment(t *testing.T) {
	bothStores(t, func(t *testing.T, backend envOpt) {
		var bmcs fakeBMCs
		e := newEnv(t, backend, bmcs.opt())
		cu := e.customer("acme")
		a := e.server("ns1", "acme")
		e.server("ns2", "acme")
		e.setBMC("ns1", "10.0.0.5", bmcPassword)
		ctx := context.Background()

		// The agent once reported UEFI; it has been silent since.
		a.inventory(inv)
		e.clock.Advance(10 * time.Minute)

		var tk task
		if err := cu.signed.Post(path("ns1", "/reinstall"), reinstallBody(), &tk); err != nil {
			t.Fatal(err)
		}
		if err := cu.signed.Post(path("ns2", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
			t.Fatal(err)
		}
		ran := e.round()
		f := bmcs.get("10.0.0.5")
		if len(ran) != 1 || !equalCalls(f.took(), "pxe-uefi", "status", "cycle") {
			t.Fatalf("ran %+v, BMC calls %v", ran, f.calls)
		}
		if again := e.round(); len(again) != 0 {
			t.Fatalf("ran twice: %+v", again)
		}
		sv, _ := e.st.ServerByName(ctx, "ns1")
		if sv.Armed != store.ArmedReboot {
			t.Errorf("network boot not armed for byoi-api's reboot: %d", sv.Armed)
		}
		d, h := e.history("ns1")
		want := job.Text(job.MsgPowerRebooted, "power-cycled", "ipmi://admin@10.0.0.5:623")
		if en := hasCode(h, job.MsgPowerRebooted); en == nil || en.Message != want || d.Status != store.StatusDoing {
			t.Fatalf("history %+v", h)
		}
		// ns2 has no BMC: no power task, it waits for hands.
		sv2, _ := e.st.ServerByName(ctx, "ns2")
		if l, _ := e.st.PowerTasks(ctx, sv2.ID, 10); len(l) != 0 {
			t.Fatalf("power tasks for a server without a BMC: %+v", l)
		}

		// powerState: from the BMC, then from the cache; null without one.
		var view struct{ PowerState *string }
		if err := cu.signed.Get(path("ns1", ""), &view); err != nil || view.PowerState == nil || *view.PowerState != "poweron" {
			t.Fatalf("powerState %v %v", view.PowerState, err)
		}
		f.took()
		cu.signed.Get(path("ns1", ""), &view)
		if calls := f.took(); len(calls) != 0 {
			t.Errorf("powerState not cached: %v", calls)
		}
		e.clock.Advance(31 * time.Second)
		cu.signed.Get(path("ns1", ""), &view)
		if calls := f.took(); !equalCalls(calls, "status") {
			t.Errorf("powerState after the cache: %v", calls)
		}
		var view2 map[string]any
		if err := cu.signed.Get(path("ns2", ""), &view2); err != nil || view2["powerState"] != nil {
			t.Fatalf("ns2 powerState %v %v", view2["powerState"], err)
		}
		if _, ok := view2["powerState"]; !ok {
			t.Error("powerState missing (want null)")
		}

		// DELETE: back to rescue through the BMC; a server off is powered on.
		f.mu.Lock()
		f.state = power.Off
		f.override = &power.Error{Kind: power.ErrUnsupported, Op: power.OpBootOverride, Detail: "completion code 0xc1"}
		f.mu.Unlock()
		if err := cu.signed.Delete(path("ns1", "/bringYourOwnImage"), nil); err != nil {
			t.Fatal(err)
		}
		e.round()
		if calls := f.took(); !equalCalls(calls, "pxe-uefi", "status", "on") {
			t.Fatalf("DELETE: BMC calls %v", calls)
		}
		l, _ := e.st.PowerTasks(ctx, sv.ID, 1)
		if len(l) != 1 || l[0].Status != store.PowerDone || l[0].Message != job.Text(job.MsgPowerRebooted, "powered on", "ipmi://admin@10.0.0.5:623") {
			t.Fatalf("DELETE's power task %+v", l)
		}
		if !strings.Contains(e.logs.String(), "BMC refused the boot override") {
			t.Error("a refused override is not logged")
		}
	})
}

// TestPowerFailures: a BMC that refuses byoi's password or does not
// answer fails the deployment (and its OVH task) with the power catalog's
// message, without a hang and without the password anywhere.
func TestPowerFailures(t *testing.T) {
	var bmcs fakeBMCs
	e := newEnv(t, bmcs.opt())
	cu := e.customer("acme")
	e.server("ns1", "acme")
	e.server("ns2", "acme")
	e.setBMC("ns1", "10.0.0.5", "wrong-password")
	e.setBMC("ns2", "10.0.0.6", bmcPassword)
	bmcs.get("10.0.0.6").silent = true
	var t1, t2 task
	if err := cu.signed.Post(path("ns1", "/reinstall"), reinstallBody(), &t1); err != nil {
		t.Fatal(err)
	}
	if err := cu.signed.Post(path("ns2", "/reinstall"), reinstallBody(), &t2); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.round()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the power round took %v", d)
	}
	for _, c := range []struct {
		server string
		tk     task
		code   job.Code
		text   string
	}{
		{"ns1", t1, job.PowerCredentials, job.Text(job.PowerCredentials, string(power.OpBootOverride))},
		{"ns2", t2, job.PowerNoAnswer, job.Text(job.PowerNoAnswer, string(power.OpBootOverride))},
	} {
		var st byoiStatus
		if err := cu.signed.Get(path(c.server, "/bringYourOwnImage"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Status != "error" || st.Message == nil || *st.Message != c.text {
			t.Errorf("%s: status %s message %v, want %q", c.server, st.Status, st.Message, c.text)
		}
		var got task
		if err := cu.signed.Get(path(c.server, "/task/"+c.tk.TaskID.String()), &got); err != nil || got.Status != "ovhError" {
			t.Errorf("%s: task %+v %v", c.server, got, err)
		}
		d, _ := e.history(c.server)
		if d.Code != c.code {
			t.Errorf("%s: code %s", c.server, d.Code)
		}
	}
	// GET of a server whose BMC is silent: null, quickly.
	var view map[string]any
	if err := cu.signed.Get(path("ns2", ""), &view); err != nil || view["powerState"] != nil {
		t.Errorf("silent BMC powerState %v %v", view["powerState"], err)
	}
	// The sealed password is not the password.
	sv, _ := e.st.ServerByName(context.Background(), "ns2")
	b, err := e.st.ServerBMC(context.Background(), sv.ID)
	if err != nil || strings.Contains(string(b.SealedPassword), bmcPassword) || strings.Contains(b.Spec, bmcPassword) {
		t.Errorf("BMC stored in clear: %v", err)
	}
}

// TestPowerCatalog triggers every text of the control plane's power
// actions (job.IsPowerControlCode): rebooted, agent already waiting,
// no driver any more, abandoned after dead instances, rescue deadline.
func TestPowerCatalog(t *testing.T) {
	var bmcs fakeBMCs
	e := newEnv(t, bmcs.opt(), cfg(func(c *controlplane.Config) { c.Power.RescueTimeout = 10 * time.Minute }))
	cu := e.customer("acme")
	ctx := context.Background()
	seen := map[job.Code]string{}
	note := func(server string) {
		_, h := e.history(server)
		for _, en := range h {
			seen[en.Code] = en.Message
		}
	}
	for _, n := range []string{"ns1", "ns2", "ns3", "ns4"} {
		e.server(n, "acme")
		e.setBMC(n, "bmc-"+n, bmcPassword)
	}
	// ns1: rebooted, then nothing reaches rescue within the limit.
	if err := cu.bearer.Post(path("ns1", "/reinstall"), reinstallBody(), nil); err != nil {
		t.Fatal(err)
	}
	e.round()
	e.clock.Advance(9 * time.Minute)
	e.round()
	if d, _ := e.history("ns1"); d.Status != store.StatusDoing {
		t.Fatalf("failed before the limit: %+v", d)
	}
	e.clock.Advance(2 * time.Minute)
	e.round()
	d, _ := e.history("ns1")
	if d.Status != store.StatusError || d.Message != "the server did not boot into rescue within 10m0s" {
		t.Fatalf("rescue deadline: %+v", d)
	}
	note("ns1")

	// ns2: its rescue agent is live: no reboot.
	a2 := &agentTokenOf{e: e}
	ag := a2.agent("ns2")
	ag.inventory(inv)
	if err := cu.bearer.Post(path("ns2", "/reinstall"), reinstallBody(), nil); err != nil {
		t.Fatal(err)
	}
	e.round()
	if calls := bmcs.get("bmc-ns2").took(); len(calls) != 0 {
		t.Fatalf("a live agent's server was power-cycled: %v", calls)
	}
	note("ns2")

	// ns3: its BMC removed after the request.
	if err := cu.bearer.Post(path("ns3", "/reinstall"), reinstallBody(), nil); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.SetBMC(ctx, "ns3", power.BMC{Driver: power.DriverNone}, power.Password{}); err != nil {
		t.Fatal(err)
	}
	e.round()
	note("ns3")

	// ns4: the instances acting on it die three times.
	if err := cu.bearer.Post(path("ns4", "/reinstall"), reinstallBody(), nil); err != nil {
		t.Fatal(err)
	}
	for range store.MaxPowerClaims {
		if _, err := e.st.ClaimPowerTask(ctx, "dies", e.clock.Now(), time.Minute); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(2 * time.Minute)
	}
	e.round()
	if calls := bmcs.get("bmc-ns4").took(); len(calls) != 0 {
		t.Fatalf("an abandoned task acted: %v", calls)
	}
	note("ns4")
	for c, m := range bootedFlow(t, e, cu) {
		seen[c] = m
	}
	for c, m := range rebootFlow(t, e, &bmcs, cu) {
		seen[c] = m
	}

	for _, c := range job.Codes() {
		if job.IsPowerControlCode(c) {
			if msg, ok := seen[c]; !ok {
				t.Errorf("power control code %s never triggered", c)
			} else if strings.Contains(msg, "%!") {
				t.Errorf("%s: %q", c, msg)
			}
		}
	}
}

// agentTokenOf gives the simulated agent of a server a fresh token.
type agentTokenOf struct{ e *env }

func (a agentTokenOf) agent(server string) *agent {
	tok, err := a.e.admin.NewAgentToken(context.Background(), server)
	if err != nil {
		a.e.t.Fatal(err)
	}
	a.e.secret(tok)
	return &agent{e: a.e, server: server, token: tok}
}

// TestBMCAdmin: the operator's BMC commands; the password only sealed.
func TestBMCAdmin(t *testing.T) {
	e := newEnv(t)
	e.customer("acme")
	e.server("ns1", "acme")
	ctx := context.Background()
	if s, err := e.admin.BMC(ctx, "ns1"); err != nil || s != "none" {
		t.Fatalf("%q %v", s, err)
	}
	spec, _ := power.ParseBMC("ipmi://admin@10.0.0.5")
	if err := e.admin.SetBMC(ctx, "ns1", spec, power.Password{}); !errors.Is(err, power.ErrBadPassword) {
		t.Fatalf("no password: %v", err)
	}
	e.setBMC("ns1", "10.0.0.5", bmcPassword)
	if s, err := e.admin.BMC(ctx, "ns1"); err != nil || s != "ipmi://admin@10.0.0.5:623" {
		t.Fatalf("%q %v", s, err)
	}
	if err := e.admin.SetBMC(ctx, "nope", spec, power.Password{}); err == nil || !strings.Contains(err.Error(), "no server nope") {
		t.Fatalf("%v", err)
	}
	_ = agentapi.Prefix
}

// rebootFlow: OVH's POST .../reboot on a server with a BMC is a hardReboot
// task the power loop carries out (PXE override, cycle), its comment
// saying so, done with the outcome; with a wrong password it ends
// ovhError with the power message. It returns the comments' codes.
func rebootFlow(t *testing.T, e *env, bmcs *fakeBMCs, cu *customer) map[job.Code]string {
	seen := map[job.Code]string{}
	e.server("r1", cu.name)
	e.server("r2", cu.name)
	e.setBMC("r1", "bmc-r1", bmcPassword)
	e.setBMC("r2", "bmc-r2", "wrong-"+bmcPassword)
	var t1, t2 task
	if err := cu.bearer.Post(path("r1", "/reboot"), nil, &t1); err != nil {
		t.Fatal(err)
	}
	if err := cu.bearer.Post(path("r2", "/reboot"), nil, &t2); err != nil {
		t.Fatal(err)
	}
	if t1.Function != "hardReboot" || t1.Status != "todo" || t1.Comment != job.Text(job.MsgPowerRebooting) {
		t.Fatalf("reboot task %+v", t1)
	}
	seen[job.MsgPowerRebooting] = t1.Comment
	e.round()
	if calls := bmcs.get("bmc-r1").took(); !equalCalls(calls, "pxe-legacy", "status", "cycle") {
		t.Fatalf("reboot request: BMC calls %v", calls)
	}
	var g1, g2 task
	if err := cu.bearer.Get(path("r1", "/task/"+t1.TaskID.String()), &g1); err != nil {
		t.Fatal(err)
	}
	if g1.Status != "done" || g1.DoneDate == nil || g1.Comment != job.Text(job.MsgPowerRebooted, "power-cycled", "ipmi://admin@bmc-r1:623") {
		t.Errorf("reboot task after the power loop: %+v", g1)
	}
	if err := cu.bearer.Get(path("r2", "/task/"+t2.TaskID.String()), &g2); err != nil {
		t.Fatal(err)
	}
	if g2.Status != "ovhError" || g2.Comment != job.Text(job.PowerCredentials, string(power.OpBootOverride)) {
		t.Errorf("refused reboot task: %+v", g2)
	}
	return seen
}
