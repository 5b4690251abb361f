package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testimage"
)

func inspInspect(t *testing.T, img []byte, opts InspectOptions) *InspectReport {
	t.Helper()
	qcow2.RegisterDecompressors()
	r, err := InspectImage(context.Background(), bytes.NewReader(img), int64(len(img)), opts)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	return r
}

func inspHasProblem(r *InspectReport, sub string) bool {
	for _, p := range r.Problems {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}

// inspCheckESPImage checks the report of espImage's layout, raw or qcow2.
func inspCheckESPImage(t *testing.T, r *InspectReport, size int64) {
	t.Helper()
	if r.VirtualSize != size || r.SectorSize != 512 {
		t.Errorf("virtual size %d sector size %d", r.VirtualSize, r.SectorSize)
	}
	if r.Table == nil || r.Table.Type != "gpt" || len(r.Table.Partitions) != 2 {
		t.Fatalf("table %+v", r.Table)
	}
	p := r.Table.Partitions
	if p[0].Number != 1 || p[0].Start != mib || p[0].Size != 8*mib || p[0].Name != "EFI system partition" || p[0].TypeName == "" ||
		p[1].Number != 2 || p[1].Start != 9*mib || p[1].Size != 12*mib || p[1].Name != "root" {
		t.Errorf("partitions %+v", p)
	}
	b := r.Boot
	if b == nil || !b.ESP || b.ESPPartition != 1 || !strings.HasPrefix(b.ESPFilesystem, "FAT") || !b.RemovablePath || !b.Legacy || !b.BootloaderFound {
		t.Errorf("boot %+v", b)
	}
}

func TestInspectRawGPTWithESP(t *testing.T) {
	img := espImage(t, []string{"EFI/debian/grubx64.efi", "EFI/BOOT/BOOTX64.EFI"}, true)
	opts := InspectOptions{EFIBootloaderPath: `\EFI\debian\grubx64.efi`, DiskSize: 64 * mib, DiskSectorSize: 512, DeclaredType: "raw"}
	r := inspInspect(t, img, opts)
	if r.Format != "raw" || r.Qcow2 != nil || r.FileSize != int64(len(img)) {
		t.Errorf("report %+v", r)
	}
	if len(r.Problems) != 0 {
		t.Errorf("problems %q", r.Problems)
	}
	inspCheckESPImage(t, r, int64(len(img)))

	// Every deploy failure at once: wrong declared type, a smaller disk,
	// another sector size, a missing bootloader.
	opts = InspectOptions{EFIBootloaderPath: `\EFI\redhat\shimx64.efi`, DiskSize: 16 * mib, DiskSectorSize: 4096, DeclaredType: "qcow2"}
	r = inspInspect(t, img, opts)
	for _, want := range []string{
		"image provided format is raw which does not match expected qcow2 format",
		"image provided has a size of 25165824 bytes which is larger than the target disk of 16777216 bytes",
		"image sector size 512 does not match disk sector size 4096",
		`EFI bootloader \EFI\redhat\shimx64.efi not found: no such file in the EFI System Partition`,
	} {
		if !inspHasProblem(r, want) {
			t.Errorf("missing problem %q in %q", want, r.Problems)
		}
	}
	if r.Table == nil || len(r.Table.Partitions) != 2 {
		t.Errorf("the table is still shown: %+v", r.Table)
	}
}

func TestInspectQcow2(t *testing.T) {
	raw := espImage(t, []string{"EFI/BOOT/BOOTX64.EFI", "EFI/debian/grubx64.efi"}, true)
	img, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	r := inspInspect(t, img, InspectOptions{DeclaredType: "qcow2", EFIBootloaderPath: `/efi/debian/grubx64.efi`, DiskSize: 32 * mib, DiskSectorSize: 512})
	if r.Format != "qcow2" || r.FileSize != int64(len(img)) {
		t.Errorf("report %+v", r)
	}
	q := r.Qcow2
	if q == nil || !q.Accepted || q.Refused != "" || q.Version != 3 || q.ClusterSize != 65536 || q.Compression != "zlib" ||
		q.VirtualSize != int64(len(raw)) || q.AllocatedClusters == 0 || q.CompressedClusters == 0 {
		t.Errorf("qcow2 %+v", q)
	}
	if len(r.Problems) != 0 {
		t.Errorf("problems %q", r.Problems)
	}
	inspCheckESPImage(t, r, int64(len(raw)))

	// Declared raw: the deployment's message.
	r = inspInspect(t, img, InspectOptions{DeclaredType: "raw", DiskSize: 16 * mib})
	if !inspHasProblem(r, "image provided format is qcow2 which does not match expected raw format") ||
		!inspHasProblem(r, "image provided has a size of 25165824 bytes which is larger than the target disk of 16777216 bytes") {
		t.Errorf("problems %q", r.Problems)
	}
}

func TestInspectNotADiskImage(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("not a disk "), 10000))
	zw.Close()
	for _, tc := range []struct {
		name, want string
		img        []byte
	}{
		// A compressed raw image is looked into: this one holds no disk.
		{"gzip", "image provided format is not of type raw because no partition table was found. It seems to contain: unknown data", gz.Bytes()},
		{"zeros", "It seems to contain: only zeros", make([]byte, 3*mib)},
		{"empty", "It seems to contain: only zeros", nil},
		{"text", "It seems to contain: unknown data", []byte("hello")},
	} {
		r := inspInspect(t, tc.img, InspectOptions{})
		if len(r.Problems) != 1 || r.Problems[0] != tc.want && !strings.HasSuffix(r.Problems[0], tc.want) || r.Table != nil || r.Boot != nil {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
	r := inspInspect(t, gz.Bytes(), InspectOptions{})
	if r.Format != "gzip" {
		t.Errorf("format %q", r.Format)
	}
}

// TestInspectHostileQcow2 sets a backing file on a valid qcow2: it must be
// refused from its header, and the backing file never opened. The backing
// file is a FIFO: opening it for reading would block until a writer comes.
func TestInspectHostileQcow2(t *testing.T) {
	raw, err := testimage.GPT(8*mib, 512, []testimage.Part{{Name: "root", Type: testimage.TypeLinux, Start: mib, Size: 4 * mib, Fill: testimage.FillMixed}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(t.TempDir(), "backing")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// qemu puts the name after the header extensions, in the first cluster.
	const nameOff = 512
	copy(img[nameOff:], fifo)
	binary.BigEndian.PutUint64(img[8:], nameOff)
	binary.BigEndian.PutUint32(img[16:], uint32(len(fifo)))

	done := make(chan *InspectReport, 1)
	go func() {
		r, err := InspectImage(context.Background(), bytes.NewReader(img), int64(len(img)), InspectOptions{})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	var r *InspectReport
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		// Unblock the reader so the goroutine ends, then fail.
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		t.Fatal("Inspect blocked: it opened the backing file")
	}
	if r == nil {
		return
	}
	if r.Qcow2 == nil || r.Qcow2.Accepted || !strings.Contains(r.Qcow2.Refused, "backing file") ||
		len(r.Qcow2.Features) == 0 || r.Qcow2.Features[0] != "backing file" || r.Table != nil {
		t.Errorf("report %+v qcow2 %+v", r, r.Qcow2)
	}
	if !inspHasProblem(r, "qcow2 image refused: it has a backing file") {
		t.Errorf("problems %q", r.Problems)
	}
	// Nothing has the FIFO open for reading.
	if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close()
		t.Error("the backing file is open")
	}

	// A header that does not parse, and corrupt tables: refused, no panic.
	bad := append([]byte(nil), img...)
	binary.BigEndian.PutUint32(bad[4:], 7)
	r = inspInspect(t, bad, InspectOptions{})
	if r.Qcow2 == nil || r.Qcow2.Accepted || !inspHasProblem(r, "version 7 is not supported") {
		t.Errorf("version 7: %+v", r.Qcow2)
	}
	bad = append([]byte(nil), img...)
	binary.BigEndian.PutUint64(bad[8:], 0)
	binary.BigEndian.PutUint64(bad[40:], 1<<40) // L1 table past the end
	r = inspInspect(t, bad, InspectOptions{})
	if r.Qcow2 == nil || r.Qcow2.Accepted || r.Qcow2.Version != 3 || !inspHasProblem(r, "L1 table") {
		t.Errorf("L1 past the end: %+v", r.Qcow2)
	}
}

func TestInspect4KnImageOn512Disk(t *testing.T) {
	img, err := testimage.GPT(16*mib, 4096, []testimage.Part{
		{Name: "EFI system partition", Type: testimage.TypeESP, Start: mib, Size: 4 * mib},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: 8 * mib},
	}, 7)
	if err != nil {
		t.Fatal(err)
	}
	r := inspInspect(t, img, InspectOptions{DiskSectorSize: 512})
	if r.SectorSize != 4096 || r.Table == nil || r.Table.SectorSize != 4096 || len(r.Table.Partitions) != 2 || r.Table.Partitions[1].Name != "root" {
		t.Fatalf("report %+v table %+v", r, r.Table)
	}
	if !inspHasProblem(r, "image sector size 4096 does not match disk sector size 512") {
		t.Errorf("problems %q", r.Problems)
	}
	// The ESP holds no filesystem, and there is no boot code.
	if !inspHasProblem(r, "is not a readable FAT filesystem") || !inspHasProblem(r, "no boot code in the MBR") {
		t.Errorf("problems %q", r.Problems)
	}
	r = inspInspect(t, img, InspectOptions{DiskSectorSize: 4096})
	if inspHasProblem(r, "sector size") {
		t.Errorf("problems %q", r.Problems)
	}
}

func TestInspectMBR(t *testing.T) {
	img := make([]byte, 8*mib)
	copy(img, bytes.Repeat([]byte{0xEB, 0x63, 0x90}, 100)) // boot code
	e := img[446:]
	e[0] = 0x80 // active
	e[4] = 0x83
	binary.LittleEndian.PutUint32(e[8:], 2048)
	binary.LittleEndian.PutUint32(e[12:], 4096)
	img[510], img[511] = 0x55, 0xAA
	r := inspInspect(t, img, InspectOptions{DiskSectorSize: 512, DeclaredType: "raw"})
	if r.Format != "raw" || r.SectorSize != 0 || r.Table == nil || r.Table.Type != "mbr" || len(r.Table.Partitions) != 1 {
		t.Fatalf("report %+v table %+v", r, r.Table)
	}
	p := r.Table.Partitions[0]
	if p.Start != mib || p.Size != 2*mib || p.MBRType != "0x83" || !p.Bootable {
		t.Errorf("partition %+v", p)
	}
	if !r.Boot.Legacy || r.Boot.ESP || !inspHasProblem(r, "no EFI System Partition") || inspHasProblem(r, "legacy BIOS") {
		t.Errorf("boot %+v problems %q", r.Boot, r.Problems)
	}
}

func TestInspectBadOptions(t *testing.T) {
	for _, o := range []InspectOptions{{DiskSectorSize: 1000}, {DeclaredType: "vmdk"}, {DiskSize: -1}} {
		if _, err := InspectImage(context.Background(), bytes.NewReader(nil), 0, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	img, err := testimage.GPT(4*mib, 512, []testimage.Part{{Name: "a", Type: testimage.TypeLinux, Start: mib, Size: mib}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InspectImage(ctx, bytes.NewReader(img), int64(len(img)), InspectOptions{}); err == nil {
		t.Error("cancelled context: no error")
	}
}

// FuzzInspect: any bytes give a report or an error, never a panic, and
// memory stays bounded (the fuzzer's limits catch runaway allocations).
func FuzzInspect(f *testing.F) {
	qcow2.RegisterDecompressors()
	// Small seeds: the fuzzer mutates and copies whole inputs.
	raw, err := testimage.GPT(64<<10, 512, []testimage.Part{
		{Name: "EFI system partition", Type: testimage.TypeESP, Start: 17 << 10, Size: 16 << 10},
		{Name: "root", Type: testimage.TypeLinux, Start: 33 << 10, Size: 8 << 10, Fill: testimage.FillMixed},
	}, 9)
	if err != nil {
		f.Fatal(err)
	}
	q, err := testimage.Qcow2(raw, 9)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(q)
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := InspectImage(context.Background(), bytes.NewReader(b), int64(len(b)), InspectOptions{EFIBootloaderPath: `\EFI\BOOT\BOOTX64.EFI`, DiskSize: 1 << 30, DiskSectorSize: 512})
		if err == nil && r == nil {
			t.Fatal("nil report without error")
		}
	})
}
