// Command hwcheck is scripts/hw-check.sh: the rescue system on a matrix of
// emulated server hardware (QEMU, TCG, SeaBIOS, user-mode network only).
// Each machine network-boots the rescue through its NIC's iPXE ROM
// (ipxe-qemu), its agent reports to byoi-api on 127.0.0.1, and the
// inventory must show the NIC's driver, every disk behind its controller
// with the controller's driver, and the disk groups. One more machine
// boots the rescue directly into its fallback shell with a USB keyboard on
// qemu-xhci (PS/2 off) and a SCSI controller whose driver is left out of
// the rescue on purpose: the keyboard types a command into the shell on
// tty1 (QMP send-key), and the console reports the controller unclaimed.
// Machines run two at a time; rescue boots only.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/byoi/byoi/internal/harness"
)

var log = harness.NewLog("hw-check")

// machine is one row of the matrix.
type machine struct {
	name    string
	nic     string // QEMU NIC model (its iPXE ROM is QEMU's default)
	mac     string
	devices []string        // controllers, in order
	drives  []harness.Drive // their disks (Device names the bus)
	sizes   map[int64]string
	// want: NIC drivers accepted, disk drivers expected (one disk each
	// unless counted), disk groups expected.
	nicDrivers  []string
	diskDrivers map[string]int
	groups      int
	// deploy: a full deployment of the generic-kernel test image onto
	// disk group 1, then its boot from that disk.
	deploy bool
}

func matrix(dir string) []*machine {
	return []*machine{
		{name: "e1000-megasas-mptsas-lsi", nic: "e1000", mac: "52:54:00:a0:00:01",
			devices: []string{"megasas-gen2,id=raid0", "mptsas1068,id=hba1", "lsi53c895a,id=scsi2"},
			drives: []harness.Drive{
				{File: "raid-a", Device: "scsi-hd,bus=raid0.0,scsi-id=0,vendor=DELL,product=PERC H730P Mini"},
				{File: "raid-b", Device: "scsi-hd,bus=raid0.0,scsi-id=1,vendor=DELL,product=PERC H730P Mini"},
				{File: "mpt", Device: "scsi-hd,bus=hba1.0,serial=mpt0"},
				{File: "lsi", Device: "scsi-hd,bus=scsi2.0,serial=lsi0"},
			},
			sizes:      map[int64]string{4 << 30: "raid-a raid-b", 3 << 30: "mpt", 2 << 30: "lsi"},
			nicDrivers: []string{"e1000"},
			// Linux 6.1's mptsas binds QEMU 7.2's mptsas1068 but discovers
			// no disk behind it (no SAS end device is reported, even with
			// the disk alone, in 75 s): the controller's driver is checked
			// (nothing unclaimed), its disk cannot be.
			diskDrivers: map[string]int{"megaraid_sas": 2, "sym53c8xx": 1}, groups: 2, deploy: true},
		{name: "e1000e-ahci-pvscsi-virtio-nvme", nic: "e1000e", mac: "52:54:00:a0:00:02",
			devices: []string{"ich9-ahci,id=ahci0", "pvscsi,id=pv0", "virtio-scsi-pci,id=vs0"},
			drives: []harness.Drive{
				{File: "sata", Device: "ide-hd,bus=ahci0.0,serial=sata0"},
				{File: "pv", Device: "scsi-hd,bus=pv0.0,serial=pv0"},
				{File: "vs", Device: "scsi-hd,bus=vs0.0,serial=vs0"},
				{File: "nv", Device: "nvme,serial=nv0"},
			},
			sizes:       map[int64]string{5 << 30: "sata", 4 << 30: "pv", 3 << 30: "vs", 2 << 30: "nv"},
			nicDrivers:  []string{"e1000e"},
			diskDrivers: map[string]int{"ahci": 1, "vmw_pvscsi": 1, "virtio_scsi": 1, "nvme": 1}, groups: 4},
		{name: "vmxnet3", nic: "vmxnet3", mac: "52:54:00:a0:00:03",
			devices: []string{"virtio-scsi-pci,id=vs0"}, drives: []harness.Drive{{File: "vs", Device: "scsi-hd,bus=vs0.0,serial=vs0"}},
			sizes: map[int64]string{2 << 30: "vs"}, nicDrivers: []string{"vmxnet3"}, diskDrivers: map[string]int{"virtio_scsi": 1}, groups: 1},
		{name: "rtl8139", nic: "rtl8139", mac: "52:54:00:a0:00:04",
			devices: []string{"virtio-scsi-pci,id=vs0"}, drives: []harness.Drive{{File: "vs", Device: "scsi-hd,bus=vs0.0,serial=vs0"}},
			sizes: map[int64]string{2 << 30: "vs"}, nicDrivers: []string{"8139cp", "8139too"}, diskDrivers: map[string]int{"virtio_scsi": 1}, groups: 1},
	}
}

