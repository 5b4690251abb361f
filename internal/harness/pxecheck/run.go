package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/byoi/byoi/internal/harness"
	"github.com/byoi/byoi/internal/ipmisim"
	"github.com/ovh/go-ovh/ovh"
)

// fwRun is the whole flow on one firmware.
type fwRun struct {
	e      *env
	fw     string
	server string
	vm     *server
	c      *ovh.Client
	report *harness.Case
	took   time.Duration
	last   *deployment // what the last reinstall posted, for the boot checks
}

func newRun(e *env, fw string) *fwRun {
	return &fwRun{e: e, fw: fw, server: serverName(fw), vm: e.servers[fw], report: log.NewCase(fw)}
}

func (r *fwRun) log(format string, a ...any) { log.Info("[%s] "+format, append([]any{r.fw}, a...)...) }

// why records what helps to see why a step failed: the API's status of the
// server, byoi-api's warnings and errors, and the console's last lines
// (escape sequences and progress bars out). They are shown now and again
// at the very end of the report, where a CI log's tail shows them.
func (r *fwRun) why(step string, err error) {
	var b strings.Builder
	fmt.Fprintf(&b, "  [%s] FAIL %s: %v\n", r.fw, step, err)
	fmt.Fprintf(&b, "  [%s] API status of %s:\n%s\n", r.fw, r.server, r.apiStatus())
	fmt.Fprintf(&b, "  [%s] byoi-api's warnings and errors (last 12):\n%s\n", r.fw, harness.GrepTail(r.e.apiLog, regexp.MustCompile(`level=(WARN|ERROR)`), 12))
	if r.vm != nil && r.vm.bmc != nil {
		fmt.Fprintf(&b, "  [%s] the BMC's record (ipmi_sim, since byoi-api started): %s\n", r.fw, bmcEvents(r.vm.bmc, 0, r.e.started))
		fmt.Fprintf(&b, "  [%s] QEMU's own output (the BMC starts it; last 10 lines):\n%s\n", r.fw, harness.TailFile(filepath.Join(r.vm.Dir, "bmc", "machine.log"), 10))
		if out, err := r.vm.bmc.Ipmitool(context.Background(), "chassis", "power", "status"); err == nil {
			fmt.Fprintf(&b, "  [%s] ipmitool: %s\n", r.fw, strings.TrimSpace(out))
		} else {
			fmt.Fprintf(&b, "  [%s] ipmitool: %v\n", r.fw, err)
		}
	}
	if r.vm != nil && r.vm.Console() != "" {
		fmt.Fprintf(&b, "  [%s] the console's boot lines (firmware, iPXE, byoi):\n%s\n", r.fw,
			harness.GrepTail(r.vm.Console(), regexp.MustCompile(`BdsDxe|bootsel|iPXE|byoi[:-]|https?://\S+\.\.\.|[Tt]imed out|nvme`), 12))
		fmt.Fprintf(&b, "  [%s] last console lines (%s):\n%s\n", r.fw, r.vm.Console(), r.vm.Tail(40))
		if dump := harness.WatchdogDump(r.vm.Console()); dump != "" {
			fmt.Fprintf(&b, "  [%s] the agent's watchdog found no progress; where it waited:\n%s\n", r.fw, dump)
		}
	}
	r.report.Detail(b.String())
	log.Say("%s", b.String())
}

// apiStatus is what the customer API says about the server, for a report.
func (r *fwRun) apiStatus() string {
	if r.c == nil {
		return "    (no client)"
	}
	var lines []string
	for _, p := range []string{"", "/bringYourOwnImage", "/install/status", "/specifications/hardware", "/bringYourOwnImage/history"} {
		var v json.RawMessage
		if err := r.c.Get("/dedicated/server/"+r.server+p, &v); err != nil {
			lines = append(lines, fmt.Sprintf("    GET %s: %v", p, err))
			continue
		}
		s := string(v)
		if len(s) > 600 {
			s = s[:600] + "..."
		}
		lines = append(lines, fmt.Sprintf("    GET %s: %s", p, s))
	}
	return strings.Join(lines, "\n")
}

