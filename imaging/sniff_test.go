package imaging

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// sniffAt returns a head of n bytes filled with a non-zero filler and sig
// at off.
func sniffAt(n, off int, sig string) []byte {
	b := bytes.Repeat([]byte{0x11}, n)
	copy(b[off:], sig)
	return b
}

// sniffMBR returns a 512-byte MBR sector with one partition entry.
func sniffMBR(status, typ byte, start, size uint32) []byte {
	b := make([]byte, 512)
	copy(b, "\xeb\x63\x90boot code")
	e := b[446:]
	e[0], e[4] = status, typ
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], size)
	b[510], b[511] = 0x55, 0xAA
	return b
}

func TestSniffTable(t *testing.T) {
	gpt := make([]byte, 8192)
	copy(gpt[512:], "EFI PART")
	gpt4k := make([]byte, 8192)
	copy(gpt4k[4096:], "EFI PART")
	iso := sniffAt(40000, 32769, "CD001")
	hybrid := append(sniffMBR(0x80, 0x17, 0, 1000), iso[512:]...)
	vdi := sniffAt(512, 0, "<<< Oracle VM VirtualBox Disk Image >>>\n")
	copy(vdi[64:], "\x7f\x10\xda\xbe")
	vbr := make([]byte, 512) // a FAT boot sector: jump, OEM, boot code, 55AA
	copy(vbr, "\xeb\x3c\x90mkfs.fat")
	copy(vbr[446:], "\x0e\x1f\xbe\x5b\x7c\xac\x22\xc0") // boot code where entries would be
	vbr[510], vbr[511] = 0x55, 0xAA

	cases := []struct {
		name string
		head []byte
		want Format
	}{
		{"nil", nil, FormatEmpty},
		{"zeros", make([]byte, HeadSize), FormatEmpty},
		{"short zeros", make([]byte, 3), FormatEmpty},
		{"one byte", []byte{1}, FormatUnknown},
		{"random text", []byte("hello, world"), FormatUnknown},
		{"gpt 512", gpt, FormatRaw},
		{"gpt 4096", gpt4k, FormatRaw},
		{"gpt head cut", gpt[:520], FormatRaw},
		{"mbr", sniffMBR(0x80, 0x83, 2048, 4096), FormatRaw},
		{"mbr protective", sniffMBR(0, 0xee, 1, 0xffffffff), FormatRaw},
		{"mbr bad status", sniffMBR(0x12, 0x83, 2048, 4096), FormatUnknown},
		{"mbr no entry", sniffMBR(0, 0, 0, 0), FormatUnknown},
		{"mbr absurd entry", sniffMBR(0, 0x83, 0xffffff00, 0x1000), FormatUnknown},
		{"fat vbr", vbr, FormatUnknown},
		{"isohybrid", hybrid, FormatRaw},
		{"qcow2", sniffAt(512, 0, "QFI\xfb\x00\x00\x00\x03"), FormatQcow2},
		{"qcow2 with 55aa", append(sniffAt(446, 0, "QFI\xfb"), sniffMBR(0x80, 0x83, 1, 1)[446:]...), FormatQcow2},
		{"gzip", []byte{0x1f, 0x8b, 8, 0}, FormatGzip},
		{"xz", []byte("\xfd7zXZ\x00\x00\x04"), FormatXz},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd, 0}, FormatZstd},
		{"bzip2", []byte("BZh91AY&SY"), FormatBzip2},
		{"BZh not bzip2", []byte("BZhx"), FormatUnknown},
		{"iso9660", iso, FormatISO9660},
		{"iso cut before signature", iso[:32770], FormatUnknown},
		{"ext4", sniffAt(4096, 1080, "\x53\xef"), FormatExt4},
		{"xfs", sniffAt(4096, 0, "XFSB"), FormatXFS},
		{"btrfs", sniffAt(70000, 65600, "_BHRfS_M"), FormatBtrfs},
		{"lvm2 sector 1", sniffAt(4096, 512, "LABELONE\x01"), FormatLVM2},
		{"lvm2 sector 2", sniffAt(4096, 1024, "LABELONE\x02"), FormatLVM2},
		{"luks", sniffAt(4096, 0, "LUKS\xba\xbe\x00\x02"), FormatLUKS},
		{"vmdk sparse", sniffAt(512, 0, "KDMV\x01"), FormatVMDK},
		{"vmdk descriptor", []byte("# Disk DescriptorFile\nversion=1\n"), FormatVMDK},
		{"vhdx", sniffAt(512, 0, "vhdxfile"), FormatVHDX},
		{"vdi", vdi, FormatVDI},
		{"vdi magic without text", sniffAt(512, 64, "\x7f\x10\xda\xbe"), FormatUnknown},
		{"vhd", sniffAt(512, 0, "conectix"), FormatVHD},
		{"squashfs", sniffAt(512, 0, "hsqs"), FormatSquashfs},
		{"zip", []byte("PK\x03\x04\x14\x00"), FormatZip},
		{"tar", sniffAt(1024, 257, "ustar\x0000"), FormatTar},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Sniff(c.head); got != c.want {
				t.Errorf("Sniff = %q, want %q", got, c.want)
			}
		})
	}
}

