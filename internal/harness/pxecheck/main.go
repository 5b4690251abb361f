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
// The customer's side is OVH's Go client (go-ovh) against byoi-api. The
// steps (each wait bounded; run.go):
//
//	both: rescue          the machine network-boots into rescue; its agent posts
//	                      the inventory; specifications/hardware shows both groups
//	      reinstall       POST reinstall (byoi_64, the Debian test image,
//	                      diskGroupId 2); the task and install/status reach done
//	      boots-disk      the agent reboots the machine, which network-boots, is
//	                      sent to its disk (BIOS: bootsel finds it by its GPT disk
//	                      GUID; UEFI: iPXE exits to the agent's boot entry) and
//	                      boots the image: cloud-init applies the ConfigDrive, SSH
//	                      with the key works, root and config-2 on group 2's disk
//	uefi: delete-rescue   DELETE the deployment, power cycle: rescue, the agent
//	                      waits for a job
//	      efi-loader-path an image whose ESP has no \EFI\BOOT\BOOTX64.EFI, with
//	                      efiBootloaderPath \EFI\debian\grubx64.efi: it boots
//	                      through the agent's boot entry
//	bios: put-rescue      PUT bootId 2, power cycle: rescue, the agent waits
//	      wrong-checksum  customerError with OVH's message, no reboot, rescue
//	end:  group 1's disks unchanged; no agent token on any console or in
//	      byoi-api's log
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
}

func main() {
	var c config
	var fw string
	flag.StringVar(&c.repo, "repo", ".", "the repository (its scripts build the rescue system and the test image)")
	flag.StringVar(&c.work, "work", "", "work directory (disks, consoles, logs)")
	flag.StringVar(&fw, "firmware", "both", "bios, uefi or both (in parallel)")
	flag.DurationVar(&c.total, "timeout", 25*time.Minute, "the whole run's limit")
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
	env, err := setup(ctx, c)
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
	sha      map[string]string // image name -> sha256
}

type credential struct{ ApplicationKey, ApplicationSecret, ConsumerKey string }

func setup(ctx context.Context, c config) (*env, error) {
	e := &env{c: c, sha: map[string]string{}}
	t0 := time.Now()
	byoiAPI := filepath.Join(c.work, "byoi-api")
	log.Info("building byoi-api")
	if err := harness.GoBuild(ctx, c.repo, "./cmd/byoi-api", byoiAPI, filepath.Join(c.work, "go-build.log")); err != nil {
		return e, err
	}
	log.Info("the rescue system (scripts/build-rescue.sh, cached) ...")
	rescueDir, err := harness.Rescue(ctx, c.repo, filepath.Join(c.work, "build-rescue.log"))
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
	apiPort, err := harness.FreePort()
	if err != nil {
		return e, err
	}
	e.apiURL = fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	e.bootURL = fmt.Sprintf("http://10.0.2.2:%d", apiPort)
	admin := harness.Admin{Bin: byoiAPI, DB: filepath.Join(c.work, "byoi.db")}
	if err := admin.Run(ctx, nil, "customer", "add", "pxe"); err != nil {
		return e, err
	}
	if err := admin.Run(ctx, &e.customer, "credential", "add", "--customer", "pxe"); err != nil {
		return e, err
	}
	for _, fw := range c.firmwares {
		// The operator registers the server with the MAC of the NIC it
		// boots from; the agent token printed here is not used: the
		// rescue script brings a new one.
		if err := admin.Run(ctx, nil, "server", "add", serverName(fw), "--customer", "pxe", "--mac", macOf(fw)); err != nil {
			return e, err
		}
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

// noSecrets: no agent token on any console or in byoi-api's log.
func (e *env) noSecrets(runs []*fwRun) bool {
	files := []string{e.apiLog}
	for _, r := range runs {
		if r.vm != nil {
			files = append(files, r.vm.Consoles()...)
		}
	}
	return harness.NoAgentToken(log, files)
}
