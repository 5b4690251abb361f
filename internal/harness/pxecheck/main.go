// Command pxecheck is scripts/pxe-check.sh: the whole flow on a simulated
// bare-metal server. It builds byoi-api, the rescue system
// (scripts/build-rescue.sh) and the Debian test image
// (scripts/build-test-image.sh; both cached), starts byoi-api on 127.0.0.1
// with network boot, and per firmware (SeaBIOS, OVMF) a QEMU (TCG) machine
// shaped like a server: three NVMe disks (two of one size: disk group 1;
// one smaller: group 2), a virtio NIC whose option ROM is QEMU's iPXE, the
// network first. The machine reaches the host only through QEMU's
// user-mode network: its DHCP hands iPXE the boot file
// http://10.0.2.2:PORT/boot/boot.ipxe, and 10.0.2.2 is the host's
// 127.0.0.1, where byoi-api and the image server listen.
//
// Each server has a BMC: OpenIPMI's ipmi_sim (internal/ipmisim) serving
// IPMI lanplus on 127.0.0.1, which starts the machine's QEMU on power on
// and stops it on power off (QEMU gets the BMC as the guest's KCS
// interface: ipmi-bmc-extern + isa-ipmi-kcs). The operator registers the
// server with byoi-api's CLI (server add --mac ... --bmc
// ipmi://admin@127.0.0.1:PORT, the password from a file). Apart from
// OVMF's seeding boot (the server's manufacturing, before the BMC takes
// over), the harness never powers a machine: every boot into rescue and
// every reboot after DELETE or a reboot request is byoi-api's, through the
// BMC; the agent's reboot to the disk is the guest's own (QEMU's reset,
// the same process). ipmitool -I lanplus is the independent judge of the
// power and of the boot override, with the simulator's record of what it
// was asked.
//
// The customer's side is OVH's Go client (go-ovh) against byoi-api. The
// steps (each wait bounded; run.go):
//
//	uefi: seed            OVMF's first boot with bootindex=1 on the NIC only,
//	                      until iPXE: BootOrder has the network first (the
//	                      harness's only power action, before the BMC)
//	both: power-off       the server is off: ipmitool and powerState agree
//	      rescue          POST reinstall (byoi_64, the Debian test image,
//	                      diskGroupId 2): byoi-api sets the one-time boot
//	                      device PXE and powers the server on through its BMC
//	                      (the BMC's record; ipmitool: on, no override left);
//	                      it network-boots into rescue; its agent posts the
//	                      inventory; specifications/hardware shows both groups
//	      reinstall       the task and install/status reach done
//	      boots-disk      the agent reboots the machine (QEMU's reset: the BMC
//	                      does nothing), which network-boots, is sent to its
//	                      disk (BIOS: bootsel finds it by its GPT disk GUID;
//	                      UEFI: iPXE exits to the agent's boot entry) and boots
//	                      the image: cloud-init applies the ConfigDrive, SSH
//	                      with the key works, root and config-2 on group 2's
//	                      disk
//	      booted          cloud-init phones home through the ConfigDrive's
//	                      vendor_data.json to byoi-api (10.0.2.2): the history
//	                      shows the deployment booted, with the time from done
//	uefi: delete-rescue   DELETE the deployment: byoi-api power-cycles the
//	                      server through its BMC (PXE once), once: rescue, the
//	                      agent waits for a job; ipmitool and powerState: on
//	      efi-loader-path an image whose ESP has no \EFI\BOOT\BOOTX64.EFI, with
//	                      efiBootloaderPath \EFI\debian\grubx64.efi: picked up
//	                      by the waiting agent without a power action; it boots
//	                      through the agent's boot entry and phones home
//	bios: put-rescue      PUT bootId 2 (only the next boot), then POST /reboot
//	                      (go-ovh, Terraform's order): one power cycle through
//	                      the BMC, the hardReboot task done: rescue, the agent
//	                      waits; ipmitool and powerState: on
//	      wrong-checksum  customerError with OVH's message, no reboot and no
//	                      BMC action, rescue
//	end:  group 1's disks unchanged; no agent token on any console or in
//	      byoi-api's log, nor a BMC password or a phone-home token
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/byoi/byoi/internal/harness"
)

type config struct {
	repo, work string
	firmwares  []string
	total      time.Duration
	readyFile  string
}