func (r *fwRun) main(ctx context.Context) {
	start := time.Now()
	defer func() { r.took = time.Since(start) }()
	var err error
	r.c, err = ovh.NewClient(r.e.apiURL+"/1.0", r.e.customer.ApplicationKey, r.e.customer.ApplicationSecret, r.e.customer.ConsumerKey)
	if err != nil {
		r.report.Fail("setup", "%v", err)
		return
	}
	if r.vm == nil {
		r.report.Fail("setup", "no server for %s", r.fw)
		return
	}
	steps := []harness.Step{}
	if r.fw == harness.UEFI {
		steps = append(steps, harness.Step{Name: "seed: OVMF's BootOrder gets the network first (manufacturing)", Run: r.seed})
	}
	steps = append(steps,
		harness.Step{Name: "power-off: the server is off, ipmitool and powerState agree", Run: func(ctx context.Context) error { return r.judgePower(ctx, "power-off", "off") }},
		harness.Step{Name: "rescue: POST reinstall, byoi-api powers the server on through its BMC (PXE once), rescue, inventory", Run: func(ctx context.Context) error {
			return r.reinstall(ctx, "reinstall", imageDefault, "", powerOn)
		}},
		harness.Step{Name: "boots-disk: the agent's reboot, network boot to the disk, the image boots and phones home", Run: func(ctx context.Context) error { return r.bootsDisk(ctx, "boots-disk", `\EFI\BOOT\BOOTX64.EFI`) }},
	)
	if r.fw == harness.UEFI {
		steps = append(steps,
			harness.Step{Name: "delete-rescue: DELETE the deployment, byoi-api power-cycles the server: back in rescue", Run: func(ctx context.Context) error { return r.backToRescue(ctx, "delete") }},
			harness.Step{Name: `efi-loader-path: image without \EFI\BOOT, efiBootloaderPath \EFI\debian\grubx64.efi (the agent waits: no power cycle)`, Run: r.nonDefaultLoader})
	} else {
		steps = append(steps,
			harness.Step{Name: "put-rescue: PUT bootId 2 then POST /reboot (Terraform's order), one power cycle: back in rescue", Run: func(ctx context.Context) error { return r.backToRescue(ctx, "put") }},
			harness.Step{Name: "wrong-checksum: error, no reboot, still in rescue", Run: r.wrongChecksum})
	}
	if !harness.RunSteps(ctx, r.report, steps, r.why) {
		return
	}
	// The run is over: the BMC simulator stops, and the machine with it
	// (teardown, no boot), before the disks are read.
	r.vm.bmc.Close()
	// Group 1's disks: not a byte changed through the whole run.
	var same []string
	for _, d := range r.vm.disks {
		if d.group != 1 {
			continue
		}
		got, err := harness.ContentDigest(d.path)
		if err != nil || got != d.digest {
			r.report.Fail("group 1 untouched", "disk %s (%s) changed: %v", d.name, d.serial, err)
			r.why("group 1 untouched", fmt.Errorf("disk %s changed", d.name))
			return
		}
		same = append(same, d.serial)
	}
	r.report.Pass("group 1 untouched", "disks %s: content identical to before the first boot (digest of every non-zero block)", strings.Join(same, ", "))
}

// seed is OVMF's seeding boot, the server's manufacturing before its BMC
// takes over: a first boot with bootindex=1 on the NIC only, until iPXE
// starts, makes OVMF write BootOrder with the network first (the way the
// servers are set up: byoi's network boot decides rescue or disk). The
// harness starts and stops this one QEMU itself; from then on only the BMC
// powers the machine.
func (r *fwRun) seed(ctx context.Context) error {
	v := r.vm
	v.NICBootIndex = true
	err := v.Start()
	v.NICBootIndex = false
	if err != nil {
		return err
	}
	l, err := v.WaitConsole(ctx, 0, regexp.MustCompile(`iPXE initialising devices|iPXE \(http://ipxe\.org\)|iPXE [0-9]`), 300*time.Second)
	v.Stop()
	if err != nil {
		return fmt.Errorf("seeding boot: %w", err)
	}
	r.report.Pass("seed", "OVMF seeding boot with bootindex=1 on the NIC only, stopped at %q: BootOrder has the network first (the server's manufacturing; the BMC powers it from now on)", l)
	return nil
}

// judgePower: ipmitool (lanplus, the independent judge) and byoi-api's
// powerState (GET /dedicated/server/{sn}) both say the server is want
// ("on" or "off"), and so does the simulator's own view.
func (r *fwRun) judgePower(ctx context.Context, check, want string) error {
	r.vm.PoweredBy(r.vm.bmc.Powered) // from now on the BMC powers the machine
	out, err := r.vm.bmc.Ipmitool(ctx, "chassis", "power", "status")
	if err != nil {
		return err
	}
	got := strings.TrimSpace(out)
	if got != "Chassis Power is "+want || r.vm.bmc.Powered() != (want == "on") {
		return fmt.Errorf("ipmitool: %q (the simulator: powered %v), want %s", got, r.vm.bmc.Powered(), want)
	}
	var sv struct{ PowerState *string }
	if err := r.c.Get("/dedicated/server/"+r.server, &sv); err != nil {
		return fmt.Errorf("GET server: %w", err)
	}
	if sv.PowerState == nil || *sv.PowerState != "power"+want {
		return fmt.Errorf("GET /dedicated/server/%s: powerState %v, while ipmitool says %q", r.server, ptr(sv.PowerState), got)
	}
	r.report.Pass(check, "ipmitool -I lanplus: %q; GET /dedicated/server/%s (go-ovh): powerState %s", got, r.server, *sv.PowerState)
	return nil
}

