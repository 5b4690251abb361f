// Command bootcheck is scripts/boot-check.sh, the boot acceptance: what
// byoi deploys really boots (UEFI and legacy BIOS) and cloud-init applies
// the ConfigDrive.
//
// It deploys the Debian test image (scripts/build-test-image.sh, cached)
// with the real `byoi deploy --job` from a file server on 127.0.0.1 onto
// blank 8 GiB sparse disks, and boots each in a QEMU (TCG) machine under
// OVMF or SeaBIOS (user-mode network, restrict=on, SSH through a hostfwd
// on 127.0.0.1). A boot passes when the user-data marker shows on the
// serial console, cloud-init finishes with the ConfigDrive datasource, the
// login prompt shows the job's hostname, cloud-init lists the job's SSH
// key, and over SSH with that key: the hostname, the marker file, the
// ConfigDrive still readable after the root partition grew, the metadata
// on the drive and in cloud-init.
//
// --acceptance runs the cases that decide: UEFI boots a reinstall-body
// deploy, BIOS a legacy-body one and the same image deployed as an OVA,
// and the check proves it can fail: a disk deployed without a ConfigDrive
// must fail on the marker, and a wrong expected hostname on the hostname.
//
// --variants runs the image checks' proofs (issue 26; variants.go says
// what passes): the test image's defective variants are named by byoi
// inspect and byoi deploy and fail to boot (or ignore the ConfigDrive) on
// an NVMe disk under OVMF, and a two-NIC server answers SSH through the
// NIC network_data.json names.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/byoi/byoi/internal/harness"
)

type config struct {
	repo, work     string
	firmware       string
	noConfigDrive  bool
	expectHostname string
	negFirmware    string
	image          string
	timeout        time.Duration
	jobShape       string
	failFast       bool
	jobs           int
	acceptance     bool
	variants       bool
	noNetNegative  bool
	byoiBin        string
	deployArgs     []string
	prepare        string // "" (byoi deploy) or "manual" (development only)
	slots          harness.Slots
}

