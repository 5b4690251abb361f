package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCleanConsoleKeepsTheLastRewrite(t *testing.T) {
	in := "\x1b[2J\x1b[01;01Hboot\r\nprogress 10%\rprogress 50%\rprogress 100%\r\n\x1b(Bdone\n"
	if got, want := CleanConsole([]byte(in)), "boot\nprogress 100%\ndone\n"; got != want {
		t.Errorf("CleanConsole = %q, want %q", got, want)
	}
	p := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(p, []byte(in), 0o644)
	if s := Searchable(p, 0); !strings.Contains(s, "\nprogress 50%\n") {
		t.Errorf("Searchable keeps every rewrite as a line: %q", s)
	}
	if s := Searchable(p, 1<<20); s != "" {
		t.Errorf("Searchable past the end = %q", s)
	}
}

func TestLineOfAndTails(t *testing.T) {
	s := "first\nsecond has the match here\nthird"
	if got := LineOf(s, "match"); got != "second has the match here" {
		t.Errorf("LineOf = %q", got)
	}
	if got := LineOf(s, "absent"); got != "" {
		t.Errorf("LineOf of nothing = %q", got)
	}
	if got := TailLines("a\n\nb\nc\n", 2); got != "    | b\n    | c" {
		t.Errorf("TailLines = %q", got)
	}
	v := Values("HOST=web1\nnoise line\nROOT=/dev/nvme0n1p1 on x\nHOST=again\nA B=c\n")
	if v["HOST"] != "web1" || v["ROOT"] != "/dev/nvme0n1p1 on x" || len(v) != 2 {
		t.Errorf("Values = %v", v)
	}
}

func TestWatchdogDump(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(p, []byte("x\nbyoi watchdog: no progress for 10m\ngoroutine 1\nbyoi watchdog: end of the goroutine dump\nafter\n"), 0o644)
	got := WatchdogDump(p)
	if !strings.Contains(got, "goroutine 1") || strings.Contains(got, "after") {
		t.Errorf("WatchdogDump = %q", got)
	}
	os.WriteFile(p, []byte("nothing\n"), 0o644)
	if WatchdogDump(p) != "" {
		t.Error("a dump where there is none")
	}
}

// cloud-init 22.4's fingerprint of a key (computed with Python's hashlib,
// as the shell version of boot-check did).
func TestCloudInitFingerprint(t *testing.T) {
	got, err := CloudInitFingerprint("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINRR2YdwII5+zFGE0xaBf/p542chNj3xCZq+SSbIP3Ob t")
	if want := "97:84:26:a9:e3:cf:45:e0:52:b8:40:55:e2:14:1a:78:82:8c:55:33:18:b6:67:40:73:0a:0f:85:25:bf:43:51"; err != nil || got != want {
		t.Errorf("CloudInitFingerprint = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"", "ssh-ed25519", "ssh-ed25519 !!!"} {
		if _, err := CloudInitFingerprint(bad); err == nil {
			t.Errorf("CloudInitFingerprint(%q) accepted", bad)
		}
	}
}

func TestContentDigestSeesEveryWrite(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.raw")
	d1, err := MakeDecoy(a, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := ContentDigest(a)
	if d1 != d2 {
		t.Fatal("the digest of an unchanged file changed")
	}
	f, _ := os.OpenFile(a, os.O_RDWR, 0)
	f.WriteAt([]byte{1}, 5<<20) // in a hole
	f.Close()
	if d3, _ := ContentDigest(a); d3 == d1 {
		t.Error("a byte written into a hole is not seen")
	}
	b := filepath.Join(dir, "b.raw")
	MakeSparse(b, 8<<20)
	c := filepath.Join(dir, "c.raw")
	MakeSparse(c, 8<<20)
	f, _ = os.OpenFile(c, os.O_RDWR, 0)
	f.WriteAt(make([]byte, 1<<20), 1<<20) // zeros: the same content as a hole
	f.Close()
	db, _ := ContentDigest(b)
	dc, _ := ContentDigest(c)
	if db != dc {
		t.Error("written zeros read differently from a hole")
	}
}

func TestMachineArgs(t *testing.T) {
	dir := t.TempDir()
	m := &Machine{Dir: dir, Firmware: UEFI, SMP: "1,maxcpus=2", GraphicsOff: true, HostCPU: -1,
		NetDev: "user,id=n0", NIC: "e1000,netdev=n0,mac=52:54:00:00:00:01", NICBootIndex: true,
		Devices: []string{"megasas-gen2,id=hba0"},
		Drives:  []Drive{{File: "/x.raw", Device: "scsi-hd,bus=hba0.0,vendor=DELL"}, {File: "/y.qcow2", Format: "qcow2", If: "virtio"}}}
	got := strings.Join(m.Args(filepath.Join(dir, "c.log")), " ")
	for _, want := range []string{
		"-machine pc,graphics=off", "-m 1024", "-smp 1,maxcpus=2", "-vga none", "-serial file:" + dir + "/c.log",
		"-qmp unix:" + dir + "/qmp.sock,server=on,wait=off",
		"if=pflash,format=raw,unit=0,readonly=on,file=" + OVMFCode, "if=pflash,format=raw,unit=1,file=" + dir + "/OVMF_VARS.fd",
		"-device e1000,netdev=n0,mac=52:54:00:00:00:01,bootindex=1", "-device megasas-gen2,id=hba0",
		"-drive if=none,id=d0,file=/x.raw,format=raw,cache=unsafe -device scsi-hd,bus=hba0.0,vendor=DELL,drive=d0",
		"-drive file=/y.qcow2,format=qcow2,if=virtio,cache=unsafe",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	m.Firmware, m.NICBootIndex, m.VGA = BIOS, false, "std"
	got = strings.Join(m.Args("c.log"), " ")
	if strings.Contains(got, "pflash") || strings.Contains(got, "bootindex") || !strings.Contains(got, "-vga std") {
		t.Errorf("BIOS machine args: %s", got)
	}
}

func TestEveryTypedCharacterHasAKey(t *testing.T) {
	for _, r := range "echo BYOI-KBD-0123 >/dev/ttyS0; ls -l | tr a-z A-Z\n" {
		if _, ok := qcodes[r]; !ok {
			t.Errorf("no key for %q", r)
		}
	}
	if err := (&Machine{Dir: t.TempDir()}).SendKeys("é"); err == nil {
		t.Error("SendKeys accepted a character it has no key for")
	}
}