func ptr(p *string) string {
	if p == nil {
		return "null"
	}
	return *p
}

// How a deployment or a reboot request is expected to power the server.
type powerWant int

const (
	powerOn    powerWant = iota // the server is off: byoi-api powers it on
	powerCycle                  // it is on: byoi-api power-cycles it
	powerNone                   // its rescue agent waits: no power action
)

// waitBMCBoot waits for byoi-api's power action after the BMC's record
// mark: the one-time boot device PXE set through the BMC, then a power on
// (from off, or the second half of a cycle) whose boot consumed it. It
// checks with ipmitool that no boot override is left (one-time, never
// persistent) and that the power is on, and returns the record.
func (r *fwRun) waitBMCBoot(ctx context.Context, mark int, want powerWant, t0 time.Time) (string, error) {
	sim := r.vm.bmc
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	on, i, err := sim.WaitEvent(wctx, mark, func(e ipmisim.Event) bool { return e.Kind == "power on" || e.Kind == "reset" })
	if err != nil {
		return "", fmt.Errorf("byoi-api did not power the server on through its BMC within 90 s (the BMC's record: %s): %w", bmcEvents(sim, mark, t0), err)
	}
	ev := sim.Events()[mark : i+1]
	setPXE, boots, offs := false, 0, 0
	for _, e := range ev {
		switch {
		case e.Kind == "boot device":
			boots++
			setPXE = setPXE || e.Boot == "pxe"
		case e.Kind == "power off" && setPXE:
			offs++
		}
	}
	rec := bmcEvents(sim, mark, t0)
	switch {
	case on.Kind != "power on" || on.Boot != "pxe" || !setPXE || boots != 1:
		return "", fmt.Errorf("the BMC's record: %s; want the boot device pxe set once, then a power on that consumes it", rec)
	case want == powerOn && offs != 0:
		return "", fmt.Errorf("the BMC's record: %s; the server was off: want a power on, not a cycle", rec)
	case want == powerCycle && offs != 1:
		// More than one power off: the BMC executed the cycle again (a
		// retransmitted command).
		return "", fmt.Errorf("the BMC's record: %s; the server was on: want one power cycle (one off, then on)", rec)
	}
	// The judge: the power is on and no override is left for the next
	// boot (ipmi_sim answers boot flags from the simulator's pending
	// device, which the boot consumed).
	st, err := sim.Ipmitool(ctx, "chassis", "power", "status")
	if err != nil {
		return "", err
	}
	bp, err := sim.Ipmitool(ctx, "chassis", "bootparam", "get", "5")
	if err != nil {
		return "", err
	}
	sel := ""
	for _, l := range strings.Split(bp, "\n") {
		if strings.Contains(l, "Boot Device Selector") {
			sel = strings.TrimSpace(l)
		}
	}
	if strings.TrimSpace(st) != "Chassis Power is on" || !strings.Contains(sel, "No override") {
		return "", fmt.Errorf("after the boot, ipmitool: %q, boot flags %q; want on and no override left:\n%s", strings.TrimSpace(st), sel, bp)
	}
	return fmt.Sprintf("the BMC's record: %s; ipmitool: %q, %q", rec, strings.TrimSpace(st), sel), nil
}

// noPower checks that the BMC did nothing after mark: no boot device, no
// power action, and the same QEMU process still runs.
func (r *fwRun) noPower(mark, pid int, t0 time.Time) error {
	sim := r.vm.bmc
	if len(sim.Events()) != mark || sim.PID() != pid || pid == 0 {
		return fmt.Errorf("the BMC acted (record since: %s; QEMU pid %d, then %d): want no power action", bmcEvents(sim, mark, t0), pid, sim.PID())
	}
	return nil
}

// rescueBoot waits for the rescue system on the current boot's console:
// iPXE ran the rescue script, the agent started.
func (r *fwRun) rescueBoot(ctx context.Context, t time.Time) error {
	for _, w := range []struct{ re, what string }{
		{`byoi: server ` + r.server + `: booting the rescue system`, "iPXE ran the rescue script"},
		{`byoi-rescue: dhcp: eth0 10\.0\.2\.15/24`, "rescue DHCP"},
		{`byoi agent [^:]*: server ` + r.server + `, control plane http://10\.0\.2\.2:[0-9]+`, "the agent started"},
	} {
		l, err := r.vm.WaitConsole(ctx, 0, regexp.MustCompile(w.re), 420*time.Second)
		if err != nil {
			return err
		}
		r.report.Evidence("%s %.0f s after the power action: %s", w.what, time.Since(t).Seconds(), l)
	}
	return nil
}