func main() {
	var c config
	var timeout int
	flag.StringVar(&c.repo, "repo", ".", "the repository (builds byoi and the test image)")
	flag.StringVar(&c.work, "work", "", "work directory (disks, consoles, logs)")
	flag.StringVar(&c.firmware, "firmware", "both", "uefi (OVMF), bios (SeaBIOS) or both")
	flag.BoolVar(&c.noConfigDrive, "no-configdrive", false, "deploy a job without configdrive (expected to FAIL: no marker)")
	flag.StringVar(&c.expectHostname, "expect-hostname", "", "expect this hostname instead of the job's (another one: FAIL)")
	flag.StringVar(&c.negFirmware, "negative-firmware", "bios", "firmware of the negative cases of --acceptance")
	flag.StringVar(&c.image, "image", "", "the qcow2 to deploy (default: scripts/build-test-image.sh, cached)")
	flag.IntVar(&timeout, "timeout", 600, "time limit per boot, seconds (a boot takes ~100 s on an idle core under TCG, 2-4x that when the machine is busy)")
	flag.StringVar(&c.jobShape, "job-shape", "legacy", "legacy (the bringYourOwnImage body) or reinstall (operatingSystem byoi_64 + customizations)")
	flag.BoolVar(&c.failFast, "fail-fast", false, "stop a boot as soon as the login prompt shows another hostname")
	flag.IntVar(&c.jobs, "jobs", 2, "boots run at once, each QEMU -smp 1")
	flag.BoolVar(&c.acceptance, "acceptance", false, "both firmwares pass AND the two negative cases fail")
	flag.BoolVar(&c.variants, "variants", false, "the image checks' proofs: the test image's defective variants are named by byoi and fail to boot on NVMe; a two-NIC server answers through the NIC network_data.json names")
	flag.BoolVar(&c.noNetNegative, "no-network-negative", false, "--variants: skip the two-NIC boot without network_data.json (it must not answer SSH; ~1.5 boots' time)")
	flag.Parse()
	c.timeout = time.Duration(timeout) * time.Second
	c.byoiBin = os.Getenv("BYOI_BIN")
	c.deployArgs = strings.Fields(os.Getenv("BYOI_DEPLOY_ARGS"))
	c.prepare = os.Getenv("BOOT_CHECK_PREPARE")
	c.slots = harness.HostSlots()
	bad := func(msg string) { fmt.Fprintln(os.Stderr, "bootcheck: "+msg); os.Exit(2) }
	switch {
	case c.firmware != "uefi" && c.firmware != "bios" && c.firmware != "both":
		bad("--firmware must be uefi, bios or both")
	case c.jobShape != "legacy" && c.jobShape != "reinstall":
		bad("--job-shape must be legacy or reinstall")
	case c.negFirmware != "uefi" && c.negFirmware != "bios":
		bad("--negative-firmware must be uefi or bios")
	case c.work == "":
		bad("--work is required")
	case c.jobs < 1 || timeout < 1:
		bad("--jobs and --timeout must be positive")
	case c.prepare != "" && c.prepare != "manual":
		bad("unknown BOOT_CHECK_PREPARE=" + c.prepare + " (only 'manual', for development)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, c)
	stop()
	os.Exit(code)
}

var log = harness.NewLog("boot-check")

func run(ctx context.Context, c config) int {
	r := &runner{c: c}
	err := r.setup(ctx)
	if err == nil && r.c.variants {
		err = r.variantsRun(ctx)
	} else if err == nil {
		err = r.cases(ctx)
	}
	if r.srv != nil {
		r.srv.Close()
	}
	if err != nil {
		log.Say("FAIL setup: %v", err)
		return 2
	}
	log.Say("TIME total: %.0fs", log.Since().Seconds())
	if len(r.failed) == 0 {
		log.Say("RESULT: PASS")
		return 0
	}
	log.Say("RESULT: FAIL (%s)", strings.Join(r.failed, " "))
	return 1
}

// runner is one run: the image on its server, the test identity, the
// deployed disks and the verdicts.
type runner struct {
	c        config
	srv      *harness.FileServer
	image    string // the qcow2
	imageSHA string
	key      harness.Key
	keyFP    string // as cloud-init prints it
	host     string // the job's hostname
	marker   string
	byoi     string
	failed   []string
}

func (r *runner) setup(ctx context.Context) error {
	if r.c.image == "" {
		log.Info("building/looking up the test image (scripts/build-test-image.sh) ...")
		t0 := time.Now()
		img, err := harness.TestImage(ctx, r.c.repo, filepath.Join(r.c.work, "build-test-image.log"))
		if err != nil {
			return err
		}
		r.c.image = img
		log.Info("image: %s (%.0f s)", img, time.Since(t0).Seconds())
	}
	if st, err := os.Stat(r.c.image); err != nil || st.Size() == 0 {
		return fmt.Errorf("image %s not found", r.c.image)
	}
	srvDir := filepath.Join(r.c.work, "srv")
	if err := os.MkdirAll(srvDir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.EvalSymlinks(r.c.image)
	if err != nil {
		return err
	}
	if err := os.Symlink(abs, filepath.Join(srvDir, "img.qcow2")); err != nil {
		return err
	}
	r.image = abs
	if r.imageSHA, err = harness.SHA256File(abs); err != nil {
		return err
	}
	if r.srv, err = harness.ServeDir(srvDir); err != nil {
		return err
	}
	if r.key, err = harness.NewKey(ctx, filepath.Join(r.c.work, "id_ed25519"), "byoi-boot-check"); err != nil {
		return err
	}
	if r.keyFP, err = harness.CloudInitFingerprint(r.key.Public); err != nil {
		return err
	}
	r.host = "byoi-test-" + harness.RandHex(2)
	r.marker = harness.RandHex(8)
	log.Info("hostname %s, marker %s, key fingerprint %s", r.host, r.marker, r.keyFP)
	return nil
}

// cases deploys and boots what the flags ask for.
func (r *runner) cases(ctx context.Context) error {
	qcow2 := source{url: r.srv.URL() + "/img.qcow2", sha: r.imageSHA, typ: "qcow2"}
	fws := []string{r.c.firmware}
	if r.c.firmware == "both" {
		fws = []string{"uefi", "bios"}
	}
	if !r.c.acceptance {
		name, withCD := "cd", true
		if r.c.noConfigDrive {
			name, withCD = "nocd", false
		}
		disk, err := r.deploy(ctx, name, withCD, r.c.jobShape, qcow2)
		if err != nil {
			return err
		}
		want := r.c.expectHostname
		if want == "" {
			want = r.host
		}
		var bs []*boot
		for _, fw := range fws {
			bs = append(bs, &boot{name: fw, fw: fw, disk: disk, want: want, failFast: r.c.failFast})
		}
		r.boots(ctx, bs)
		for _, b := range bs {
			if len(b.fails) > 0 {
				r.failed = append(r.failed, b.name)
			}
		}
		return nil
	}
	// Both OVH job shapes boot: the legacy body under BIOS (and for the
	// negative cases), the reinstall body (operatingSystem byoi_64 +
	// customizations) under UEFI.
	diskCD, err := r.deploy(ctx, "cd", true, "legacy", qcow2)
	if err != nil {
		return err
	}
	diskNoCD, err := r.deploy(ctx, "nocd", false, "legacy", qcow2)
	if err != nil {
		return err
	}
	diskCDR, err := r.deploy(ctx, "cd-reinstall", true, "reinstall", qcow2)
	if err != nil {
		return err
	}
	// The same system as an OVA (a streamOptimized VMDK, as VMware and
	// VirtualBox export it), deployed with type "ova".
	ovaPath := filepath.Join(r.c.work, "srv", "img.ova")
	if err := makeOVA(ctx, r.image, ovaPath, filepath.Join(r.c.work, "ova")); err != nil {
		return err
	}
	ovaSHA, err := harness.SHA256File(ovaPath)
	if err != nil {
		return err
	}
	diskOVA, err := r.deploy(ctx, "ova", true, "legacy", source{url: r.srv.URL() + "/img.ova", sha: ovaSHA, typ: "ova"})
	if err != nil {
		return err
	}
	wrong := "wrong-" + harness.RandHex(2)
	uefi := &boot{name: "uefi", fw: "uefi", disk: diskCDR, want: r.host}
	bios := &boot{name: "bios", fw: "bios", disk: diskCD, want: r.host}
	ova := &boot{name: "ova", fw: "bios", disk: diskOVA, want: r.host}
	noCD := &boot{name: "negative-no-configdrive", fw: r.c.negFirmware, disk: diskNoCD, want: r.host}
	wrongHost := &boot{name: "negative-wrong-hostname", fw: r.c.negFirmware, disk: diskCD, want: wrong, failFast: true}
	r.boots(ctx, []*boot{uefi, bios, ova, noCD, wrongHost})
	for _, b := range []*boot{uefi, bios, ova} {
		if len(b.fails) > 0 {
			r.failed = append(r.failed, b.name)
		}
	}
	// negative 1: no ConfigDrive → cloud-init finishes (DataSourceNone)
	// without the marker → must fail on the marker (the boot runs until
	// cloud-init's final message).
	if noCD.failedCheck("marker") {
		log.Say("PASS acceptance: without a ConfigDrive the check fails (%s)", strings.Join(noCD.fails, " "))
	} else {
		log.Say("FAIL acceptance: without a ConfigDrive the check did not fail on the marker (%s)", orNothing(noCD.fails))
		r.failed = append(r.failed, noCD.name)
	}
	// negative 2: wrong expected hostname → must fail on the hostname
	// (stops at the login prompt).
	if wrongHost.failedCheck("hostname") {
		log.Say("PASS acceptance: a wrong expected hostname (%s) fails the check (%s)", wrong, strings.Join(wrongHost.fails, " "))
	} else {
		log.Say("FAIL acceptance: a wrong expected hostname did not fail the hostname check (%s)", orNothing(wrongHost.fails))
		r.failed = append(r.failed, wrongHost.name)
	}
	return nil
}

func orNothing(fails []string) string {
	if len(fails) == 0 {
		return "nothing failed"
	}
	return strings.Join(fails, " ")
}

// boots runs the boots, up to --jobs at once (each QEMU is -smp 1), in
// order, each once a QEMU slot is free (harness.Slots: the host's CPUs,
// shared with the other checks); their reports are printed in order when
// all are done.
func (r *runner) boots(ctx context.Context, bs []*boot) {
	sem := make(chan struct{}, r.c.jobs)
	var wg sync.WaitGroup
	for _, b := range bs {
		b.r = r
		b.report = log.NewCase(b.name)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			slot, err := r.slot(ctx, b.name)
			if err != nil {
				b.check("boot", false, "%v", err)
				b.report.Fail("boot on "+b.fw, "%s", strings.Join(b.fails, " "))
				return
			}
			defer slot.Release()
			log.Info("booting [%s] under %s (console: %s)", b.name, b.fw, filepath.Join(r.c.work, "boot-"+b.name, "console-1.log"))
			b.run(ctx)
		}()
	}
	wg.Wait()
	for _, b := range bs {
		b.report.Print()
	}
}

// slot waits for a QEMU slot for the machine name.
func (r *runner) slot(ctx context.Context, name string) (*harness.Slot, error) {
	s, err := r.c.slots.Acquire(ctx, "boot-check "+name)
	if err != nil {
		return nil, err
	}
	if s.Waited >= time.Second {
		log.Info("[%s] QEMU slot %d after waiting %.0f s", name, s.CPU, s.Waited.Seconds())
	}
	return s, nil
}
