package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The OVMF files of Debian 12's ovmf package.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// disk is one NVMe disk of the machine: a sparse file.
type disk struct {
	name, serial string
	size         int64
	group        int // the disk group the agent should report
	path         string
	digest       string // content digest before the run (group 1's disks)
}

// vm is one simulated server: a QEMU machine (TCG) and its files.
type vm struct {
	fw, dir, mac string
	bootURL      string
	sshPort      int
	disks        []*disk
	qemu         *proc
	boots        int // QEMU processes started (each has its own console file)
	console      string
	consoles     []string
}

// The disks, in PCI order: group 1 (two 6 GiB disks) around group 2 (one
// 4 GiB disk), so that group 2's disk is neither the first NVMe nor the
// BIOS's first hard disk.
func newVM(dir, fw, mac, bootURL string) (*vm, error) {
	v := &vm{fw: fw, dir: dir, mac: mac, bootURL: bootURL}
	var err error
	if v.sshPort, err = freePort(); err != nil {
		return nil, err
	}
	v.disks = []*disk{
		{name: "g1a", serial: "byoi-g1a", size: 6 << 30, group: 1},
		{name: "g2", serial: "byoi-g2", size: 4 << 30, group: 2},
		{name: "g1b", serial: "byoi-g1b", size: 6 << 30, group: 1},
	}
	for _, d := range v.disks {
		d.path = filepath.Join(dir, d.name+".raw")
		if err := makeDisk(d); err != nil {
			return nil, err
		}
	}
	if fw == "uefi" {
		b, err := os.ReadFile(ovmfVars)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "OVMF_VARS.fd"), b, 0o644); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// makeDisk creates a sparse disk; group 1's get 1 MiB of random bytes at