func TestHasPartitionTable(t *testing.T) {
	gpt := make([]byte, 1024)
	copy(gpt[512:], "EFI PART")
	for _, c := range []struct {
		name string
		head []byte
		want string
	}{
		{"gpt", gpt, "gpt"},
		{"mbr", sniffMBR(0, 0x0c, 63, 100000), "mbr"},
		{"none", make([]byte, 512), ""},
		{"short", []byte{0x55, 0xaa}, ""},
	} {
		got, ok := HasPartitionTable(c.head)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("%s: HasPartitionTable = %q, %v; want %q", c.name, got, ok, c.want)
		}
	}
}

func TestCheckFormat(t *testing.T) {
	gpt := make([]byte, 1024)
	copy(gpt[512:], "EFI PART")
	qcow := sniffAt(512, 0, "QFI\xfb")
	for _, c := range []struct {
		declared string
		head     []byte
		want     Format
		bad      *FormatError // the refusal (its customer text: agent's TestErrorTable)
	}{
		{"raw", gpt, FormatRaw, nil},
		{"qcow2", qcow, FormatQcow2, nil},
		{"raw", qcow, FormatQcow2, &FormatError{Declared: "raw", Found: FormatQcow2}},
		{"qcow2", gpt, FormatRaw, &FormatError{Declared: "qcow2", Found: FormatRaw}},
		{"qcow2", []byte{0x1f, 0x8b}, FormatGzip, &FormatError{Declared: "qcow2", Found: FormatGzip}},
		{"raw", []byte{0x1f, 0x8b}, FormatGzip, &FormatError{Declared: "raw", Found: FormatGzip, NoTable: true}},
		{"raw", []byte("text"), FormatUnknown, &FormatError{Declared: "raw", Found: FormatUnknown, NoTable: true}},
		{"raw", make([]byte, 4096), FormatEmpty, &FormatError{Declared: "raw", Found: FormatEmpty, NoTable: true}},
		{"raw", nil, FormatEmpty, &FormatError{Declared: "raw", Found: FormatEmpty, NoTable: true}},
	} {
		got, err := CheckFormat(c.declared, c.head)
		if got != c.want {
			t.Errorf("CheckFormat(%s, %q...) = %q, want %q", c.declared, c.head[:min(len(c.head), 4)], got, c.want)
		}
		if c.bad == nil {
			if err != nil {
				t.Errorf("CheckFormat(%s) = %v", c.declared, err)
			}
			continue
		}
		var fe *FormatError
		if !errors.As(err, &fe) || !errors.Is(err, ErrFormat) || *fe != *c.bad {
			t.Errorf("CheckFormat(%s, %q...) error = %#v\nwant %#v", c.declared, c.head[:min(len(c.head), 4)], err, c.bad)
		}
	}
	if _, err := CheckFormat("ova", gpt); !errors.Is(err, ErrFormat) {
		t.Errorf("CheckFormat(ova) = %v, want ErrFormat", err)
	}
}

func TestErrorMessages(t *testing.T) {
	se := &SizeError{ImageSize: 3000, TargetName: "/dev/sda", TargetSize: 2000}
	// The customer's texts are the agent's (TestErrorTable); these are the
	// library's own.
	if got, want := se.Error(), "image of 3000 bytes does not fit /dev/sda (2000 bytes)"; got != want {
		t.Errorf("SizeError = %q, want %q", got, want)
	}
	cause := errors.New("input/output error")
	we := &WriteError{Format: "qcow2", Err: cause}
	if got, want := we.Error(), "write the qcow2 image: input/output error"; got != want {
		t.Errorf("WriteError = %q, want %q", got, want)
	}
	if !errors.Is(we, cause) {
		t.Error("WriteError does not unwrap")
	}
}

// sniffFile returns the first HeadSize bytes of a file.
func sniffFile(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, HeadSize)
	n, _ := f.ReadAt(head, 0)
	return head[:n]
}

