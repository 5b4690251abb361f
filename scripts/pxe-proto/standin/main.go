// Command standin is a stand-in for `byoi agent` in the PXE prototype
// (scripts/pxe-proto/run.sh): a static binary baked into the rescue
// initramfs as /bin/byoi. It is not the product agent.
//
//	byoi agent --url URL --server NAME --token TOKEN
//
// It prints its arguments and the kernel command line with the token
// redacted, then fetches URL/job/NAME (Bearer TOKEN), a JSON object:
//
//	{"exit": 0,                     exit status to return at once (tests init's restarts)
//	 "image": "http://...raw",      raw image to write (optional)
//	 "diskSerial": "byoi-b",        the target disk, by NVMe/virtio serial
//	 "loader": "\\EFI\\debian\\grubx64.efi",  UEFI: write a boot entry for it (efiboot)
//	 "description": "byoi",         its description
//	 "then": "reboot"}              reboot | poweroff | reboot-cmd (busybox reboot) | exit
//
// prints the UEFI boot variables and the legacy BIOS EDD drive table before
// and after, POSTs URL/done/NAME, and reboots with reboot(2).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/byoi/byoi/efiboot"
	"github.com/byoi/byoi/partition"
	"golang.org/x/sys/unix"
)

const espType = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

type job struct {
	Exit        int    `json:"exit"`
	Image       string `json:"image"`
	DiskSerial  string `json:"diskSerial"`
	Loader      string `json:"loader"`
	Description string `json:"description"`
	Then        string `json:"then"`
	// Efibootmgr: after Install, also run efibootmgr --create for the same
	// partition and loader (from an extra initramfs, see run.sh) and print
	// both entries' bytes, for efiboot's golden test.
	Efibootmgr bool `json:"efibootmgr"`
}

func say(format string, a ...any) { fmt.Printf("STANDIN: "+format+"\n", a...) }

func main() {
	if len(os.Args) < 2 || os.Args[1] != "agent" {
		fmt.Fprintln(os.Stderr, "usage: byoi agent --url URL --server NAME --token TOKEN")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	url := fs.String("url", "", "control plane URL")
	server := fs.String("server", "", "server name")
	token := fs.String("token", "", "token")
	_ = fs.Parse(os.Args[2:])

	shown := append([]string(nil), os.Args[1:]...)
	for i := range shown {
		if i > 0 && shown[i-1] == "--token" {
			shown[i] = fmt.Sprintf("<redacted %d chars>", len(shown[i]))
		}
	}
	say("args: %s", strings.Join(shown, " "))
	cmdline, _ := os.ReadFile("/proc/cmdline")
	words := strings.Fields(string(cmdline))
	for i, w := range words {
		if strings.HasPrefix(w, "byoi.token=") {
			words[i] = "byoi.token=<redacted>"
		}
	}
	say("cmdline: %s", strings.Join(words, " "))
	say("token matches cmdline: %v", strings.Contains(string(cmdline), "byoi.token="+*token))
	say("env: %s", strings.Join(os.Environ(), " "))

	client := &http.Client{Timeout: 60 * time.Second}
	req, _ := http.NewRequest("GET", endpoint(*url, "job", *server), nil)
	req.Header.Set("Authorization", "Bearer "+*token)
	resp, err := client.Do(req)
	if err != nil {
		say("job: %v", err)
		os.Exit(3)
	}
	var j job
	err = json.NewDecoder(resp.Body).Decode(&j)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		say("job: status %d, %v", resp.StatusCode, err)
		os.Exit(3)
	}
	say("job: %+v", j)
	if j.Exit != 0 {
		say("exiting with status %d as the job asks", j.Exit)
		os.Exit(j.Exit)
	}

	dumpEFI("before")
	dumpEDD()
	if err := run(client, j); err != nil {
		say("FAILED: %v", err)
		os.Exit(4)
	}
	dumpEFI("after")

	done, _ := http.NewRequest("POST", endpoint(*url, "done", *server), strings.NewReader("{}"))
	done.Header.Set("Authorization", "Bearer "+*token)
	if resp, err := client.Do(done); err != nil {
		say("done: %v", err)
		os.Exit(5)
	} else {
		resp.Body.Close()
		say("done reported: %s", resp.Status)
	}
	unix.Sync()
	switch j.Then {
	case "reboot":
		say("reboot(2)")
		err = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	case "poweroff":
		say("poweroff(2)")
		err = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	case "reboot-cmd":
		say("running busybox reboot (signals PID 1)")
		err = exec.Command("/bin/reboot").Run()
		time.Sleep(30 * time.Second)
	default:
		return
	}
	say("reboot: %v", err)
	os.Exit(6)
}