func main() {
	var c config
	var fw string
	flag.StringVar(&c.repo, "repo", ".", "the repository (its scripts build the rescue system and the test image)")
	flag.StringVar(&c.work, "work", "", "work directory (disks, consoles, logs)")
	flag.StringVar(&fw, "firmware", "both", "bios, uefi or both (in parallel)")
	flag.DurationVar(&c.total, "timeout", 25*time.Minute, "the whole run's limit")
	flag.StringVar(&c.readyFile, "ready-file", "", "a file written once every machine holds its QEMU slot (or the check failed before): scripts/test.sh then starts the other QEMU checks")
	flag.Parse()
	switch fw {
	case "both":
		c.firmwares = []string{harness.BIOS, harness.UEFI}
	case harness.BIOS, harness.UEFI:
		c.firmwares = []string{fw}
	default:
		fmt.Fprintln(os.Stderr, "pxecheck: --firmware must be bios, uefi or both")
		os.Exit(2)
	}
	if c.work == "" {
		fmt.Fprintln(os.Stderr, "pxecheck: --work is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, c.total)
	code := run(ctx, c)
	cancel()
	stop()
	os.Exit(code)
}

var log = harness.NewLog("pxe-check")

func run(ctx context.Context, c config) int {
	// Each machine runs only while it holds a QEMU slot (one host CPU,
	// shared with the other checks), taken first: its QEMU is pinned to
	// the slot's CPU (newServer). The slots go when the run ends.
	slots := map[string]*harness.Slot{}
	defer func() {
		for _, s := range slots {
			s.Release()
		}
	}()
	err := func() error {
		defer ready(c.readyFile)
		for _, fw := range c.firmwares {
			s, err := harness.HostSlots().Acquire(ctx, "pxe-check "+fw)
			if err != nil {
				return err
			}
			slots[fw] = s
			log.Info("[%s] QEMU slot %d (waited %.0f s)", fw, s.CPU, s.Waited.Seconds())
		}
		return nil
	}()
	if err != nil {
		log.Say("FAIL setup: %v", err)
		return 2
	}
	env, err := setup(ctx, c, slots)
	if err != nil {
		log.Say("FAIL setup: %v", err)
		if env != nil {
			env.close()
		}
		return 2
	}
	defer env.close()
	var wg sync.WaitGroup
	runs := make([]*fwRun, len(c.firmwares))
	for i, fw := range c.firmwares {
		runs[i] = newRun(env, fw)
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i].main(ctx)
			// The machine off (its BMC simulator stopped), its slot is
			// another check's while the other firmware's run goes on.
			if sv := env.servers[fw]; sv != nil {
				if sv.bmc != nil {
					sv.bmc.Close()
				}
				sv.Stop()
			}
			slots[fw].Release()
		}()
	}
	wg.Wait()
	failed := false
	log.Say("== pxe-check report")
	for _, r := range runs {
		r.report.Print()
		log.Say("TIME [%s] whole run: %.0f s", r.fw, r.took.Seconds())
		failed = failed || len(r.report.Failed()) > 0
	}
	if !env.noSecrets(runs) {
		failed = true
	}
	log.Say("TIME total (byoi-api start to the end): %.0f s", time.Since(env.started).Seconds())
	for _, r := range runs {
		r.report.PrintDetails()
	}
	if failed {
		log.Say("RESULT: FAIL")
		return 1
	}
	log.Say("RESULT: PASS")
	return 0
}

// rescueCmdline is added to the rescue kernel's command line.
//
// nvme_core.io_timeout: with QEMU 7.2's emulated NVMe (Debian 12) and
// Linux 6.1, every I/O is lost after a controller reset (the driver uses
// the queues before it sends Doorbell Buffer Config again, and QEMU leaves
// their EventIdx at the zero the driver cleared). The driver resets a
// controller when an I/O stays unanswered for io_timeout (30 s) twice,
// which a loaded host under TCG can cause: 600 s waits for a slow I/O
// instead. (A lost one is what the machines' maxcpus=2 and pinning prevent;
// the agent's watchdog reports a hang like it either way.)
// docs/pxe-findings.md.
//
// loglevel=5: the kernel's warnings (NVMe timeouts) reach the console,
// which pxe-check shows when a step fails.
const rescueCmdline = "console=ttyS0,115200 nvme_core.io_timeout=600 loglevel=5"

// Images served to the machines.
const (
	imageDefault   = "debian.qcow2"
	imageNoDefault = "debian-nodefault.qcow2"
)

