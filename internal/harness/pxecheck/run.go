package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/byoi/byoi/internal/harness"
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
	return &fwRun{e: e, fw: fw, server: serverName(fw), report: log.NewCase(fw)}
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
	dir := filepath.Join(r.e.c.work, r.fw)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.report.Fail("setup", "%v", err)
		return
	}
	if r.vm, err = newServer(dir, r.fw, macOf(r.fw), r.e.bootURL); err != nil {
		r.report.Fail("setup", "%v", err)
		return
	}
	defer r.vm.Stop()
	steps := []harness.Step{
		{Name: "rescue: network boot into rescue, inventory", Run: r.bootIntoRescue},
		{Name: "reinstall: byoi_64 onto disk group 2", Run: func(ctx context.Context) error { return r.reinstall(ctx, "reinstall", imageDefault, "") }},
		{Name: "boots-disk: reboot, network boot to the disk, the image boots", Run: func(ctx context.Context) error { return r.bootsDisk(ctx, "boots-disk", `\EFI\BOOT\BOOTX64.EFI`) }},
	}
	if r.fw == harness.UEFI {
		steps = append(steps,
			harness.Step{Name: "delete-rescue: DELETE the deployment, power cycle: back in rescue", Run: func(ctx context.Context) error { return r.backToRescue(ctx, "delete") }},
			harness.Step{Name: `efi-loader-path: image without \EFI\BOOT, efiBootloaderPath \EFI\debian\grubx64.efi`, Run: r.nonDefaultLoader})
	} else {
		steps = append(steps,
			harness.Step{Name: "put-rescue: PUT bootId 2 (rescue), power cycle: back in rescue", Run: func(ctx context.Context) error { return r.backToRescue(ctx, "put") }},
			harness.Step{Name: "wrong-checksum: error, no reboot, still in rescue", Run: r.wrongChecksum})
	}
	if !harness.RunSteps(ctx, r.report, steps, r.why) {
		return
	}
	r.vm.Stop()
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

// bootIntoRescue: network boot into rescue; the agent's inventory shows
// both groups.
func (r *fwRun) bootIntoRescue(ctx context.Context) error {
	v := r.vm
	if r.fw == "uefi" {
		// The seeding boot: until iPXE starts, then power off.
		v.NICBootIndex = true
		err := v.Start()
		v.NICBootIndex = false
		if err != nil {
			return err
		}
		l, err := v.WaitConsole(ctx, 0, regexp.MustCompile(`iPXE initialising devices|iPXE \(http://ipxe\.org\)|iPXE [0-9]`), 300*time.Second)
		if err != nil {
			return fmt.Errorf("seeding boot: %w", err)
		}
		v.Stop()
		r.report.Pass("seed", "OVMF seeding boot with bootindex=1 on the NIC only, stopped at %q: BootOrder has the network first", l)
	}
	if err := v.Start(); err != nil {
		return err
	}
	t := time.Now()
	want := []struct{ re, what string }{
		{`byoi: server ` + r.server + `: booting the rescue system`, "iPXE ran the rescue script"},
		{`byoi-rescue: dhcp: eth0 10\.0\.2\.15/24`, "rescue DHCP"},
		{`byoi agent [^:]*: server ` + r.server + `, control plane http://10\.0\.2\.2:[0-9]+`, "the agent started"},
	}
	for _, w := range want {
		l, err := v.WaitConsole(ctx, 0, regexp.MustCompile(w.re), 420*time.Second)
		if err != nil {
			return err
		}
		r.report.Evidence("%s after %.0f s: %s", w.what, time.Since(t).Seconds(), l)
	}
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
}

// deployment is what a deploy step posted, for the boot checks.
type deployment struct {
	hostname, marker string
	consoleMark      int64
	logMark          int64
	taskID           int64
	esp              string // files on the ESP, seen over SSH
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

// reinstall: POST reinstall, then the task and install/status to done.
func (r *fwRun) reinstall(ctx context.Context, step, img, efiPath string) error {
	d := &deployment{hostname: fmt.Sprintf("pxe-%s-%s", r.fw, harness.RandHex(2)), marker: harness.RandHex(8), consoleMark: r.vm.ConsoleSize(), logMark: harness.FileSize(r.e.apiLog)}
	r.last = d
	var tk task
	t := time.Now()
	if err := r.c.Post("/dedicated/server/"+r.server+"/reinstall", r.reinstallBody(img, r.e.sha[img], efiPath, d.hostname, d.marker), &tk); err != nil {
		return fmt.Errorf("POST reinstall: %w", err)
	}
	d.taskID = tk.TaskID
	r.report.Evidence("POST reinstall %s (hostname %s, diskGroupId 2%s): task %d %s", img, d.hostname, map[bool]string{true: ", efiBootloaderPath " + efiPath}[efiPath != ""], tk.TaskID, tk.Status)
	final, err := r.waitTask(ctx, tk.TaskID, 900*time.Second)
	if err != nil {
		return err
	}
	if final.Status != "done" {
		return fmt.Errorf("task %d ended %s", tk.TaskID, final.Status)
	}
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
	r.report.Pass(step, "%s booted and checked %.0f s after the deployment was done", d.hostname, time.Since(t).Seconds())
	return nil
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

// backToRescue: DELETE the deployment (or PUT bootId 2), power-cycle the
// machine: it boots the rescue system again and its agent waits for a job.
func (r *fwRun) backToRescue(ctx context.Context, how string) error {
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
	if err := r.vm.PowerCycle(); err != nil {
		return fmt.Errorf("power cycle: %w", err)
	}
	t := time.Now()
	for _, w := range []struct{ re, what string }{
		{`byoi: server ` + r.server + `: booting the rescue system`, "iPXE ran the rescue script"},
		{`byoi agent [^:]*: server ` + r.server + `, control plane`, "the agent started"},
	} {
		l, err := r.vm.WaitConsole(ctx, 0, regexp.MustCompile(w.re), 420*time.Second)
		if err != nil {
			return err
		}
		r.report.Evidence("%s %.0f s after the power cycle: %s", w.what, time.Since(t).Seconds(), l)
	}
	l, err := harness.WaitFile(ctx, r.e.apiLog, logMark, regexp.MustCompile(`method=GET path=/agent/v1/servers/`+r.server+`/job status=204 .*`), 120*time.Second)
	if err != nil {
		return fmt.Errorf("the agent does not ask for a job: %w", err)
	}
	verb := map[string]string{"delete": "DELETE bringYourOwnImage", "put": "PUT bootId 2"}[how]
	r.report.Pass(how+"-rescue", "%s → bootId 2; after a power cycle the machine is in rescue and its agent waits for a job (byoi-api log: %s)", verb, l)
	return nil
}

// nonDefaultLoader: an image whose ESP has no \EFI\BOOT\BOOTX64.EFI, deployed with
// efiBootloaderPath: it boots only through the agent's boot entry.
func (r *fwRun) nonDefaultLoader(ctx context.Context) error {
	const loader = `\EFI\debian\grubx64.efi`
	if err := r.reinstall(ctx, "efi-loader-path reinstall", imageNoDefault, loader); err != nil {
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
	l, err = harness.WaitFile(ctx, r.e.apiLog, errMark, regexp.MustCompile(`method=GET path=/agent/v1/servers/`+r.server+`/job status=204 .*`), 30*time.Second)
	if err != nil {
		return fmt.Errorf("the agent does not ask for the next job: %w", err)
	}
	r.report.Pass("wrong-checksum", "no reboot for 30 s, still in rescue, the agent waits for the next job (byoi-api log: %s)", l)
	return nil
}