// endpoint appends /what/server to base's path, keeping its query.
func endpoint(base, what, server string) string {
	u, err := neturl.Parse(base)
	if err != nil {
		return base
	}
	u.Path = path.Join("/", u.Path, what, server)
	return u.String()
}

func run(client *http.Client, j job) error {
	if j.DiskSerial == "" {
		return nil
	}
	dev, err := diskBySerial(j.DiskSerial)
	if err != nil {
		return err
	}
	say("target disk %s (serial %s)", dev, j.DiskSerial)
	if j.Image != "" {
		if err := writeImage(client, j.Image, dev); err != nil {
			return err
		}
	}
	if j.Loader == "" {
		return nil
	}
	if _, err := os.Stat(efiboot.DefaultDir); err != nil {
		say("no efivarfs (%v): legacy BIOS, no boot entry", err)
		return nil
	}
	d, err := openDisk(dev)
	if err != nil {
		return err
	}
	defer d.Close()
	t, err := partition.Read(d)
	if err != nil {
		return err
	}
	for _, p := range t.Partitions {
		if p.TypeGUID != espType {
			continue
		}
		e := efiboot.Entry{
			Description: j.Description,
			Partition: efiboot.Partition{
				Number:   uint32(p.Number),
				GUID:     p.GUID,
				StartLBA: uint64(p.Start / d.ss),
				SizeLBA:  uint64(p.Size / d.ss),
			},
			LoaderPath: j.Loader,
		}
		res, err := efiboot.Install(efiboot.DefaultDir, e)
		if err != nil {
			return err
		}
		say("efiboot.Install: %+v", res)
		if j.Efibootmgr {
			return compareEfibootmgr(dev, p.Number, j.Loader, res.Num)
		}
		return nil
	}
	return errors.New("no EFI System Partition on " + dev)
}

// compareEfibootmgr runs efibootmgr --create for the same partition and
// loader and prints the bytes of its entry and of efiboot's.
func compareEfibootmgr(dev string, part int, loader string, ours uint16) error {
	cmd := exec.Command("/bin/efibootmgr", "--create", "--disk", dev, "--part", fmt.Sprint(part),
		"--label", "byoi deployed image", "--loader", loader)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu")
	out, err := cmd.CombinedOutput()
	say("efibootmgr --create --disk %s --part %d --label 'byoi deployed image' --loader '%s': %v", dev, part, loader, err)
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		say("efibootmgr: %s", l)
	}
	if err != nil {
		return err
	}
	v := efiboot.Vars{}
	ents, err := v.Entries()
	if err != nil {
		return err
	}
	for n, o := range ents {
		if o.Description != "byoi deployed image" {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join(efiboot.DefaultDir, efiboot.BootName(n)+"-"+efiboot.GlobalVariableGUID))
		who := "efibootmgr"
		if n == ours {
			who = "efiboot"
		}
		say("bytes %s %s %x", who, efiboot.BootName(n), raw)
	}
	return nil
}