// inventory: the agent's inventory shows both disk groups
// (specifications/hardware).
func (r *fwRun) inventory(ctx context.Context) error {
	var hw struct {
		BootMode   string
		DiskGroups []struct {
			DiskGroupID   int
			Description   string
			DiskType      string
			NumberOfDisks int
			DiskSize      struct{ Value int64 }
		}
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		if err := r.c.Get("/dedicated/server/"+r.server+"/specifications/hardware", &hw); err != nil {
			return fmt.Errorf("GET specifications/hardware: %w", err)
		}
		if len(hw.DiskGroups) > 0 || time.Now().After(deadline) {
			break
		}
		if err := harness.Sleep(ctx, 2*time.Second); err != nil {
			return err
		}
	}
	wantMode := map[string]string{"bios": "legacy", "uefi": "uefi"}[r.fw]
	g := hw.DiskGroups
	if hw.BootMode != wantMode || len(g) != 2 || g[0].NumberOfDisks != 2 || g[1].NumberOfDisks != 1 || g[0].DiskType != "NVME" || g[1].DiskType != "NVME" || g[0].DiskSize.Value <= g[1].DiskSize.Value {
		return fmt.Errorf("specifications/hardware: %+v, want bootMode %s, group 1 two NVMe disks, group 2 one smaller NVMe disk", hw, wantMode)
	}
	r.report.Pass("rescue", "specifications/hardware (go-ovh): bootMode %s, diskGroups [%d: %s] [%d: %s]", hw.BootMode, g[0].DiskGroupID, g[0].Description, g[1].DiskGroupID, g[1].Description)
	return nil
}

type task struct {
	TaskID   int64  `json:"taskId"`
	Function string `json:"function"`
	Status   string `json:"status"`
	Comment  string `json:"comment"`
}

// deployment is what a deploy step posted, for the boot checks.
type deployment struct {
	hostname, marker string
	consoleMark      int64
	logMark          int64
	taskID           int64
	esp              string // files on the ESP, seen over SSH
	bmcMark, pid     int    // the BMC's record and QEMU's process when the task was done
}

// reinstallBody is the customer's POST .../reinstall (OVH's shape).
func (r *fwRun) reinstallBody(img, sum, efiPath, hostname, marker string) map[string]any {
	userData := harness.MarkerUserData("pxe-check", marker)
	c := map[string]any{
		"imageURL": r.e.imgURL + "/" + img, "imageType": "qcow2",
		"imageCheckSum": sum, "imageCheckSumType": "sha256",
		"hostname": hostname, "sshKey": r.e.key.Public,
		"configDriveUserData": userData,
		"configDriveMetadata": map[string]string{"marker": marker},
	}
	if efiPath != "" {
		c["efiBootloaderPath"] = efiPath
	}
	return map[string]any{"operatingSystem": "byoi_64", "customizations": c, "storage": []map[string]any{{"diskGroupId": 2}}}
}

