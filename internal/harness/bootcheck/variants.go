package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/byoi/byoi/internal/harness"
)

// --variants: the image checks' proofs (issue 26). The test image's
// defective variants (scripts/build-test-image.sh --variant fstabdev,
// nonvme, nocloud, biosonly; xfsroot for the XFS reader) are named by
// `byoi inspect` and `byoi deploy` for a UEFI server with an NVMe disk
// (the finding's catalog code and the file it names), the unmodified
// images have no finding, and each defect is shown to really stop the
// boot (or have the ConfigDrive ignored) in QEMU on an NVMe disk: each
// boot waits for the defect's first sign on the serial console (or for a
// sign that the machine went past it, which fails the proof). And a
// two-NIC server where only the second NIC has DHCP answers SSH through it
// thanks to network_data.json, and does not without it (networkData off).

// The variants' fixed MACs of the two-NIC server: the first NIC's network
// is a hub port with nothing else on it (no DHCP), the second is user-mode
// networking with the SSH hostfwd.
const (
	macNoDHCP = "52:54:00:b1:00:01"
	macDHCP   = "52:54:00:b1:00:02"
)

// finding is a finding of `byoi inspect --json` (imagecheck.Finding).
type finding struct {
	Code     string `json:"code"`
	Severity string `json:"severity"`
	File     string `json:"file"`
	Line     int    `json:"line"`
	Message  string `json:"message"`
}

// inspection is what the proofs read of `byoi inspect --json`.
type inspection struct {
	Checks *struct {
		Findings    []finding `json:"findings"`
		Filesystems []struct {
			Partition int    `json:"partition"`
			Type      string `json:"type"`
			UUID      string `json:"uuid"`
			Examined  bool   `json:"examined"`
			Mount     string `json:"mount"`
		} `json:"filesystems"`
		Kernel *struct {
			Path    string   `json:"path"`
			Version string   `json:"version"`
			Initrds []string `json:"initrds"`
		} `json:"kernel"`
		Reads int `json:"reads"`
	} `json:"checks"`
}

// problems are the findings that are not notes.
func (in *inspection) problems() []finding {
	var out []finding
	if in.Checks == nil {
		return nil
	}
	for _, f := range in.Checks.Findings {
		if f.Severity != "note" {
			out = append(out, f)
		}
	}
	return out
}

func (f finding) String() string {
	where := f.File
	if f.Line > 0 {
		where = fmt.Sprintf("%s:%d", f.File, f.Line)
	}
	return fmt.Sprintf("%s %s (%s)", f.Severity, f.Code, where)
}

func findingList(fs []finding) string {
	if len(fs) == 0 {
		return "no finding"
	}
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = f.String()
	}
	return strings.Join(s, ", ")
}

// want is an expected finding: its code, severity and file (a file
// ending in '*' is a prefix).
type want struct{ code, severity, file string }

func (w want) match(f finding) bool {
	if f.Code != w.code || f.Severity != w.severity {
		return false
	}
	if p, ok := strings.CutSuffix(w.file, "*"); ok {
		return strings.HasPrefix(f.File, p)
	}
	return f.File == w.file
}

// exactly tells whether the problems are exactly the wanted ones (each
// wanted one at least once, nothing else).
func exactly(got []finding, ws []want) bool {
	seen := make([]bool, len(ws))
	for _, f := range got {
		ok := false
		for i, w := range ws {
			if w.match(f) {
				seen[i], ok = true, true
			}
		}
		if !ok {
			return false
		}
	}
	for _, s := range seen {
		if !s {
			return false
		}
	}
	return true
}

