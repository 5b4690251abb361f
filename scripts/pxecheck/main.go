// Command pxecheck is the orchestrator of scripts/pxe-check.sh: the whole
// flow on a simulated bare-metal server. It starts byoi-api on 127.0.0.1
// with network boot, and per firmware (SeaBIOS, OVMF) a QEMU (TCG) machine
// shaped like a server: three NVMe disks (two of one size: disk group 1;
// one smaller: group 2), a virtio NIC whose option ROM is QEMU's iPXE, the
// network first. The machine reaches the host only through QEMU's
// user-mode network: its DHCP hands iPXE the boot file
// http://10.0.2.2:PORT/boot/boot.ipxe, and 10.0.2.2 is the host's
// 127.0.0.1, where byoi-api and the image server listen.
//
// The customer's side is OVH's Go client (go-ovh) against byoi-api. Steps
// (each wait bounded; see run.go):
//
//  1. the machine network-boots into rescue; its agent posts the
//     inventory; specifications/hardware shows both disk groups;
//  2. POST reinstall (byoi_64, the Debian test image, storage diskGroupId
//     2); the task and install/status reach done;
//  3. the agent reboots the machine, which network-boots again, is sent to
//     its disk and boots the image: cloud-init applies the ConfigDrive,
//     SSH with the key works, the root file system is on group 2's disk;
//  4. (UEFI) an image whose ESP has no \EFI\BOOT\BOOTX64.EFI, with
//     efiBootloaderPath: it boots through the agent's boot entry;
//  5. (UEFI: DELETE; BIOS: PUT bootId 2) and a power cycle: back in rescue, the
//     agent waits for a job;
//  6. (BIOS) a wrong checksum: error with OVH's message, task
//     customerError, no reboot, the console shows it;
//
// and at the end group 1's disks are unchanged and no agent token shows on
// a console or in byoi-api's log.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type config struct {
	byoiAPI, rescueDir, image, imageNoDefault, work string
	firmwares                                       []string
	total                                           time.Duration
}