// reinstall: POST reinstall; byoi-api powers the server through its BMC
// (want: on from off, a cycle, or nothing when its agent waits); then the
// task and install/status to done.
func (r *fwRun) reinstall(ctx context.Context, step, img, efiPath string, want powerWant) error {
	d := &deployment{hostname: fmt.Sprintf("pxe-%s-%s", r.fw, harness.RandHex(2)), marker: harness.RandHex(8), consoleMark: r.vm.ConsoleSize(), logMark: harness.FileSize(r.e.apiLog)}
	r.last = d
	sim := r.vm.bmc
	mark, pid := len(sim.Events()), sim.PID()
	var tk task
	t := time.Now()
	if err := r.c.Post("/dedicated/server/"+r.server+"/reinstall", r.reinstallBody(img, r.e.sha[img], efiPath, d.hostname, d.marker), &tk); err != nil {
		return fmt.Errorf("POST reinstall: %w", err)
	}
	d.taskID = tk.TaskID
	r.report.Evidence("POST reinstall %s (hostname %s, diskGroupId 2%s): task %d %s", img, d.hostname, map[bool]string{true: ", efiBootloaderPath " + efiPath}[efiPath != ""], tk.TaskID, tk.Status)
	if want != powerNone {
		rec, err := r.waitBMCBoot(ctx, mark, want, t)
		if err != nil {
			return err
		}
		r.report.Pass("power-on-pxe", "after the POST, byoi-api through the BMC: %s", rec)
		if err := r.rescueBoot(ctx, t); err != nil {
			return err
		}
		d.consoleMark = r.vm.ConsoleSize() // this boot's console, from the agent on
		if err := r.inventory(ctx); err != nil {
			return err
		}
		pid = sim.PID()
	}
	final, err := r.waitTask(ctx, tk.TaskID, 900*time.Second)
	if err != nil {
		return err
	}
	if final.Status != "done" {
		return fmt.Errorf("task %d ended %s", tk.TaskID, final.Status)
	}
	d.bmcMark, d.pid = len(sim.Events()), sim.PID()
	var st struct{ Status, Message string }
	if err := r.c.Get("/dedicated/server/"+r.server+"/bringYourOwnImage", &st); err != nil {
		return err
	}
	steps, err := r.installSteps()
	if err != nil {
		return err
	}
	if st.Status != "done" || strings.Trim(strings.ReplaceAll(steps, "done", ""), " ") != "" {
		return fmt.Errorf("after the task: status %+v, install/status %s", st, steps)
	}
	if want == powerNone {
		if err := r.noPower(mark, pid, t); err != nil {
			return err
		}
		r.report.Evidence("the rescue agent was waiting: no BMC action from the POST to done (QEMU pid %d throughout)", pid)
	}
	r.report.Pass(step, "task %d done after %.0f s; bringYourOwnImage %s %q; install/status: %s", tk.TaskID, time.Since(t).Seconds(), st.Status, st.Message, steps)
	return nil
}

func (r *fwRun) installSteps() (string, error) {
	var is struct {
		Progress []struct{ Status string }
	}
	if err := r.c.Get("/dedicated/server/"+r.server+"/install/status", &is); err != nil {
		return "", fmt.Errorf("GET install/status: %w", err)
	}
	var s []string
	for _, p := range is.Progress {
		s = append(s, p.Status)
	}
	return strings.Join(s, " "), nil
}

// waitTask polls the task until it ends (done, customerError, ovhError,
// cancelled) or limit passes.
func (r *fwRun) waitTask(ctx context.Context, id int64, limit time.Duration) (task, error) {
	deadline := time.Now().Add(limit)
	var tk task
	lastSteps := ""
	for {
		if err := r.c.Get(fmt.Sprintf("/dedicated/server/%s/task/%d", r.server, id), &tk); err != nil {
			return tk, fmt.Errorf("GET task: %w", err)
		}
		switch tk.Status {
		case "done", "customerError", "ovhError", "cancelled":
			return tk, nil
		}
		if s, err := r.installSteps(); err == nil && s != lastSteps {
			r.log("task %d %s; install/status: %s", id, tk.Status, s)
			lastSteps = s
		}
		if time.Now().After(deadline) {
			return tk, fmt.Errorf("task %d still %s after %s", id, tk.Status, limit)
		}
		if err := harness.Sleep(ctx, 3*time.Second); err != nil {
			return tk, err
		}
	}
}

// bootsDisk: the agent rebooted the machine by itself; it network-boots,
// byoi-api sends it to its disk, the deployed system boots and cloud-init
// applies the ConfigDrive. efiPath is the loader the UEFI entry names.
func (r *fwRun) bootsDisk(ctx context.Context, step, efiPath string) error {
	d := r.last
	v := r.vm
	t := time.Now()
	// The agent posted how the disk boots before rebooting.
	bi, err := harness.WaitFile(ctx, r.e.apiLog, d.logMark, regexp.MustCompile(`msg="boot info" server=`+r.server+` .*`), 60*time.Second)
	if err != nil {
		return fmt.Errorf("byoi-api got no boot info from the agent: %w", err)
	}
	r.report.Evidence("byoi-api log: %s", bi)
	l, err := v.WaitConsole(ctx, d.consoleMark, regexp.MustCompile(`byoi: booting its local disk`) /* the disk script names no server (issue 22) */, 300*time.Second)
	if err != nil {
		return err
	}
	r.report.Evidence("the agent rebooted the machine; iPXE ran the disk script: %s", l)
	if r.fw == "bios" {
		l, err = v.WaitConsole(ctx, d.consoleMark, regexp.MustCompile(`bootsel: booting BIOS drive 0x[0-9A-F]{2}`), 120*time.Second)
		if err != nil {
			return err
		}
		r.report.Evidence("SeaBIOS console: %s", l)
	} else {
		re := regexp.MustCompile(`BdsDxe: (loading|starting) Boot[0-9A-F]{4} "byoi deployed image" from HD\([^)]*\)/` + regexp.QuoteMeta(efiPath))
		l, err = v.WaitConsole(ctx, d.consoleMark, re, 120*time.Second)
		if err != nil {
			return err
		}
		r.report.Evidence("OVMF console: %s", l)
	}
	if err := r.debianBoots(ctx, d); err != nil {
		return err
	}
	// The agent's reboot was the guest's own: QEMU reset, the same process
	// under the same BMC, which did nothing.
	if err := r.noPower(d.bmcMark, d.pid, t); err != nil {
		return fmt.Errorf("the agent's reboot to the disk: %w", err)
	}
	r.report.Evidence("the agent's reboot was the guest's (QEMU's reset): the same QEMU (pid %d) under the BMC, which did nothing", d.pid)
	if err := r.phonedHome(ctx, d); err != nil {
		return err
	}
	r.report.Pass(step, "%s booted and checked %.0f s after the deployment was done", d.hostname, time.Since(t).Seconds())
	return nil
}