// variantsRun is --variants.
func (r *runner) variantsRun(ctx context.Context) error {
	bin, err := r.byoiBinary(ctx)
	if err != nil {
		return err
	}
	imgs := map[string]source{"cloud": {url: r.srv.URL() + "/img.qcow2", sha: r.imageSHA, typ: "qcow2"}}
	paths := map[string]string{"cloud": r.image}
	for _, v := range []string{"generic", "fstabdev", "nonvme", "nocloud", "biosonly", "xfsroot"} {
		t0 := time.Now()
		out, err := harness.Script(ctx, r.c.repo, "build-test-image.sh", filepath.Join(r.c.work, "build-test-image-"+v+".log"), 1, "--variant", v)
		if err != nil {
			return err
		}
		p, err := filepath.EvalSymlinks(out[0])
		if err != nil {
			return err
		}
		if err := os.Symlink(p, filepath.Join(r.c.work, "srv", v+".qcow2")); err != nil {
			return err
		}
		sha, err := harness.SHA256File(p)
		if err != nil {
			return err
		}
		paths[v], imgs[v] = p, source{url: r.srv.URL() + "/" + v + ".qcow2", sha: sha, typ: "qcow2"}
		log.Info("variant %s: %s (%.0f s)", v, p, time.Since(t0).Seconds())
	}

	// 1. byoi inspect names each defect, and nothing on the unmodified
	// images.
	ins := log.NewCase("inspect")
	server := []string{"--boot-mode", "uefi", "--disk-driver", "nvme", "--configdrive"}
	inspect := func(name, image string, args []string) *inspection {
		in, err := r.inspect(ctx, bin, paths[image], args)
		if err != nil {
			ins.Fail(name, "%v", err)
			return nil
		}
		return in
	}
	expect := func(name, image string, args []string, ws ...want) *inspection {
		in := inspect(name, image, args)
		if in == nil {
			return nil
		}
		got := in.problems()
		what := "byoi inspect " + strings.Join(args, " ") + " " + image
		if len(ws) == 0 {
			ins.Check(name, in.Checks != nil && len(got) == 0, "%s: %s", what, findingList(got))
		} else {
			ins.Check(name, exactly(got, ws), "%s: %s", what, findingList(got))
		}
		for _, f := range got {
			ins.Evidence("%s: %s", f.Code, f.Message)
		}
		return in
	}
	base := expect("cloud-clean", "cloud", server)
	expect("generic-clean", "generic", server)
	expect("fstabdev", "fstabdev", server,
		want{"CheckFstabNoFail", "warn", "/etc/fstab"}, want{"CheckFstabDevName", "warn", "/etc/fstab"})
	expect("nonvme", "nonvme", server, want{"CheckDiskDriverAbsent", "refuse", "/boot/initrd.img-*"})
	expect("nonvme-on-virtio", "nonvme", []string{"--boot-mode", "uefi", "--disk-driver", "virtio_blk", "--configdrive"})
	expect("nocloud", "nocloud", server, want{"CheckDatasourceList", "warn", "/etc/cloud/cloud.cfg.d/90_byoi_test.cfg"})
	expect("nocloud-no-configdrive", "nocloud", []string{"--boot-mode", "uefi", "--disk-driver", "nvme"})
	expect("biosonly", "biosonly", server, want{"CheckUEFINoESP", "refuse", ""})
	expect("biosonly-on-legacy", "biosonly", []string{"--boot-mode", "legacy", "--disk-driver", "nvme", "--configdrive"})
	if x := expect("xfsroot", "xfsroot", server); x != nil && x.Checks != nil {
		root, ver, initrd := "", "", ""
		for _, f := range x.Checks.Filesystems {
			if f.Mount == "/" {
				root = fmt.Sprintf("partition %d %s examined=%v", f.Partition, f.Type, f.Examined)
			}
		}
		if k := x.Checks.Kernel; k != nil {
			ver = k.Version
			if len(k.Initrds) > 0 {
				initrd = k.Initrds[0]
			}
		}
		baseVer := ""
		if base != nil && base.Checks != nil && base.Checks.Kernel != nil {
			baseVer = base.Checks.Kernel.Version
		}
		ins.Check("xfsroot-read", root == "partition 1 xfs examined=true" && ver != "" && ver == baseVer && initrd != "",
			"the XFS root was read: root %s, kernel %s (the base image's: %s), initramfs %s", orNone(root, "<none>"), orNone(ver, "<none>"), baseVer, orNone(initrd, "<none>"))
		if initrd != "" {
			expect("xfsroot-initramfs", "xfsroot", []string{"--boot-mode", "uefi", "--disk-driver", "megaraid_sas"},
				want{"CheckDiskDriverAbsent", "warn", initrd})
		}
	}
	ins.Print()
	r.noteFailed(ins)

	// 2. byoi deploy: refusals before writing, warnings in the status.
	// 3. The disks it wrote boot on NVMe under OVMF, --jobs at once, each
	// as soon as its deploy is done (the longest first).
	limit := r.c.timeout
	boots := map[string]*variantBoot{
		"two-nic":     {name: "two-nic", kind: "two-nic", limit: limit},
		"two-nic-off": {name: "two-nic-off", kind: "two-nic-off", limit: limit},
		"nocloud":     {name: "nocloud", kind: "nocloud", limit: limit},
		"fstabdev": {name: "fstabdev", kind: "sign", limit: limit,
			sign: emergencyRE,
			why:  regexp.MustCompile(`vdb1|/data|emergency`)},
		"nonvme-virtio": {name: "nonvme", kind: "sign", limit: limit,
			sign: noRootRE,
			why:  regexp.MustCompile(`Gave up|ALERT|nvme|Dropping`)},
		"biosonly-legacy": {name: "biosonly", kind: "sign", limit: limit, noNIC: true,
			sign: noBootRE,
			past: regexp.MustCompile(`GRUB|Booting .Debian|Linux version|[A-Za-z0-9._-]+ login:`),
			why:  regexp.MustCompile(`BdsDxe|Boot|Shell|bootable`)},
	}
	var started []*variantBoot
	sem := make(chan struct{}, r.c.jobs)
	var wg sync.WaitGroup
	defer wg.Wait()
	t0 := time.Now()
	launch := func(key, disk string) {
		b := boots[key]
		if b == nil {
			return
		}
		b.r, b.disk, b.report = r, disk, log.NewCase(b.name)
		started = append(started, b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			slot, err := r.slot(ctx, b.name)
			if err != nil {
				b.report.Fail("boot", "%v", err)
				return
			}
			defer slot.Release()
			b.run(ctx)
		}()
	}

	dep := log.NewCase("deploy")
	type deployCase struct {
		name, image string
		args        []string
		refuse      string   // the code the deploy must refuse with ("" : it must deploy)
		warns       []string // codes it must warn with (exactly these)
		networkOff  bool
	}
	inv, err := r.twoNICInventory()
	if err != nil {
		return err
	}
	uefiNVMe := []string{"--boot-mode", "uefi", "--disk-driver", "nvme"}
	cases := []deployCase{
		{name: "two-nic", image: "cloud", args: []string{"--inventory", inv}},
		{name: "two-nic-off", image: "cloud", args: []string{"--inventory", inv}, networkOff: true},
		{name: "nocloud", image: "nocloud", args: uefiNVMe, warns: []string{"CheckDatasourceList"}},
		{name: "fstabdev", image: "fstabdev", args: uefiNVMe, warns: []string{"CheckFstabNoFail", "CheckFstabDevName"}},
		// A staged qcow2 has every check before writing: the filesystems'
		// refusals leave the disk untouched. Streamed (the default where the
		// layout allows), they run after the write and before the commit
		// and are warnings, as for raw (README, "The image checks").
		{name: "nonvme", image: "nonvme", args: append([]string{"--qcow2-staging"}, uefiNVMe...), refuse: "CheckDiskDriverAbsent"},
		{name: "nonvme-streamed", image: "nonvme", args: uefiNVMe, warns: []string{"CheckDiskDriverAbsent"}},
		{name: "nonvme-virtio", image: "nonvme", args: []string{"--boot-mode", "uefi", "--disk-driver", "virtio_blk"}},
		{name: "biosonly", image: "biosonly", args: uefiNVMe, refuse: "CheckUEFINoESP"},
		{name: "biosonly-legacy", image: "biosonly", args: []string{"--boot-mode", "legacy", "--disk-driver", "nvme"}},
		{name: "fstabdev-strict", image: "fstabdev", args: append([]string{"--qcow2-staging", "--image-checks", "strict"}, uefiNVMe...), refuse: "CheckStrict"},
	}
	for _, c := range cases {
		if c.networkOff && r.c.noNetNegative {
			log.Say("SKIP [two-nic-off]: --no-network-negative (the boot without network_data.json is not run)")
			continue
		}
		disk, res, err := r.deployVariant(ctx, bin, c.name, imgs[c.image], c.networkOff, c.args)
		if err != nil {
			return err
		}
		what := fmt.Sprintf("byoi deploy %s (%s, %.0f s)", strings.Join(c.args, " "), c.image, res.elapsed.Seconds())
		if c.refuse != "" {
			untouched := allocated(disk) == 0
			dep.Check(c.name, res.exit != 0 && res.errCode == c.refuse && untouched,
				"%s refuses with %s: exit %d, %s (disk untouched: %v)", what, c.refuse, res.exit, orNone(res.errCode, "no error code"), untouched)
			dep.Evidence("%s", res.errMsg)
			continue
		}
		sort.Strings(c.warns)
		got := append([]string(nil), res.warns...)
		sort.Strings(got)
		ok := dep.Check(c.name, res.exit == 0 && res.done && strings.Join(got, " ") == strings.Join(c.warns, " "),
			"%s deploys: exit %d, warnings [%s] (want [%s])", what, res.exit, strings.Join(got, " "), strings.Join(c.warns, " "))
		for _, m := range res.warnMsgs {
			dep.Evidence("warning: %s", m)
		}
		if res.exit == 0 && res.done {
			launch(c.name, disk)
		} else if b := boots[c.name]; b != nil && !ok {
			dep.Fail(b.name+"-boot", "not booted: its deploy failed")
		}
	}
	dep.Print()
	r.noteFailed(dep)
	wg.Wait()
	for _, b := range started {
		b.report.Print()
		b.report.PrintDetails()
		r.noteFailed(b.report)
	}
	log.Say("TIME variant deploys and boots: %.0f s (%d machines, %d at once)", time.Since(t0).Seconds(), len(started), r.c.jobs)
	return nil
}

