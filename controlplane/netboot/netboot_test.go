package netboot

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// TestBootselRebuild assembles bootsel.S with the command written in it
// and compares the result with the committed bootsel.bin.
func TestBootselRebuild(t *testing.T) {
	testutil.RequireCommand(t, "as")
	testutil.RequireCommand(t, "ld")
	dir := t.TempDir()
	obj, bin := filepath.Join(dir, "bootsel.o"), filepath.Join(dir, "bootsel.bin")
	if out, err := exec.Command("as", "--32", "-o", obj, "bootsel.S").CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command("ld", "-m", "elf_i386", "-Ttext", "0x600", "--oformat", "binary", "-o", bin, obj).CombinedOutput(); err != nil {
		t.Fatalf("ld: %v\n%s", err, out)
	}
	got, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bootselImage) {
		t.Fatalf("bootsel.bin does not match bootsel.S (%d bytes assembled, %d committed): rebuild it with the command in bootsel.S", len(got), len(bootselImage))
	}
}

func TestBootselLayout(t *testing.T) {
	if len(bootselImage) != 512 {
		t.Fatalf("bootsel is %d bytes, want 512", len(bootselImage))
	}
	if string(bootselImage[bootselMagicAt:bootselMagicAt+4]) != "BSEL" {
		t.Fatalf("no BSEL at 0x%x", bootselMagicAt)
	}
	if !bytes.Equal(bootselImage[bootselModeAt:bootselKeyAt+bootselKeyLen], make([]byte, 17)) {
		t.Fatal("the committed bootsel carries a key")
	}
	// The boot code ends before the key.
	if !strings.Contains(string(bootselImage[:bootselMagicAt]), "bootsel: booting BIOS drive 0x") {
		t.Fatal("bootsel's messages are missing")
	}
}

func TestBootselKey(t *testing.T) {
	for _, c := range []struct {
		key  string
		mode byte
		want []byte
	}{
		{"mbr:4d3c2b1a", 1, []byte{0x4d, 0x3c, 0x2b, 0x1a}},
		{"gpt:efbeadde0000c0ffee00112233445566", 2, []byte{0xef, 0xbe, 0xad, 0xde, 0, 0, 0xc0, 0xff, 0xee, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66}},
	} {
		k, err := ParseDiskKey(c.key)
		if err != nil {
			t.Fatalf("%s: %v", c.key, err)
		}
		if k.String() != c.key {
			t.Fatalf("String() = %s, want %s", k, c.key)
		}
		b := Bootsel(k)
		if len(b) != 512 || b[bootselModeAt] != c.mode || !bytes.Equal(b[bootselKeyAt:bootselKeyAt+len(c.want)], c.want) {
			t.Fatalf("%s: mode %d key % x", c.key, b[bootselModeAt], b[bootselKeyAt:bootselKeyAt+16])
		}
		if !bytes.Equal(b[:bootselModeAt], bootselImage[:bootselModeAt]) || !bytes.Equal(b[bootselKeyAt+16:], bootselImage[bootselKeyAt+16:]) {
			t.Fatalf("%s: bytes outside the key changed", c.key)
		}
	}
	if bootselImage[bootselModeAt] != 0 {
		t.Fatal("Bootsel patched the embedded image itself")
	}
	for _, bad := range []string{"", "mbr:", "mbr:1234567", "mbr:123456789", "mbr:0000000g", "mbr:4D3C2B1A", "mbr:00000000",
		"gpt:00000000000000000000000000000000", "gpt:efbeadde", "uuid:4d3c2b1a", "mbr-4d3c2b1a", "gpt:efbeadde0000c0ffee0011223344556"} {
		if _, err := ParseDiskKey(bad); err == nil {
			t.Errorf("ParseDiskKey(%q) accepted", bad)
		}
	}
}

func TestScripts(t *testing.T) {
	r := RescueScript(Rescue{BootURL: "http://10.0.2.2:8080", AgentURL: "https://api.example/", Server: "ns1", MAC: "52:54:00:12:34:56", Token: "byoi_ag_x", Cmdline: "console=ttyS0,115200"})
	want := "#!ipxe\n" +
		"echo byoi: server ns1: booting the rescue system\n" +
		"kernel http://10.0.2.2:8080/boot/rescue/vmlinuz initrd=initrd.img quiet console=ttyS0,115200 BOOTIF=01-52-54-00-12-34-56 byoi.url=https://api.example/ byoi.server=ns1 byoi.token=byoi_ag_x\n" +
		"initrd http://10.0.2.2:8080/boot/rescue/initrd.img\n" +
		"boot\n"
	if r != want {
		t.Fatalf("rescue script:\n%s\nwant:\n%s", r, want)
	}
	k, _ := ParseDiskKey("gpt:efbeadde0000c0ffee00112233445566")
	d := DiskScript("http://cp", &k)
	if !strings.Contains(d, "iseq ${platform} pcbios || exit\nchain http://cp/boot/bootsel/gpt-efbeadde0000c0ffee00112233445566.bin || exit\nexit\n") {
		t.Fatalf("disk script:\n%s", d)
	}
	if d := DiskScript("http://cp", nil); strings.Contains(d, "chain") || !strings.HasSuffix(d, "exit\n") {
		t.Fatalf("disk script without a key:\n%s", d)
	}
	if c := ChainScript("http://cp"); !strings.Contains(c, "chain http://cp/boot/mac/${netX/mac:hexhyp}.ipxe\n") {
		t.Fatalf("chain script:\n%s", c)
	}
	if strings.Contains(d, "ns1") {
		t.Fatalf("the disk script names the server:\n%s", d)
	}
	n := NoTokenScript("http://10.0.2.2:8080", "console=ttyS0,115200")
	want = "#!ipxe\n" +
		"echo byoi: no agent token for this boot (see the rescue's console)\n" +
		"kernel http://10.0.2.2:8080/boot/rescue/vmlinuz initrd=initrd.img quiet console=ttyS0,115200 BOOTIF=01-${netX/mac:hexhyp} byoi.notoken=1\n" +
		"initrd http://10.0.2.2:8080/boot/rescue/initrd.img\n" +
		"boot\n"
	if n != want {
		t.Fatalf("script without a token:\n%s\nwant:\n%s", n, want)
	}
}

func TestSafeURL(t *testing.T) {
	for u, want := range map[string]bool{
		"http://10.0.2.2:8080":         true,
		"https://api.example.com/byoi": true,
		"ftp://x":                      false,
		"http://x/${net0/mac}":         false,
		"http://x/ a":                  false,
		"http://x/\"":                  false,
		"http://x/\n":                  false,
		"http://x/é":                   false,
		"10.0.2.2:8080":                false,
	} {
		if SafeURL(u) != want {
			t.Errorf("SafeURL(%q) = %v", u, !want)
		}
	}
}