// phonedHome: the deployed system's cloud-init phoned home through the
// ConfigDrive's vendor_data.json (phone_home, to byoi-api's agent
// listener at 10.0.2.2): the history shows the deployment booted, with
// the time from done.
func (r *fwRun) phonedHome(ctx context.Context, d *deployment) error {
	type item struct {
		DeploymentID int64
		TaskID       int64
		Status       string
		Booted       *string
		BootedAt     *string
		EndedAt      *string
	}
	deadline := time.Now().Add(180 * time.Second)
	for {
		var h []item
		if err := r.c.Get("/dedicated/server/"+r.server+"/bringYourOwnImage/history", &h); err != nil {
			return fmt.Errorf("GET bringYourOwnImage/history: %w", err)
		}
		var it *item
		for i := range h {
			if h[i].TaskID == d.taskID {
				it = &h[i]
			}
		}
		if it == nil {
			return fmt.Errorf("the history has no deployment of task %d", d.taskID)
		}
		if it.Booted != nil && *it.Booted == "booted" && it.BootedAt != nil && it.EndedAt != nil {
			b, err1 := time.Parse(time.RFC3339, *it.BootedAt)
			e, err2 := time.Parse(time.RFC3339, *it.EndedAt)
			if err1 != nil || err2 != nil || b.Before(e) {
				return fmt.Errorf("history: bootedAt %s, endedAt %s", *it.BootedAt, *it.EndedAt)
			}
			l, _ := harness.WaitFile(ctx, r.e.apiLog, d.logMark, regexp.MustCompile(`msg="deployed system booted" deployment=`+fmt.Sprint(it.DeploymentID)+` .*`), time.Second)
			r.report.Pass("booted", "history of deployment %d: %s, booted %s after done (%s → %s); byoi-api log: %s", it.DeploymentID, it.Status, b.Sub(e), *it.EndedAt, *it.BootedAt, l)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the deployed system did not phone home: history %+v (booted %s) 180 s after its checks", *it, ptr(it.Booted))
		}
		if err := harness.Sleep(ctx, 3*time.Second); err != nil {
			return err
		}
	}
}