func (r *runner) noteFailed(c *harness.Case) {
	for _, f := range c.Failed() {
		r.failed = append(r.failed, c.Name+":"+f)
	}
}

// inspect runs `byoi inspect --json ARGS IMAGE`.
func (r *runner) inspect(ctx context.Context, bin, image string, args []string) (*inspection, error) {
	out, err := harness.Output(ctx, 5*time.Minute, bin, append(append([]string{"inspect", "--json"}, args...), image)...)
	if err != nil {
		return nil, err
	}
	var in inspection
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		return nil, fmt.Errorf("byoi inspect --json: %w", err)
	}
	if in.Checks == nil {
		return nil, fmt.Errorf("byoi inspect --json: no checks in the report")
	}
	return &in, nil
}

// twoNICInventory writes the two-NIC server's inventory, as the agent
// would report it: UEFI, an NVMe disk, two virtio NICs, booted from the
// second one (BOOTIF).
func (r *runner) twoNICInventory() (string, error) {
	inv := map[string]any{
		"bootMode":   "uefi",
		"diskGroups": []map[string]any{},
		"disks":      []map[string]any{{"name": "nvme0n1", "diskGroupId": 1, "size": int64(8 << 30), "driver": "nvme"}},
		"nics": []map[string]any{
			{"name": "ens2", "mac": macNoDHCP, "driver": "virtio_net"},
			{"name": "ens5", "mac": macDHCP, "driver": "virtio_net"},
		},
		"bootMac": macDHCP,
	}
	b, _ := json.MarshalIndent(inv, "", " ")
	p := filepath.Join(r.c.work, "inventory-two-nic.json")
	return p, os.WriteFile(p, b, 0o644)
}