func main() {
	repo := flag.String("repo", ".", "the repository")
	work := flag.String("work", "", "work directory")
	total := flag.Duration("timeout", 30*time.Minute, "the whole run's limit")
	flag.Parse()
	if *work == "" {
		fmt.Fprintln(os.Stderr, "hwcheck: --work is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, *total)
	code := run(ctx, *repo, *work)
	cancel()
	stop()
	os.Exit(code)
}

type env struct {
	work, apiURL, bootURL, apiLog, rescueDir string
	imageURL, imageSHA                       string // the generic-kernel test image, for the guests
	api                                      *harness.Proc
	token                                    string // access token of the customer
}

func run(ctx context.Context, repo, work string) int {
	t0 := time.Now()
	e, err := setup(ctx, repo, work)
	if e != nil && e.api != nil {
		defer e.api.Stop()
	}
	if err != nil {
		log.Say("FAIL setup: %v", err)
		return 2
	}
	var cases []*harness.Case
	var mu sync.Mutex
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	// Each machine runs once it holds a QEMU slot (one host CPU, shared
	// with the other checks), in order, two at a time at most.
	add := func(name string, fn func(c *harness.Case, cpu int) error) {
		c := log.NewCase(name)
		mu.Lock()
		cases = append(cases, c)
		mu.Unlock()
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			slot, err := harness.HostSlots().Acquire(ctx, "hw-check "+name)
			if err != nil {
				c.Fail("machine", "%v", err)
				return
			}
			defer slot.Release()
			if slot.Waited >= time.Second {
				log.Info("[%s] QEMU slot %d after waiting %.0f s", name, slot.CPU, slot.Waited.Seconds())
			}
			start := time.Now()
			if err := fn(c, slot.CPU); err != nil {
				c.Fail("machine", "%v", err)
			}
			c.Time("machine", time.Since(start))
		}()
	}
	for _, m := range matrix(work) {
		add(m.name, func(c *harness.Case, cpu int) error { return e.rescueMachine(ctx, c, m, cpu) })
	}
	add("usb-keyboard-unclaimed", func(c *harness.Case, _ int) error { return e.keyboardMachine(ctx, c) })
	wg.Wait()
	failed := false
	log.Say("== hw-check report")
	for _, c := range cases {
		c.Print()
		failed = failed || len(c.Failed()) > 0
	}
	log.Say("TIME hw-check matrix: %.0f s (%d machines, 2 at a time)", time.Since(t0).Seconds(), len(cases))
	for _, c := range cases {
		c.PrintDetails()
	}
	if failed {
		log.Say("RESULT: FAIL")
		return 1
	}
	log.Say("RESULT: PASS")
	return 0
}

func setup(ctx context.Context, repo, work string) (*env, error) {
	e := &env{work: work}
	bin := filepath.Join(work, "byoi-api")
	if err := harness.GoBuild(ctx, repo, "./cmd/byoi-api", bin, filepath.Join(work, "go-build.log")); err != nil {
		return e, err
	}
	var err error
	if e.rescueDir, err = harness.Rescue(ctx, repo, filepath.Join(work, "build-rescue.log")); err != nil {
		return e, err
	}
	img, err := harness.Script(ctx, repo, "build-test-image.sh", filepath.Join(work, "build-test-image.log"), 1, "--variant", "generic")
	if err != nil {
		return e, err
	}
	srvDir := filepath.Join(work, "images")
	os.MkdirAll(srvDir, 0o755)
	if err := os.Symlink(img[0], filepath.Join(srvDir, "generic.qcow2")); err != nil {
		return e, err
	}
	if e.imageSHA, err = harness.SHA256File(img[0]); err != nil {
		return e, err
	}
	srv, err := harness.ServeDir(srvDir)
	if err != nil {
		return e, err
	}
	e.imageURL = srv.GuestURL() + "/generic.qcow2"
	port, err := harness.FreePort()
	if err != nil {
		return e, err
	}
	e.apiURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	e.bootURL = fmt.Sprintf("http://10.0.2.2:%d", port)
	admin := harness.Admin{Bin: bin, DB: filepath.Join(work, "byoi.db")}
	if err := admin.Run(ctx, nil, "customer", "add", "hw"); err != nil {
		return e, err
	}
	var tok struct {
		Token string `json:"accessToken"`
	}
	if err := admin.Run(ctx, &tok, "token", "add", "--customer", "hw"); err != nil {
		return e, err
	}
	e.token = tok.Token
	for _, m := range matrix(work) {
		if err := admin.Run(ctx, nil, "server", "add", m.name, "--customer", "hw", "--mac", m.mac); err != nil {
			return e, err
		}
	}
	e.apiLog = filepath.Join(work, "byoi-api.log")
	if e.api, err = harness.StartProc(e.apiLog, bin, "serve", "--db", admin.DB, "--listen", "127.0.0.1:"+strconv.Itoa(port), "-v",
		"--rescue-dir", e.rescueDir, "--boot-url", e.bootURL, "--rescue-cmdline", "console=ttyS0,115200 loglevel=5"); err != nil {
		return e, err
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(e.apiURL + "/boot/boot.ipxe"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return e, fmt.Errorf("byoi-api did not answer:\n%s", harness.TailFile(e.apiLog, 20))
		}
	}
	return e, nil
}

func (e *env) get(path string, v any) error { return e.call("GET", path, nil, v) }

func (e *env) call(method, path string, body, v any) error {
	var rd *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, e.apiURL+"/1.0/dedicated/server/"+path, rd)
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// rescueMachine network-boots a machine of the matrix into rescue (its
// QEMU pinned to the host CPU cpu) and checks its inventory.
func (e *env) rescueMachine(ctx context.Context, c *harness.Case, m *machine, cpu int) error {
	dir := filepath.Join(e.work, m.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	qm := &harness.Machine{Name: m.name, Dir: dir, Firmware: harness.BIOS, Memory: 1536, SMP: "1,maxcpus=2", GraphicsOff: true, HostCPU: cpu,
		NetDev: fmt.Sprintf("user,id=n0,bootfile=%s/boot/boot.ipxe", e.bootURL), NIC: m.nic + ",netdev=n0,mac=" + m.mac, NICBootIndex: true,
		Devices: append([]string{"virtio-rng-pci"}, m.devices...)}
	for size, names := range m.sizes {
		for _, n := range strings.Fields(names) {
			if err := harness.MakeSparse(filepath.Join(dir, n+".raw"), size); err != nil {
				return err
			}
		}
	}
	for _, d := range m.drives {
		d.File = filepath.Join(dir, d.File+".raw")
		qm.Drives = append(qm.Drives, d)
	}
	if err := qm.Start(); err != nil {
		return err
	}
	defer qm.Stop()
	t := time.Now()
	l, err := qm.WaitConsole(ctx, 0, regexp.MustCompile(`byoi: server `+m.name+`: booting the rescue system`), 300*time.Second)
	if err != nil {
		c.Detail(qm.Tail(30))
		return fmt.Errorf("network boot through %s's iPXE ROM: %w", m.nic, err)
	}
	c.Pass("ipxe", "%s's option ROM booted the rescue after %.0f s: %s", m.nic, time.Since(t).Seconds(), l)
	l, err = qm.WaitConsole(ctx, 0, regexp.MustCompile(`modules loaded in \d+ rounds`), 300*time.Second)
	if err != nil {
		c.Detail(qm.Tail(30))
		return err
	}
	c.Evidence("%s", l)
	var hw struct {
		Disks []struct {
			Name, Driver string
			DiskGroupID  int
			Size         int64
			RAIDVolume   bool
		}
		NICs      []struct{ Name, MAC, Driver string }
		Unclaimed []struct{ Message string } `json:"unclaimedDevices"`
	}
	var spec struct {
		DiskGroups []struct {
			Description    string
			RAIDController *string
		}
	}
	deadline := time.Now().Add(300 * time.Second)
	for {
		hw.Disks, hw.NICs = nil, nil
		if err := e.get(m.name+"/bringYourOwnImage/hardware", &hw); err != nil {
			return err
		}
		if len(hw.NICs) > 0 || time.Now().After(deadline) {
			break
		}
		if err := harness.Sleep(ctx, 3*time.Second); err != nil {
			return err
		}
	}
	if err := e.get(m.name+"/specifications/hardware", &spec); err != nil {
		return err
	}
	if len(hw.NICs) == 0 {
		c.Detail(qm.Tail(40))
		return fmt.Errorf("no inventory from the agent within 300 s (the NIC %s carried no agent contact)", m.nic)
	}
	nicOK := false
	for _, n := range hw.NICs {
		nicOK = nicOK || (n.MAC == m.mac && slices.Contains(m.nicDrivers, n.Driver))
	}
	c.Check("nic-driver", nicOK, "the agent reported through %s: NICs %+v (want driver %v)", m.nic, hw.NICs, m.nicDrivers)
	got := map[string]int{}
	var descr []string
	for _, d := range hw.Disks {
		got[d.Driver]++
	}
	for _, g := range spec.DiskGroups {
		descr = append(descr, g.Description)
	}
	same := len(got) == len(m.diskDrivers)
	for k, v := range m.diskDrivers {
		same = same && got[k] == v
	}
	c.Check("disk-drivers", same, "disks by controller driver %v (want %v): %+v", got, m.diskDrivers, hw.Disks)
	c.Check("no-unclaimed", len(hw.Unclaimed) == 0, "every network and storage controller has its driver (%v: unclaimed %v)", m.devices, hw.Unclaimed)
	c.Check("disk-groups", len(spec.DiskGroups) == m.groups, "%d disk groups (want %d): %s", len(spec.DiskGroups), m.groups, strings.Join(descr, "; "))
	if m.diskDrivers["megaraid_sas"] > 0 {
		raid := false
		for _, g := range spec.DiskGroups {
			raid = raid || (g.RAIDController != nil && strings.Contains(*g.RAIDController, "PERC H730P Mini") && strings.HasPrefix(g.Description, "2 X"))
		}
		c.Check("raid-controller", raid, "the two volumes behind megaraid_sas form one group with raidController set (%s)", strings.Join(descr, "; "))
	}
	if m.deploy {
		return e.deployAndBoot(ctx, c, qm, m)
	}
	return nil
}

// deployAndBoot: a reinstall of the generic-kernel test image onto disk
// group 1 (the RAID volumes behind megaraid_sas); the agent reboots the
// machine, which network-boots, bootsel finds the deployed volume among
// SeaBIOS's drives, and Debian boots from it with the ConfigDrive.
func (e *env) deployAndBoot(ctx context.Context, c *harness.Case, qm *harness.Machine, m *machine) error {
	host, marker := "hw-"+harness.RandHex(2), harness.RandHex(8)
	mark := qm.ConsoleSize()
	var tk struct {
		TaskID int64  `json:"taskId"`
		Status string `json:"status"`
	}
	body := map[string]any{"operatingSystem": "byoi_64", "customizations": map[string]any{
		"imageURL": e.imageURL, "imageType": "qcow2", "imageCheckSum": e.imageSHA, "imageCheckSumType": "sha256",
		"hostname": host, "configDriveUserData": harness.MarkerUserData("hw-check", marker)},
		"storage": []map[string]any{{"diskGroupId": 1}}}
	t := time.Now()
	if err := e.call("POST", m.name+"/reinstall", body, &tk); err != nil {
		return err
	}
	for tk.Status != "done" {
		if tk.Status == "customerError" || tk.Status == "ovhError" || time.Since(t) > 15*time.Minute {
			c.Detail(qm.Tail(30))
			return fmt.Errorf("task %d ended %s", tk.TaskID, tk.Status)
		}
		if err := harness.Sleep(ctx, 3*time.Second); err != nil {
			return err
		}
		if err := e.get(fmt.Sprintf("%s/task/%d", m.name, tk.TaskID), &tk); err != nil {
			return err
		}
	}
	c.Pass("deploy", "the generic-kernel Debian image deployed onto disk group 1 (megaraid_sas volumes) in %.0f s", time.Since(t).Seconds())
	for _, w := range []struct{ re, what string }{
		{`bootsel: booting BIOS drive 0x[0-9A-F]{2}`, "bootsel found the deployed volume among SeaBIOS's drives"},
		{`BYOI-MARKER ` + marker, "the ConfigDrive's user data ran"},
		{`Cloud-init v\. .* finished at .*Datasource DataSourceConfigDrive`, "cloud-init used the ConfigDrive"},
		{regexp.QuoteMeta(host) + ` login:`, "the login prompt shows the job's hostname"},
	} {
		l, err := qm.WaitConsole(ctx, mark, regexp.MustCompile(w.re), 600*time.Second)
		if err != nil {
			c.Detail(qm.Tail(40))
			return err
		}
		c.Evidence("%s: %s", w.what, l)
	}
	c.Pass("boots-raid-volume", "Debian (linux-image-amd64, megaraid_sas in its initramfs) booted from the RAID volume under SeaBIOS, %.0f s after the deployment started", time.Since(t).Seconds())
	return nil
}

// keyboardMachine boots the rescue straight into its fallback shell with a
// USB keyboard (PS/2 off) and an Am53c974 SCSI controller, whose driver the
// rescue leaves out on purpose.
func (e *env) keyboardMachine(ctx context.Context, c *harness.Case) error {
	dir := filepath.Join(e.work, "keyboard")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	qm := &harness.Machine{Name: "keyboard", Dir: dir, Firmware: harness.BIOS, Memory: 1024, HostCPU: -1, VGA: "std",
		NetDev: "user,id=n0,restrict=on", NIC: "virtio-net-pci,netdev=n0",
		Devices: []string{"qemu-xhci,id=xhci", "usb-kbd,bus=xhci.0", "am53c974"},
		Extra: []string{"-machine", "pc,i8042=off", "-kernel", filepath.Join(e.rescueDir, "vmlinuz"), "-initrd", filepath.Join(e.rescueDir, "initrd.img"),
			"-append", "console=ttyS0,115200 loglevel=5 quiet byoi.shell=1"}}
	if err := qm.Start(); err != nil {
		return err
	}
	defer qm.Stop()
	l, err := qm.WaitConsole(ctx, 0, regexp.MustCompile(`unclaimed [0-9a-f:.]+: PCI 1022:2020 SCSI storage controller: no driver in the rescue`), 300*time.Second)
	if err != nil {
		c.Detail(qm.Tail(30))
		return err
	}
	c.Pass("unclaimed", "the controller left out of the rescue is reported: %s", l)
	if _, err := qm.WaitConsole(ctx, 0, regexp.MustCompile(`a shell on the console and on tty1`), 120*time.Second); err != nil {
		return err
	}
	marker := strings.ToUpper(harness.RandHex(4))
	var typed string
	for try := 0; try < 5 && typed == ""; try++ {
		if err := harness.Sleep(ctx, 3*time.Second); err != nil {
			return err
		}
		if err := qm.SendKeys("\necho BYOI-KBD-" + marker + " >/dev/ttyS0\n"); err != nil {
			return err
		}
		typed, _ = qm.WaitConsole(ctx, 0, regexp.MustCompile(`BYOI-KBD-`+marker), 15*time.Second)
	}
	if typed == "" {
		c.Detail(qm.Tail(20))
		return fmt.Errorf("the keys typed on the USB keyboard did not reach the shell on tty1")
	}
	c.Pass("usb-keyboard", "QMP send-key on the USB keyboard (qemu-xhci, PS/2 off) typed into the shell on tty1: %s", typed)
	return nil
}