// debianBoots: the deployed Debian's console shows the user data's
// marker, cloud-init done with the ConfigDrive and the login prompt with
// the job's hostname; SSH with the job's key works and shows the root
// file system and the ConfigDrive on disk group 2's disk.
func (r *fwRun) debianBoots(ctx context.Context, d *deployment) error {
	v := r.vm
	for _, w := range []struct {
		re, what string
		prompt   bool
	}{
		{`BYOI-MARKER ` + d.marker, "the ConfigDrive's user data ran", false},
		{`Cloud-init v\. .* finished at .*Datasource DataSourceConfigDrive \[net,ver=2\]\[source=/dev/nvme[0-9]n1p[0-9]+\]`, "cloud-init used the ConfigDrive", false},
		{`[^ \n]+ login:`, "the login prompt shows the job's hostname", true},
	} {
		l, err := v.WaitConsole(ctx, d.consoleMark, regexp.MustCompile(w.re), 600*time.Second)
		if err != nil {
			return err
		}
		if w.prompt {
			// The first prompt (cloud-init's lines may follow it).
			l, _, _ = strings.Cut(l, " login:")
			if l = l[strings.LastIndexByte(l, ' ')+1:]; l != d.hostname {
				return fmt.Errorf("the login prompt shows %q, want the job's hostname %q", l, d.hostname)
			}
			l += " login:"
		}
		r.report.Evidence("%s: %s", w.what, l)
	}
	script := `echo "HOST=$(hostname)"
echo "MARKERFILE=$(sudo cat /root/byoi-marker)"
root=$(findmnt -no SOURCE /)
rootdisk=/dev/$(lsblk -no PKNAME "$root")
echo "ROOT=$root on $rootdisk serial $(lsblk -dno SERIAL "$rootdisk")"
cd=$(sudo blkid -t LABEL=config-2 -o device | head -1)
cddisk=/dev/$(lsblk -no PKNAME "$cd")
echo "CONFIGDRIVE=$cd on $cddisk serial $(lsblk -dno SERIAL "$cddisk")"
echo "ESP=$(sudo find /boot/efi -type f | sort | tr '\n' ' ')"
`
	out, err := harness.SSH(ctx, r.e.key, v.sshPort, "debian", script, 10)
	if err != nil {
		return err
	}
	vals := harness.Values(out)
	get := func(k string) string { return vals[k] }
	r.report.Evidence("ssh debian@ with the job's key: HOST=%s MARKERFILE=%s", get("HOST"), get("MARKERFILE"))
	r.report.Evidence("ssh: ROOT=%s; CONFIGDRIVE=%s", get("ROOT"), get("CONFIGDRIVE"))
	r.report.Evidence("ssh: ESP files: %s", get("ESP"))
	if get("HOST") != d.hostname || get("MARKERFILE") != d.marker {
		return fmt.Errorf("over ssh: %s", out)
	}
	if !strings.HasSuffix(get("ROOT"), "serial byoi-g2") || !strings.HasSuffix(get("CONFIGDRIVE"), "serial byoi-g2") {
		return fmt.Errorf("the root file system or the ConfigDrive is not on disk group 2's disk (serial byoi-g2): %s", out)
	}
	d.esp = get("ESP")
	return nil
}

// backToRescue: DELETE the deployment (byoi-api power-cycles the server),
// or PUT bootId 2 and POST .../reboot (Terraform's order: the PUT only sets
// the next boot, the reboot task power-cycles once): the machine boots the
// rescue system again and its agent waits for a job.
func (r *fwRun) backToRescue(ctx context.Context, how string) error {
	sim := r.vm.bmc
	mark := len(sim.Events())
	t := time.Now()
	var err error
	if how == "delete" {
		err = r.c.Delete("/dedicated/server/"+r.server+"/bringYourOwnImage", nil)
	} else {
		err = r.c.Put("/dedicated/server/"+r.server, map[string]any{"bootId": 2}, nil)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", how, err)
	}
	var sv struct{ BootID int64 }
	if err := r.c.Get("/dedicated/server/"+r.server, &sv); err != nil || sv.BootID != 2 {
		return fmt.Errorf("bootId after %s: %d %v, want 2 (rescue)", how, sv.BootID, err)
	}
	logMark := harness.FileSize(r.e.apiLog)
	var rt task
	if how == "put" {
		if err := r.c.Post("/dedicated/server/"+r.server+"/reboot", nil, &rt); err != nil {
			return fmt.Errorf("POST reboot: %w", err)
		}
		r.report.Evidence("PUT bootId 2, then POST /reboot (go-ovh): task %d %s %s", rt.TaskID, rt.Function, rt.Status)
	}
	rec, err := r.waitBMCBoot(ctx, mark, powerCycle, t)
	if err != nil {
		return err
	}
	r.report.Evidence("byoi-api through the BMC: %s", rec)
	if err := r.rescueBoot(ctx, t); err != nil {
		return err
	}
	l, err := harness.WaitFile(ctx, r.e.apiLog, logMark, regexp.MustCompile(`method=GET path=/agent/v1/servers/`+r.server+`/job status=204 .*`), 120*time.Second)
	if err != nil {
		return fmt.Errorf("the agent does not ask for a job: %w", err)
	}
	// One power action, not two: a double reboot would have cycled again
	// by now (the power loop looks every 2 s).
	ons := 0
	for _, e := range sim.Events()[mark:] {
		if e.Kind == "power on" || e.Kind == "reset" {
			ons++
		}
	}
	if ons != 1 {
		return fmt.Errorf("the server was powered on %d times after the %s (the BMC's record: %s), want once", ons, how, bmcEvents(sim, mark, t))
	}
	if how == "put" {
		var done task
		if err := r.c.Get(fmt.Sprintf("/dedicated/server/%s/task/%d", r.server, rt.TaskID), &done); err != nil {
			return err
		}
		if done.Status != "done" {
			return fmt.Errorf("reboot task %d %s (%s), want done", rt.TaskID, done.Status, done.Comment)
		}
		r.report.Evidence("reboot task %d %s: %s", rt.TaskID, done.Status, done.Comment)
	}
	if err := r.judgePower(ctx, how+"-power", "on"); err != nil {
		return err
	}
	verb := map[string]string{"delete": "DELETE bringYourOwnImage", "put": "PUT bootId 2 + POST /reboot"}[how]
	r.report.Pass(how+"-rescue", "%s → bootId 2; one power cycle through the BMC; the machine is in rescue and its agent waits for a job (byoi-api log: %s)", verb, l)
	return nil
}