// deployResult is what a `byoi deploy --json` did.
type deployResult struct {
	exit     int
	done     bool
	errCode  string
	errMsg   string
	warns    []string // the warnings' codes
	warnMsgs []string
	elapsed  time.Duration
}

// deployVariant deploys src (the legacy job body with a ConfigDrive) onto
// a new blank 8 GiB disk with `byoi deploy --json ARGS` and reads its
// status events. A deploy that cannot run at all is an error; one that
// refuses is a result.
func (r *runner) deployVariant(ctx context.Context, bin, name string, src source, networkOff bool, args []string) (string, deployResult, error) {
	var res deployResult
	disk := filepath.Join(r.c.work, "disk-"+name+".img")
	jobPath := filepath.Join(r.c.work, "job-"+name+".json")
	j := r.job(true, "legacy", src)
	if networkOff {
		j["networkData"] = "off"
	}
	b, _ := json.MarshalIndent(j, "", " ")
	if err := os.WriteFile(jobPath, b, 0o600); err != nil {
		return "", res, err
	}
	if err := harness.MakeSparse(disk, 8<<30); err != nil {
		return "", res, err
	}
	logPath := filepath.Join(r.c.work, "deploy-"+name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return "", res, err
	}
	defer lf.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, append([]string{"deploy", "--json", "--job", jobPath, "--disk", disk}, args...)...)
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", res, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return "", res, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fmt.Fprintf(lf, "event: %s\n", sc.Text())
		var e struct {
			Status, Kind, Code, Message string
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		switch {
		case e.Status == "done":
			res.done = true
		case e.Status == "error":
			res.errCode, res.errMsg = e.Code, e.Message
		case e.Kind == "warning":
			res.warns = append(res.warns, e.Code)
			res.warnMsgs = append(res.warnMsgs, e.Code+": "+e.Message)
		}
	}
	err = cmd.Wait()
	res.elapsed = time.Since(t0)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.exit = ee.ExitCode()
	} else if err != nil {
		return "", res, fmt.Errorf("byoi deploy[%s]: %w", name, err)
	}
	if res.exit != 0 && res.errCode == "" {
		return "", res, fmt.Errorf("byoi deploy[%s] failed without an error event (exit %d):\n%s", name, res.exit, harness.TailFile(logPath, 20))
	}
	log.Info("deploy[%s]: exit %d, %s in %.0f s", name, res.exit, orNone(res.errCode, "done"), res.elapsed.Seconds())
	return disk, res, nil
}