func main() {
	var c config
	var fw string
	flag.StringVar(&c.byoiAPI, "byoi-api", "", "the byoi-api binary")
	flag.StringVar(&c.rescueDir, "rescue-dir", "", "the rescue system (vmlinuz, initrd.img)")
	flag.StringVar(&c.image, "image", "", "the Debian test image (qcow2)")
	flag.StringVar(&c.imageNoDefault, "image-nodefault", "", "the same image without \\EFI\\BOOT on its ESP (qcow2)")
	flag.StringVar(&c.work, "work", "", "work directory (disks, consoles, logs)")
	flag.StringVar(&fw, "firmware", "both", "bios, uefi or both (in parallel)")
	flag.DurationVar(&c.total, "timeout", 25*time.Minute, "the whole run's limit")
	flag.Parse()
	switch fw {
	case "both":
		c.firmwares = []string{"bios", "uefi"}
	case "bios", "uefi":
		c.firmwares = []string{fw}
	default:
		fmt.Fprintln(os.Stderr, "pxecheck: --firmware must be bios, uefi or both")
		os.Exit(2)
	}
	if c.byoiAPI == "" || c.rescueDir == "" || c.image == "" || c.work == "" || (c.imageNoDefault == "" && fw != "bios") {
		fmt.Fprintln(os.Stderr, "pxecheck: --byoi-api, --rescue-dir, --image, --image-nodefault and --work are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, c.total)
	code := run(ctx, c)
	cancel()
	stop()
	os.Exit(code)
}

// out prints the report's lines, from both firmwares' goroutines.
var outMu sync.Mutex

func say(format string, a ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", a...)
}

var t0 = time.Now()

func info(format string, a ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stderr, "[pxe-check %5.0fs] %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, a...))
}

func run(ctx context.Context, c config) int {
	env, err := setup(ctx, c)
	if err != nil {
		say("FAIL setup: %v", err)
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
	say("== pxe-check report")
	for _, r := range runs {
		for _, l := range r.results {
			say("%s", l)
		}
		say("TIME [%s] whole run: %.0f s", r.fw, r.took.Seconds())
		failed = failed || r.failed
	}
	if !env.noSecrets(runs) {
		failed = true
	}
	say("TIME total (byoi-api start to the end): %.0f s", time.Since(env.started).Seconds())
	for _, r := range runs {
		if len(r.details) > 0 {
			say("== why [%s] failed", r.fw)
			for _, d := range r.details {
				say("%s", d)
			}
		}
	}
	if failed {
		say("RESULT: FAIL")
		return 1
	}
	say("RESULT: PASS")
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
// instead. (A lost one is what vm.start's maxcpus=2 and pinning prevent; the agent's
// watchdog reports a hang like it either way.) docs/pxe-findings.md.
//
// loglevel=5: the kernel's warnings (NVMe timeouts) reach the console,
// which pxe-check shows when a step fails.
const rescueCmdline = "console=ttyS0,115200 nvme_core.io_timeout=600 loglevel=5"

// env is what both firmwares share: byoi-api, the image server, the
// customer.
type env struct {
	c        config
	apiPort  int
	apiURL   string // for go-ovh (the host side)
	bootURL  string // for the guests
	imgURL   string // guests' base URL of the image server
	api      *proc
	apiLog   string
	imgSrv   *http.Server
	customer credential
	sshKey   string // private key file
	sshPub   string
	started  time.Time
	sha      map[string]string // image name -> sha256
}

type credential struct{ ApplicationKey, ApplicationSecret, ConsumerKey string }

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func setup(ctx context.Context, c config) (*env, error) {
	e := &env{c: c, sha: map[string]string{}}
	// The images, served on 127.0.0.1 (the guests: 10.0.2.2).
	srvDir := filepath.Join(c.work, "images")
	if err := os.MkdirAll(srvDir, 0o755); err != nil {
		return e, err
	}
	imgs := map[string]string{"debian.qcow2": c.image}
	if c.imageNoDefault != "" {
		imgs["debian-nodefault.qcow2"] = c.imageNoDefault
	}
	for name, src := range imgs {
		if err := os.Symlink(src, filepath.Join(srvDir, name)); err != nil {
			return e, err
		}
		sum, err := sha256File(src)
		if err != nil {
			return e, err
		}
		e.sha[name] = sum
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return e, err
	}
	e.imgSrv = &http.Server{Handler: http.FileServer(http.Dir(srvDir)), ReadHeaderTimeout: 10 * time.Second}
	go e.imgSrv.Serve(ln)
	e.imgURL = fmt.Sprintf("http://10.0.2.2:%d", ln.Addr().(*net.TCPAddr).Port)

	// byoi-api on 127.0.0.1, network boot on.
	if e.apiPort, err = freePort(); err != nil {
		return e, err
	}
	e.apiURL = fmt.Sprintf("http://127.0.0.1:%d", e.apiPort)
	e.bootURL = fmt.Sprintf("http://10.0.2.2:%d", e.apiPort)
	db := filepath.Join(c.work, "byoi.db")
	if _, err := adminJSON(ctx, c.byoiAPI, "customer", "add", "pxe", "--db", db); err != nil {
		return e, err
	}
	var cred credential
	if err := adminInto(ctx, c.byoiAPI, &cred, "credential", "add", "--customer", "pxe", "--db", db); err != nil {
		return e, err
	}
	e.customer = cred
	for _, fw := range c.firmwares {
		// The operator registers the server with the MAC of the NIC it
		// boots from; the agent token printed here is not used: the
		// rescue script brings a new one.
		if _, err := adminJSON(ctx, c.byoiAPI, "server", "add", serverName(fw), "--customer", "pxe", "--mac", macOf(fw), "--db", db); err != nil {
			return e, err
		}
	}
	e.apiLog = filepath.Join(c.work, "byoi-api.log")
	e.api, err = startProc(c.byoiAPI, e.apiLog, "serve", "--db", db, "--listen", "127.0.0.1:"+strconv.Itoa(e.apiPort), "-v",
		"--rescue-dir", c.rescueDir, "--boot-url", e.bootURL, "--rescue-cmdline", rescueCmdline)
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
			return e, fmt.Errorf("byoi-api did not answer on %s within 20 s:\n%s", e.apiURL, tailFile(e.apiLog, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	info("byoi-api on %s (guests: %s), images on %s", e.apiURL, e.bootURL, e.imgURL)

	e.sshKey = filepath.Join(c.work, "id_ed25519")
	if out, err := runCmd(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "byoi-pxe-check", "-f", e.sshKey); err != nil {
		return e, fmt.Errorf("ssh-keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(e.sshKey + ".pub")
	if err != nil {
		return e, err
	}
	e.sshPub = strings.TrimSpace(string(pub))
	return e, nil
}

func (e *env) close() {
	if e.imgSrv != nil {
		e.imgSrv.Close()
	}
	if e.api != nil {
		e.api.stop()
	}
}

func serverName(fw string) string { return "pxe-" + fw }

func macOf(fw string) string {
	if fw == "bios" {
		return "52:54:00:b1:05:01"
	}
	return "52:54:00:ef:10:01"
}

// noSecrets: no agent token (they all start byoi_ag_) on any console or
// in byoi-api's log.
func (e *env) noSecrets(runs []*fwRun) bool {
	ok := true
	files := []string{e.apiLog}
	for _, r := range runs {
		files = append(files, r.vm.consolePaths()...)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		s := string(b)
		if strings.Contains(s, "byoi_ag_") || strings.Contains(s, "byoi.token=") {
			say("FAIL secrets: an agent token shows in %s", f)
			ok = false
		}
	}
	if ok {
		say("PASS secrets: no agent token (byoi_ag_..., byoi.token=) on %d console(s) or in byoi-api's log", len(files)-1)
	}
	return ok
}