// nonDefaultLoader: an image whose ESP has no \EFI\BOOT\BOOTX64.EFI, deployed with
// efiBootloaderPath: it boots only through the agent's boot entry.
func (r *fwRun) nonDefaultLoader(ctx context.Context) error {
	const loader = `\EFI\debian\grubx64.efi`
	if err := r.reinstall(ctx, "efi-loader-path reinstall", imageNoDefault, loader, powerNone); err != nil {
		return err
	}
	if err := r.bootsDisk(ctx, "efi-loader-path boots-disk", loader); err != nil {
		return err
	}
	d := r.last
	if strings.Contains(strings.ToUpper(d.esp), "/EFI/BOOT/") || !strings.Contains(d.esp, "/boot/efi/EFI/debian/grubx64.efi") {
		return fmt.Errorf("the deployed ESP holds %q: want the loader only at %s", d.esp, loader)
	}
	r.report.Pass("efi-loader-path", "the ESP holds no \\EFI\\BOOT (%s) and the system booted through the agent's entry for %s", strings.TrimSpace(d.esp), loader)
	return nil
}

// wrongChecksum: a wrong checksum: the deployment fails with OVH's message, the
// task ends customerError, the machine does not reboot and its agent
// waits for the next job.
func (r *fwRun) wrongChecksum(ctx context.Context) error {
	img := imageDefault
	good := r.e.sha[img]
	wrong := fmt.Sprintf("%x", []byte(good[:32])) // 64 hex digits, not the image's
	mark := r.vm.ConsoleSize()
	bmcMark, pid, t0 := len(r.vm.bmc.Events()), r.vm.bmc.PID(), time.Now()
	var tk task
	if err := r.c.Post("/dedicated/server/"+r.server+"/reinstall", r.reinstallBody(img, wrong, "", "pxe-wrong", harness.RandHex(8)), &tk); err != nil {
		return fmt.Errorf("POST reinstall: %w", err)
	}
	final, err := r.waitTask(ctx, tk.TaskID, 600*time.Second)
	if err != nil {
		return err
	}
	want := fmt.Sprintf("Bad sha256 for downloaded file, got : %s while expecting %s.", good, wrong)
	var st struct{ Status, Message string }
	if err := r.c.Get("/dedicated/server/"+r.server+"/bringYourOwnImage", &st); err != nil {
		return err
	}
	if final.Status != "customerError" || st.Status != "error" || st.Message != want {
		return fmt.Errorf("task %s, status %s %q; want customerError, error %q", final.Status, st.Status, st.Message, want)
	}
	r.report.Evidence("task %d customerError; bringYourOwnImage error %q", tk.TaskID, st.Message)
	l, err := r.vm.WaitConsole(ctx, mark, regexp.MustCompile(`deployment failed: Bad sha256 for downloaded file`), 60*time.Second)
	if err != nil {
		return err
	}
	r.report.Evidence("rescue console: %s", l)
	// No reboot: 30 s on, the console shows no firmware or iPXE start,
	// and the agent keeps asking for a job.
	errMark := harness.FileSize(r.e.apiLog)
	if err := harness.Sleep(ctx, 30*time.Second); err != nil {
		return err
	}
	after := harness.Searchable(r.vm.Console(), mark)
	if regexp.MustCompile(`SeaBIOS \(version|iPXE initialising|booting the rescue system|booting its local disk|byoi-rescue: kernel`).MatchString(after) {
		return fmt.Errorf("the machine rebooted after the error:\n%s", r.vm.Tail(30))
	}
	if !r.vm.Running() {
		return errors.New("QEMU exited")
	}
	if err := r.noPower(bmcMark, pid, t0); err != nil {
		return err
	}
	r.report.Evidence("the rescue agent was waiting: no BMC action (QEMU pid %d throughout)", pid)
	l, err = harness.WaitFile(ctx, r.e.apiLog, errMark, regexp.MustCompile(`method=GET path=/agent/v1/servers/`+r.server+`/job status=204 .*`), 30*time.Second)
	if err != nil {
		return fmt.Errorf("the agent does not ask for the next job: %w", err)
	}
	r.report.Pass("wrong-checksum", "no reboot for 30 s, still in rescue, the agent waits for the next job (byoi-api log: %s)", l)
	return nil
}