// allocated is the bytes a sparse file holds (0: nothing was written).
func allocated(path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return -1
	}
	return st.Blocks * 512
}

// sshProbe tries an SSH login tries times, each bounded by limit (the
// connection and the banner: ConnectTimeout), and returns the last
// output; err nil when a login worked.
func sshProbe(ctx context.Context, key harness.Key, port int, user string, tries int, limit time.Duration) (string, error) {
	var out []byte
	var err error
	for i := 0; i < tries; i++ {
		if i > 0 && harness.Sleep(ctx, 5*time.Second) != nil {
			break
		}
		cctx, cancel := context.WithTimeout(ctx, limit+5*time.Second)
		cmd := exec.CommandContext(cctx, "ssh", "-i", key.Private, "-p", fmt.Sprint(port),
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
			"-o", fmt.Sprintf("ConnectTimeout=%d", int(limit.Seconds())), "-o", "LogLevel=ERROR", user+"@127.0.0.1", "true")
		out, err = cmd.CombinedOutput()
		cancel()
		if err == nil {
			return string(out), nil
		}
	}
	return string(out), fmt.Errorf("ssh: %v", err)
}

// variantBoot is one boot of the --variants proofs, on an NVMe disk under
// OVMF.
type variantBoot struct {
	name, kind, disk string
	limit            time.Duration
	noNIC            bool
	// sign is the defect's first sign on the console; past a sign the
	// boot went past it (a login prompt by default); why the lines shown
	// as evidence.
	sign, past, why *regexp.Regexp
	r               *runner
	report          *harness.Case
}

// The defects' first signs on the console.
var (
	// systemd gave up on a mount the boot needs.
	emergencyRE = regexp.MustCompile(`You are in emergency mode|Cannot open access to console, the root account is locked`)
	// initramfs-tools found no root device.
	noRootRE = regexp.MustCompile(`Gave up waiting for root|ALERT! .* does not exist`)
	// OVMF could not boot the NVMe disk.
	noBootRE = regexp.MustCompile(`failed to load Boot[0-9A-F]+ "UEFI QEMU NVMe[^"]*".*Not Found|No bootable option|UEFI Interactive Shell`)
	loginRE  = regexp.MustCompile(`[A-Za-z0-9._-]+ login:`)
)