// TestSniffRealTools sniffs what real tools and encoders produce.
func TestSniffRealTools(t *testing.T) {
	payload := bytes.Repeat([]byte("byoi sniff payload "), 1000)
	var gz, xzb, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(payload)
	gw.Close()
	xw, err := xz.NewWriter(&xzb)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(payload)
	xw.Close()
	zw, err := zstd.NewWriter(&zs)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(payload)
	zw.Close()
	for name, c := range map[string]struct {
		b    []byte
		want Format
	}{
		"gzip": {gz.Bytes(), FormatGzip}, "xz": {xzb.Bytes(), FormatXz}, "zstd": {zs.Bytes(), FormatZstd},
	} {
		if got := Sniff(c.b); got != c.want {
			t.Errorf("%s: Sniff = %q, want %q", name, got, c.want)
		}
	}

	dir := t.TempDir()
	tool := func(t *testing.T, want Format, file string, cmds ...[]string) {
		t.Helper()
		for _, c := range cmds {
			testutil.RequireCommand(t, c[0])
		}
		for _, c := range cmds {
			testutil.Run(t, c[0], c[1:]...)
		}
		if got := Sniff(sniffFile(t, file)); got != want {
			t.Errorf("%s: Sniff = %q, want %q", file, got, want)
		}
	}
	sparse := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("qemu-img qcow2", func(t *testing.T) {
		p := filepath.Join(dir, "a.qcow2")
		tool(t, FormatQcow2, p, []string{"qemu-img", "create", "-q", "-f", "qcow2", p, "64M"})
	})
	t.Run("qemu-img vmdk", func(t *testing.T) {
		p := filepath.Join(dir, "a.vmdk")
		tool(t, FormatVMDK, p, []string{"qemu-img", "create", "-q", "-f", "vmdk", p, "64M"})
	})
	t.Run("qemu-img vhdx", func(t *testing.T) {
		p := filepath.Join(dir, "a.vhdx")
		tool(t, FormatVHDX, p, []string{"qemu-img", "create", "-q", "-f", "vhdx", p, "64M"})
	})
	t.Run("qemu-img vdi", func(t *testing.T) {
		p := filepath.Join(dir, "a.vdi")
		tool(t, FormatVDI, p, []string{"qemu-img", "create", "-q", "-f", "vdi", p, "64M"})
	})
	t.Run("qemu-img vpc", func(t *testing.T) {
		p := filepath.Join(dir, "a.vhd")
		tool(t, FormatVHD, p, []string{"qemu-img", "create", "-q", "-f", "vpc", p, "64M"})
	})
	t.Run("mkfs.ext4", func(t *testing.T) {
		p := sparse("ext4.img", 16<<20)
		tool(t, FormatExt4, p, []string{"mkfs.ext4", "-q", "-F", p})
	})
	t.Run("mkfs.vfat", func(t *testing.T) {
		p := sparse("fat.img", 16<<20)
		tool(t, FormatUnknown, p, []string{"mkfs.vfat", p})
	})
	t.Run("genisoimage", func(t *testing.T) {
		src := filepath.Join(dir, "isosrc")
		os.Mkdir(src, 0o755)
		os.WriteFile(filepath.Join(src, "hello.txt"), payload, 0o644)
		p := filepath.Join(dir, "a.iso")
		tool(t, FormatISO9660, p, []string{"genisoimage", "-quiet", "-R", "-o", p, src})
	})
	t.Run("sgdisk gpt", func(t *testing.T) {
		p := sparse("gpt.img", 64<<20)
		tool(t, FormatRaw, p, []string{"sgdisk", "-n", "1:2048:+16M", "-t", "1:ef00", p})
	})
	t.Run("sfdisk mbr", func(t *testing.T) {
		p := sparse("mbr.img", 64<<20)
		testutil.RequireCommand(t, "sfdisk")
		sniffSfdisk(t, p, "label: dos\nstart=2048, size=8192, type=83\n")
		head := sniffFile(t, p)
		if table, ok := HasPartitionTable(head); !ok || table != "mbr" {
			t.Errorf("HasPartitionTable = %q, %v, want mbr", table, ok)
		}
		if got := Sniff(head); got != FormatRaw {
			t.Errorf("Sniff = %q, want raw", got)
		}
	})
}

// sniffSfdisk writes a partition table with sfdisk reading script.
func sniffSfdisk(t *testing.T, path, script string) {
	t.Helper()
	p, err := testutil.LookPath("sfdisk")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p, "--no-reread", "--no-tell-kernel", "-q", path)
	cmd.Stdin = bytes.NewBufferString(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
}

func FuzzSniff(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Add(sniffMBR(0x80, 0x83, 2048, 4096))
	f.Add(sniffMBR(0, 0xee, 1, 0xffffffff))
	f.Add(sniffAt(1100, 1080, "\x53\xef"))
	f.Add(sniffAt(600, 512, "EFI PART"))
	f.Add([]byte("<<< x"))
	f.Fuzz(func(t *testing.T, head []byte) {
		f := Sniff(head)
		if f == "" {
			t.Fatal("empty format")
		}
		table, ok := HasPartitionTable(head)
		if ok != (table != "") {
			t.Fatalf("HasPartitionTable = %q, %v", table, ok)
		}
	})
}

func FuzzCheckFormat(f *testing.F) {
	for _, d := range []string{"raw", "qcow2", "ova"} {
		f.Add(d, []byte{})
		f.Add(d, []byte("QFI\xfb"))
		f.Add(d, sniffMBR(0x80, 0x83, 2048, 4096))
		f.Add(d, []byte{0x1f, 0x8b})
	}
	f.Fuzz(func(t *testing.T, declared string, head []byte) {
		got, err := CheckFormat(declared, head)
		if got == "" {
			t.Fatal("empty format")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty message")
		}
		if err == nil && Sniff(head) != got {
			t.Fatal("CheckFormat disagrees with Sniff")
		}
	})
}