// 1 MiB and before the end (not bootable: LBA 0 stays zero), and their
// content digest, to prove later that nothing wrote them.
func makeDisk(d *disk) error {
	f, err := os.OpenFile(d.path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(d.size); err != nil {
		return err
	}
	if d.group == 1 {
		buf := make([]byte, 1<<20)
		for _, off := range []int64{1 << 20, d.size - 2<<20} {
			rand.Read(buf)
			if _, err := f.WriteAt(buf, off); err != nil {
				return err
			}
		}
		if d.digest, err = contentDigest(d.path); err != nil {
			return err
		}
	}
	return nil
}

// contentDigest hashes a sparse file's content: every non-zero 64 KiB
// block with its offset (holes and zero blocks read as zero either way),
// reading only the file's data extents (SEEK_DATA/SEEK_HOLE).
func contentDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", st.Size())
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	fd := int(f.Fd())
	var off int64
	for off < st.Size() {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return "", err
		}
		for p := data &^ int64(len(buf)-1); p < hole; p += int64(len(buf)) {
			n, err := f.ReadAt(buf, p)
			if err != nil && !errors.Is(err, io.EOF) {
				return "", err
			}
			if n > 0 && string(buf[:n]) != string(zero[:n]) {
				fmt.Fprintf(h, "%d ", p)
				h.Write(buf[:n])
			}
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// start starts QEMU. seed: the UEFI seeding boot (the NIC alone gets
// bootindex=1, so OVMF writes a BootOrder with the network first, as an
// operator would in the firmware setup; see the control plane's README).
func (v *vm) start(seed bool) error {
	v.boots++
	v.console = filepath.Join(v.dir, fmt.Sprintf("console-%d.log", v.boots))
	v.consoles = append(v.consoles, v.console)
	nic := "virtio-net-pci,netdev=n0,mac=" + v.mac
	var fwArgs []string
	switch {
	case v.fw == "bios":
		// SeaBIOS: the network first, then its first hard disk.
		nic += ",bootindex=1"
	case seed:
		nic += ",bootindex=1"
	}
	if v.fw == "uefi" {
		fwArgs = []string{"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file=" + filepath.Join(v.dir, "OVMF_VARS.fd")}
	}
	mon := filepath.Join(v.dir, "monitor.sock")
	os.Remove(mon)
	// -smp 1,maxcpus=2: one vCPU, but TCG then translates the guest's
	// memory barriers (with one possible vCPU it drops them). QEMU's NVMe
	// reads the guest's shadow doorbells from another thread: without the
	// barrier the driver and the device can each miss the other's update,
	// and an I/O is never seen (docs/pxe-findings.md).
	args := []string{"-accel", "tcg", "-machine", "pc,graphics=off", "-m", "1536", "-smp", "1,maxcpus=2",
		"-display", "none", "-vga", "none", "-parallel", "none",
		"-serial", "file:" + v.console, "-monitor", "unix:" + mon + ",server=on,wait=off"}
	args = append(args, fwArgs...)
	// User-mode networking only: DHCP gives iPXE the boot file's URL;
	// 10.0.2.2 is the host's 127.0.0.1; SSH to the deployed system
	// through a forward on 127.0.0.1.
	args = append(args, "-netdev", fmt.Sprintf("user,id=n0,bootfile=%s/boot/boot.ipxe,hostfwd=tcp:127.0.0.1:%d-:22", v.bootURL, v.sshPort),
		"-device", nic, "-device", "virtio-rng-pci")
	for i, d := range v.disks {
		args = append(args, "-drive", fmt.Sprintf("if=none,id=d%d,file=%s,format=raw,cache=unsafe", i, d.path),
			"-device", fmt.Sprintf("nvme,drive=d%d,serial=%s", i, d.serial))
	}
	if err := os.WriteFile(filepath.Join(v.dir, fmt.Sprintf("qemu-%d.cmd", v.boots)), []byte("qemu-system-x86_64 "+strings.Join(args, " ")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(v.console, nil, 0o644); err != nil {
		return err
	}
	// All of QEMU's threads on one host CPU (SeaBIOS's machine on the
	// first, OVMF's on the second): the vCPU and the NVMe emulation then
	// see each other's memory writes in order, a second guard against
	// the lost doorbell besides maxcpus=2.
	name := "qemu-system-x86_64"
	if _, err := exec.LookPath("taskset"); err == nil {
		cpu := map[string]int{"bios": 0, "uefi": 1}[v.fw] % runtime.NumCPU()
		args = append([]string{"-c", strconv.Itoa(cpu), name}, args...)
		name = "taskset"
	}
	p, err := startProc(name, filepath.Join(v.dir, fmt.Sprintf("qemu-%d.log", v.boots)), args...)
	if err != nil {
		return err
	}
	v.qemu = p
	return nil
}

func (v *vm) stop() {
	if v.qemu != nil {
		v.qemu.stop()
	}
}

// powerCycle turns the machine off and on again (a new QEMU process, the
// UEFI variables kept in their file; the console goes to a new file). Not
// QEMU's system_reset: that keeps user-mode networking's state, and once
// (a full local CI run) the iPXE that came back after it had its HTTP
// request time out, so the firmware booted the disk. A fresh QEMU starts
// with a fresh network; a real server's power cycle is what OVH's
// hardware reboot does anyway.
func (v *vm) powerCycle() error {
	v.stop()
	return v.start(false)
}

func (v *vm) consolePaths() []string { return v.consoles }

// consoleSize is where the current console is now: a mark for waits.
func (v *vm) consoleSize() int64 {
	st, err := os.Stat(v.console)
	if err != nil {
		return 0
	}
	return st.Size()
}

// searchable is a console from byte off: escape sequences out, \r as a
// line end (iPXE and progress bars rewrite lines).
func searchable(path string, off int64) string {
	b, _ := os.ReadFile(path)
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	s := ansiRE.ReplaceAllString(string(b[off:]), "")
	return strings.ReplaceAll(s, "\r", "\n")
}

// waitConsole waits until re matches a line of the console after mark,
// for at most limit, and returns the line. It fails early when QEMU
// exited.
func (v *vm) waitConsole(ctx context.Context, mark int64, re *regexp.Regexp, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		s := searchable(v.console, mark)
		if m := re.FindString(s); m != "" {
			return lineOf(s, m), nil
		}
		if !v.qemu.running() {
			s = searchable(v.console, mark)
			if m := re.FindString(s); m != "" {
				return lineOf(s, m), nil
			}
			return "", fmt.Errorf("QEMU exited before /%s/ showed on the console (%v)", re, v.qemu.err)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("/%s/ not on the console after %s", re, limit)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("/%s/ not on the console: %w", re, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// lineOf is the whole console line holding m.
func lineOf(s, m string) string {
	i := strings.Index(s, m)
	start := strings.LastIndexByte(s[:i], '\n') + 1
	end := strings.IndexByte(s[i:], '\n')
	if end < 0 {
		end = len(s) - i
	}
	l := strings.TrimSpace(s[start : i+end])
	if len(l) > 240 {
		l = l[:240] + "..."
	}
	return l
}

func (v *vm) tail(n int) string { return tailFile(v.console, n) }