// env is what both firmwares share: byoi-api, the image server, the
// customer.
type env struct {
	c        config
	apiURL   string // for go-ovh (the host side)
	bootURL  string // for the guests
	imgURL   string // guests' base URL of the image server
	api      *harness.Proc
	apiLog   string
	imgSrv   *harness.FileServer
	customer credential
	key      harness.Key
	started  time.Time
	sha      map[string]string  // image name -> sha256
	servers  map[string]*server // firmware -> its server (machine, disks, BMC)
}

type credential struct{ ApplicationKey, ApplicationSecret, ConsumerKey string }

// ready writes the ready file (if any).
func ready(path string) {
	if path != "" {
		os.WriteFile(path, []byte("ready\n"), 0o644)
	}
}

func setup(ctx context.Context, c config, slots map[string]*harness.Slot) (*env, error) {
	e := &env{c: c, sha: map[string]string{}, servers: map[string]*server{}}
	t0 := time.Now()
	apiPort, err := harness.FreePort()
	if err != nil {
		return e, err
	}
	e.apiURL = fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	e.bootURL = fmt.Sprintf("http://10.0.2.2:%d", apiPort)
	byoiAPI := filepath.Join(c.work, "byoi-api")
	log.Info("building byoi-api")
	if err := harness.GoBuild(ctx, c.repo, "./cmd/byoi-api", byoiAPI, filepath.Join(c.work, "go-build.log")); err != nil {
		return e, err
	}
	log.Info("the rescue system (scripts/build-rescue.sh, cached) ...")
	var rescueDir string
	rescueDir, err = harness.Rescue(ctx, c.repo, filepath.Join(c.work, "build-rescue.log"))
	if err != nil {
		return e, err
	}
	manifest, _ := os.ReadFile(filepath.Join(rescueDir, "manifest.txt"))
	for _, l := range strings.Split(string(manifest), "\n") {
		if s, ok := strings.CutPrefix(l, "sizes: "); ok {
			log.Info("rescue: %s (%s)", rescueDir, s)
		}
	}
	log.Info("the Debian test image (scripts/build-test-image.sh, cached) ...")
	image, err := harness.TestImage(ctx, c.repo, filepath.Join(c.work, "build-test-image.log"))
	if err != nil {
		return e, err
	}
	imgs := map[string]string{imageDefault: image}
	if slicesContains(c.firmwares, harness.UEFI) {
		nd, err := noDefaultImage(ctx, image, c.work)
		if err != nil {
			return e, err
		}
		imgs[imageNoDefault] = nd
	}
	log.Info("images: %v (setup took %.0f s)", imgs, time.Since(t0).Seconds())

	// The images, served on 127.0.0.1 (the guests: 10.0.2.2).
	srvDir := filepath.Join(c.work, "images")
	if err := os.MkdirAll(srvDir, 0o755); err != nil {
		return e, err
	}
	for name, src := range imgs {
		if err := os.Symlink(src, filepath.Join(srvDir, name)); err != nil {
			return e, err
		}
		sum, err := harness.SHA256File(src)
		if err != nil {
			return e, err
		}
		e.sha[name] = sum
	}
	if e.imgSrv, err = harness.ServeDir(srvDir); err != nil {
		return e, err
	}
	e.imgURL = e.imgSrv.GuestURL()

	// byoi-api on 127.0.0.1, network boot on.
	admin := harness.Admin{Bin: byoiAPI, DB: filepath.Join(c.work, "byoi.db")}
	if err := admin.Run(ctx, nil, "customer", "add", "pxe"); err != nil {
		return e, err
	}
	if err := admin.Run(ctx, &e.customer, "credential", "add", "--customer", "pxe"); err != nil {
		return e, err
	}
	for _, fw := range c.firmwares {
		// Each server, powered off, and its BMC.
		dir := filepath.Join(c.work, fw)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return e, err
		}
		sv, err := newServer(dir, fw, macOf(fw), e.bootURL, slots[fw].CPU)
		if err != nil {
			return e, err
		}
		e.servers[fw] = sv
		if err := sv.startBMC(ctx, dir); err != nil {
			return e, err
		}
		// The operator registers the server with the MAC of the NIC it
		// boots from and its BMC, the password from a file (never on the
		// command line; byoi-api seals it); the agent token printed here
		// is not used: the rescue script brings a new one.
		pw := filepath.Join(dir, "bmc.pw")
		if err := os.WriteFile(pw, []byte(sv.bmc.Password()+"\n"), 0o600); err != nil {
			return e, err
		}
		err = admin.Run(ctx, nil, "server", "add", serverName(fw), "--customer", "pxe", "--mac", macOf(fw), "--bmc", sv.bmc.URL(), "--password-file", pw)
		os.Remove(pw)
		if err != nil {
			return e, err
		}
		log.Info("[%s] server %s: BMC %s (ipmi_sim, powered off)", fw, serverName(fw), sv.bmc.URL())
	}
	e.apiLog = filepath.Join(c.work, "byoi-api.log")
	e.api, err = harness.StartProc(e.apiLog, byoiAPI, "serve", "--db", admin.DB, "--listen", "127.0.0.1:"+strconv.Itoa(apiPort), "-v",
		"--rescue-dir", rescueDir, "--boot-url", e.bootURL, "--rescue-cmdline", rescueCmdline)
	if err != nil {
		return e, err
	}
	e.started = time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(e.apiURL + "/boot/boot.ipxe")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return e, fmt.Errorf("byoi-api did not answer on %s within 20 s:\n%s", e.apiURL, harness.TailFile(e.apiLog, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Info("byoi-api on %s (guests: %s), images on %s", e.apiURL, e.bootURL, e.imgURL)
	if e.key, err = harness.NewKey(ctx, filepath.Join(c.work, "id_ed25519"), "byoi-pxe-check"); err != nil {
		return e, err
	}
	return e, nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// noDefaultImage is the test image with its ESP's \EFI\BOOT removed: the
// loader is then only at \EFI\debian\grubx64.efi (the image's grub.cfg
// finds the root file system either way). Cached beside the test image.
func noDefaultImage(ctx context.Context, src, work string) (string, error) {
	out := strings.TrimSuffix(src, ".qcow2") + "-nodefault.qcow2"
	err := harness.Cached(filepath.Join(filepath.Dir(src), ".nodefault.lock"), src, out, func(tmp string) error {
		log.Info("deriving %s (no \\EFI\\BOOT on the ESP) ...", filepath.Base(out))
		raw := filepath.Join(work, "nodefault.raw")
		defer os.Remove(raw)
		if _, err := harness.Run(ctx, 10*time.Minute, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, raw); err != nil {
			return err
		}
		esp, err := harness.ESPOffset(ctx, raw)
		if err != nil {
			return err
		}
		img := fmt.Sprintf("%s@@%d", raw, esp)
		if _, err := harness.Mtools(ctx, "mdeltree", "-i", img, "::/EFI/BOOT"); err != nil {
			return err
		}
		if _, err := harness.Mtools(ctx, "mdir", "-b", "-i", img, "::/EFI/debian/grubx64.efi"); err != nil {
			return fmt.Errorf("no EFI/debian/grubx64.efi on the ESP of %s: %w", src, err)
		}
		if _, err := harness.Mtools(ctx, "mdir", "-b", "-i", img, "::/EFI/BOOT"); err == nil {
			return fmt.Errorf("EFI/BOOT still on the ESP")
		}
		_, err = harness.Run(ctx, 10*time.Minute, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, tmp)
		return err
	})
	return out, err
}

func (e *env) close() {
	for _, sv := range e.servers {
		if sv.bmc != nil {
			sv.bmc.Close() // powers the machine off
		}
		sv.Stop()
	}
	if e.imgSrv != nil {
		e.imgSrv.Close()
	}
	if e.api != nil {
		e.api.Stop()
	}
}

func serverName(fw string) string { return "pxe-" + fw }

func macOf(fw string) string {
	if fw == harness.BIOS {
		return "52:54:00:b1:05:01"
	}
	return "52:54:00:ef:10:01"
}

// noSecrets: no agent token on any console or in byoi-api's log; no BMC
// password and no phone-home token (byoi_bt_...) in byoi-api's log or on
// a console either.
func (e *env) noSecrets(runs []*fwRun) bool {
	files := []string{e.apiLog}
	var pws []string
	for _, r := range runs {
		if r.vm != nil {
			files = append(files, r.vm.Consoles()...)
			if r.vm.bmc != nil {
				pws = append(pws, r.vm.bmc.Password())
			}
		}
	}
	ok := harness.NoAgentToken(log, files)
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, pw := range pws {
			if strings.Contains(string(b), pw) {
				log.Say("FAIL secrets: a BMC password shows in %s", f)
				ok = false
			}
		}
		if strings.Contains(string(b), "byoi_bt_") {
			log.Say("FAIL secrets: a phone-home token (byoi_bt_...) shows in %s", f)
			ok = false
		}
	}
	if ok {
		log.Say("PASS secrets: no BMC password and no phone-home token (byoi_bt_...) in the same %d file(s)", len(files))
	}
	return ok
}