func (b *variantBoot) run(ctx context.Context) {
	r := b.r
	dir := filepath.Join(r.c.work, "boot-"+b.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.report.Fail("boot", "%v", err)
		return
	}
	overlay := filepath.Join(dir, "overlay.qcow2")
	if _, err := harness.Run(ctx, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", "-b", b.disk, "-F", "raw", overlay); err != nil {
		b.report.Fail("boot", "%v", err)
		return
	}
	port, err := harness.FreePort()
	if err != nil {
		b.report.Fail("boot", "%v", err)
		return
	}
	m := &harness.Machine{Name: b.name, Dir: dir, Firmware: harness.UEFI, Memory: 1024, NoReboot: true, HostCPU: -1,
		NetDev:  fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
		NIC:     "virtio-net-pci,netdev=n0,romfile=",
		Devices: []string{"virtio-rng-pci"},
		Drives:  []harness.Drive{{File: overlay, Format: "qcow2", Device: "nvme,serial=byoi-" + b.name + ",bootindex=1"}}}
	switch {
	case b.noNIC:
		m.NetDev, m.NIC, m.Extra = "", "", []string{"-nic", "none"}
	case strings.HasPrefix(b.kind, "two-nic"):
		// The first NIC on a hub port with nothing else on it: no DHCP,
		// no packet goes anywhere. The second on user-mode networking.
		m.NetDev = "hubport,id=n0,hubid=0"
		m.NIC = "virtio-net-pci,netdev=n0,romfile=,mac=" + macNoDHCP
		m.Extra = []string{"-netdev", fmt.Sprintf("user,id=n1,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
			"-device", "virtio-net-pci,netdev=n1,romfile=,mac=" + macDHCP}
	}
	if err := m.PrepareUEFIVars(); err != nil {
		b.report.Fail("boot", "%v", err)
		return
	}
	log.Info("[%s] booting under OVMF on NVMe (console %s, limit %s)", b.name, filepath.Join(dir, "console-1.log"), b.limit)
	t0 := time.Now()
	if err := m.Start(); err != nil {
		b.report.Fail("boot", "%v", err)
		return
	}
	defer m.Stop()
	switch b.kind {
	case "sign":
		b.waitSign(ctx, m, t0)
	case "nocloud":
		b.noCloud(ctx, m, t0)
	case "two-nic":
		b.twoNIC(ctx, m, t0, port)
	case "two-nic-off":
		b.twoNICOff(ctx, m, t0, port)
	}
	m.Stop()
	b.report.Time("boot (until decided)", time.Since(t0))
	if len(b.report.Failed()) > 0 {
		b.report.Detail(fmt.Sprintf("last 40 console lines of %s:\n%s", m.Console(), harness.TailFile(m.Console(), 40)))
	}
}

// waitFor waits until one of the regexps matches the console, QEMU
// exits, or the limit: it returns the index of the first that matched
// (-1: none) and its line.
func waitFor(ctx context.Context, m *harness.Machine, limit time.Duration, res ...*regexp.Regexp) (int, string) {
	deadline := time.Now().Add(limit)
	for {
		s := harness.Searchable(m.Console(), 0)
		for i, re := range res {
			if re == nil {
				continue
			}
			if l := re.FindString(s); l != "" {
				return i, harness.LineOf(s, l)
			}
		}
		if !m.Running() || time.Now().After(deadline) || harness.Sleep(ctx, time.Second) != nil {
			return -1, ""
		}
	}
}

// waitSign: the defect's sign must show before any sign of a boot that
// went past it.
func (b *variantBoot) waitSign(ctx context.Context, m *harness.Machine, t0 time.Time) {
	past := b.past
	if past == nil {
		past = loginRE
	}
	i, line := waitFor(ctx, m, b.limit, b.sign, past)
	el := time.Since(t0).Seconds()
	switch i {
	case 0:
		b.report.Pass("defect-stops-boot", "after %.0f s the console shows %q", el, line)
		b.report.Evidence("console lines about it:\n%s", harness.GrepTail(m.Console(), b.why, 8))
	case 1:
		b.report.Fail("defect-stops-boot", "after %.0f s the machine went past the defect: %q", el, line)
	default:
		b.report.Fail("defect-stops-boot", "no /%s/ on the console after %.0f s (QEMU running: %v)", b.sign, el, m.Running())
	}
}

var (
	ciFinalRE = regexp.MustCompile(`Cloud-init v\. \S+ finished at .*Datasource (\S+)`)
	// cloud-init's final stage is over: its final message, or its
	// refusal to run without a datasource.
	ciFinalStageRE = regexp.MustCompile(`Cloud-init v\. \S+ finished at .*|Can not apply stage final, no datasource found.*`)
)

// noCloud: cloud-init runs, without the ConfigDrive: another datasource
// or none, no marker, not the job's hostname.
func (b *variantBoot) noCloud(ctx context.Context, m *harness.Machine, t0 time.Time) {
	r := b.r
	i, line := waitFor(ctx, m, b.limit, ciFinalStageRE)
	el := time.Since(t0).Seconds()
	if !b.report.Check("cloud-init-ran", i == 0, "after %.0f s cloud-init's final stage says %q", el, orNone(line, "<nothing>")) {
		return
	}
	ds := "none"
	if sm := ciFinalRE.FindStringSubmatch(line); sm != nil {
		ds = strings.TrimSuffix(sm[1], ".")
	}
	b.report.Check("configdrive-ignored", !strings.Contains(ds, "ConfigDrive"), "cloud-init's datasource is %s, not the ConfigDrive", ds)
	// The login prompt comes with or soon after the final stage.
	_, prompt := waitFor(ctx, m, 60*time.Second, loginRE)
	prompt = loginRE.FindString(prompt)
	clog := harness.Searchable(m.Console(), 0)
	b.report.Check("marker-not-run", !strings.Contains(clog, "BYOI-MARKER "+r.marker), "the ConfigDrive's user data (marker %s) did not run", r.marker)
	b.report.Check("hostname-not-applied", prompt != "" && !strings.Contains(prompt, r.host+" login:"), "the login prompt is %q, not %s's", orNone(prompt, "<none>"), r.host)
	b.report.Evidence("console lines about it:\n%s", harness.GrepTail(m.Console(), regexp.MustCompile(`[Dd]ata[Ss]ource|NoCloud|datasource`), 6))
}

var ciNetRE = regexp.MustCompile(`ci-info: \|.*(52:54:00:b1|10\.0\.2\.15)`)

// ciNICRE is a row of cloud-init's "Net device info" table for a MAC
// (printed once cloud-init's network stage brought the network up).
func ciNICRE(mac string) *regexp.Regexp {
	return regexp.MustCompile(`ci-info: \|[^|]*\|[^|]*\|[^|]*\|[^|]*\|[^|]*\| ` + regexp.QuoteMeta(mac) + ` \|`)
}

// ciRows are the "Net device info" rows of a MAC on the console.
func ciRows(m *harness.Machine, mac string) string {
	var rows []string
	re := ciNICRE(mac)
	for _, l := range strings.Split(harness.Searchable(m.Console(), 0), "\n") {
		if re.MatchString(l) {
			rows = append(rows, strings.TrimSpace(l[strings.Index(l, "ci-info:"):]))
		}
	}
	return strings.Join(rows, " / ")
}

// twoNICScript looks at the two-NIC server's network from inside.
const twoNICScript = `echo "HOST=$(hostname)"
for d in /sys/class/net/*; do
  n=${d##*/}; [ "$n" = lo ] && continue
  echo "NIC_$(cat $d/address | tr -d :)=$n $(ip -4 -o addr show dev $n | awk '{print $4}' | tr '\n' ' ')"
done
dev=$(sudo blkid -t LABEL=config-2 -o device | head -1)
sudo mkdir -p /run/byoi-cd && sudo mount -o ro "$dev" /run/byoi-cd 2>/dev/null \
  && echo "NETDATA=$(sudo cat /run/byoi-cd/openstack/latest/network_data.json | tr -d ' \n')" && sudo umount /run/byoi-cd
echo "ROOT=$(findmnt -no SOURCE /)"
`

// twoNIC: the deployed Debian answers SSH through the second NIC, the one
// network_data.json names. Decided once cloud-init's network stage
// printed its table of NICs (then sshd starts: SSH is retried).
func (b *variantBoot) twoNIC(ctx context.Context, m *harness.Machine, t0 time.Time, port int) {
	r := b.r
	i, _ := waitFor(ctx, m, b.limit, ciNICRE(macDHCP))
	el := time.Since(t0).Seconds()
	rows := ciRows(m, macDHCP)
	if !b.report.Check("cloud-init-network", i == 0 && strings.Contains(rows, "10.0.2.15"), "after %.0f s cloud-init's NIC table shows %s with the DHCP address: %s", el, macDHCP, orNone(rows, "<no row>")) {
		return
	}
	b.report.Evidence("cloud-init's NIC table:\n%s", harness.GrepTail(m.Console(), ciNetRE, 6))
	out, err := harness.SSH(ctx, r.key, port, "debian", twoNICScript, 12)
	if !b.report.Check("ssh", err == nil, "ssh debian@127.0.0.1:%d (the second NIC's hostfwd) works after %.0f s (%v)", port, time.Since(t0).Seconds(), err) {
		return
	}
	v := harness.Values(out)
	b.report.Evidence("%s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "\n    "))
	second, first := v["NIC_"+strings.ReplaceAll(macDHCP, ":", "")], v["NIC_"+strings.ReplaceAll(macNoDHCP, ":", "")]
	b.report.Check("hostname", v["HOST"] == r.host, "hostname over ssh is %s", r.host)
	b.report.Check("second-nic-dhcp", strings.Contains(second, "10.0.2.15/"), "the NIC %s has the DHCP address: %q", macDHCP, second)
	b.report.Check("first-nic-unconfigured", first != "" && !strings.Contains(first, "."), "the NIC %s (no DHCP on its network) has no IPv4 address: %q", macNoDHCP, first)
	b.report.Check("network-data", strings.Contains(v["NETDATA"], `"ethernet_mac_address":"`+macDHCP+`"`) && !strings.Contains(v["NETDATA"], macNoDHCP) && strings.Contains(v["NETDATA"], `"ipv4_dhcp"`),
		"the ConfigDrive's network_data.json gives %s (the inventory's bootMac) DHCP, and nothing else: %s", macDHCP, v["NETDATA"])
}

// twoNICOff: without network_data.json (networkData off) cloud-init's
// fallback configures the first NIC it finds, which has no DHCP: SSH
// through the second does not answer. Decided once cloud-init's network
// stage printed its table of NICs (the network as it stays: nothing
// configures the second NIC later).
func (b *variantBoot) twoNICOff(ctx context.Context, m *harness.Machine, t0 time.Time, port int) {
	r := b.r
	i, _ := waitFor(ctx, m, b.limit, ciNICRE(macDHCP))
	el := time.Since(t0).Seconds()
	rows := ciRows(m, macDHCP)
	if !b.report.Check("cloud-init-network", i == 0 && !strings.Contains(rows, "10.0.2.15"), "after %.0f s cloud-init's NIC table shows %s without an address: %s", el, macDHCP, orNone(rows, "<no row>")) {
		return
	}
	b.report.Evidence("cloud-init's NIC table:\n%s", harness.GrepTail(m.Console(), ciNetRE, 6))
	t1 := time.Now()
	out, err := sshProbe(ctx, r.key, port, "debian", 2, 10*time.Second)
	b.report.Check("no-ssh", err != nil, "ssh debian@127.0.0.1:%d does not answer (2 tries, %.0f s): %s", port, time.Since(t1).Seconds(), orNone(strings.TrimSpace(out), fmt.Sprint(err)))
}