func diskBySerial(serial string) (string, error) {
	for _, pat := range []string{"/sys/block/*/device/serial", "/sys/block/*/serial"} {
		m, _ := filepath.Glob(pat)
		for _, f := range m {
			b, _ := os.ReadFile(f)
			if strings.TrimSpace(string(b)) == serial {
				parts := strings.Split(f, "/")
				return "/dev/" + parts[3], nil
			}
		}
	}
	return "", fmt.Errorf("no disk with serial %q", serial)
}

func writeImage(client *http.Client, url, dev string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("image: %s", resp.Status)
	}
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		return err
	}
	t0 := time.Now()
	n, err := io.Copy(f, resp.Body)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
		if errors.Is(err, unix.EBUSY) {
			err = nil
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	say("wrote %d bytes to %s in %.1f s (%v)", n, dev, time.Since(t0).Seconds(), err)
	return err
}

type disk struct {
	*os.File
	size, ss int64
}

func (d *disk) Size() int64       { return d.size }
func (d *disk) SectorSize() int64 { return d.ss }

func openDisk(dev string) (*disk, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	var size uint64
	if size, err = unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64); err != nil {
		f.Close()
		return nil, err
	}
	ss, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &disk{File: f, size: int64(size), ss: int64(ss)}, nil
}

// dumpEFI prints BootCurrent, BootNext, BootOrder and every Boot#### entry.
func dumpEFI(when string) {
	v := efiboot.Vars{}
	if _, err := os.Stat(efiboot.DefaultDir); err != nil {
		return
	}
	cur, ok, _ := v.BootCurrent()
	order, _ := v.BootOrder()
	next, nerr := v.Get("BootNext")
	var ord []string
	for _, n := range order {
		ord = append(ord, fmt.Sprintf("%04X", n))
	}
	say("efi %s: BootCurrent=%04X(%v) BootNext=%x(%v) BootOrder=%s", when, cur, ok, next, nerr == nil, strings.Join(ord, ","))
	ents, _ := v.Entries()
	var nums []int
	for n := range ents {
		nums = append(nums, int(n))
	}
	sort.Ints(nums)
	for _, n := range nums {
		o := ents[uint16(n)]
		say("efi %s: Boot%04X active=%v %q %s", when, n, o.Active(), o.Description, efiboot.DevicePathString(o.DevicePath))
		if os.Getenv("BYOI_DEBUG") == "1" {
			b, _ := v.Get(efiboot.BootName(uint16(n)))
			say("efi %s: Boot%04X bytes %x", when, n, b)
		}
	}
}

// dumpEDD prints what the kernel learnt from the BIOS about its disks
// (legacy BIOS only; needs edd.ko).
func dumpEDD() {
	m, _ := filepath.Glob("/sys/firmware/edd/int13_dev*")
	for _, d := range m {
		var b bytes.Buffer
		for _, f := range []string{"mbr_signature", "host_bus", "interface", "sectors"} {
			v, err := os.ReadFile(filepath.Join(d, f))
			if err == nil {
				fmt.Fprintf(&b, " %s=%s", f, strings.Join(strings.Fields(string(v)), " "))
			}
		}
		if l, err := os.Readlink(filepath.Join(d, "pci_dev")); err == nil {
			fmt.Fprintf(&b, " pci_dev=%s", filepath.Base(l))
		}
		say("edd %s:%s", filepath.Base(d), b.String())
	}
	blk, _ := filepath.Glob("/sys/block/*")
	for _, d := range blk {
		name := filepath.Base(d)
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") {
			continue
		}
		dev, _ := filepath.EvalSymlinks(filepath.Join(d, "device"))
		serial, _ := os.ReadFile(filepath.Join(d, "device", "serial"))
		var sig [4]byte
		if f, err := os.Open("/dev/" + name); err == nil {
			f.ReadAt(sig[:], 440)
			f.Close()
		}
		say("disk %s serial=%s mbr_signature=0x%02x%02x%02x%02x device=%s", name, strings.TrimSpace(string(serial)),
			sig[3], sig[2], sig[1], sig[0], dev)
	}
}
