package partition

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/internal/testutil"
)

func TestDetectSectorSize(t *testing.T) {
	s := seeds(t)
	fatOnly := filepath.Join(t.TempDir(), "fat")
	testutil.Run(t, "mkfs.vfat", "-C", fatOnly, "4096")
	fat, err := os.ReadFile(fatOnly)
	if err != nil {
		t.Fatal(err)
	}
	noSig := append([]byte(nil), s["plain"]...)
	copy(noSig[512:], "XXXXXXXX")
	for _, tc := range []struct {
		name  string
		head  []byte
		table string
		ss    int64
	}{
		{"gpt 512", s["plain"][:8192], "gpt", 512},
		{"gpt 4096", s["4kn"][:8192], "gpt", 4096},
		{"gpt 512, short head", s["plain"][:1024], "gpt", 512},
		{"protective MBR, damaged GPT", noSig[:8192], "gpt", 0},
		{"zeros", make([]byte, 8192), "", 0},
		{"FAT without a table", fat[:8192], "", 0},
		{"empty", nil, "", 0},
	} {
		table, ss := DetectSectorSize(tc.head)
		if table != tc.table || ss != tc.ss {
			t.Errorf("%s: DetectSectorSize = %q, %d, want %q, %d", tc.name, table, ss, tc.table, tc.ss)
		}
	}
	mbr := testutil.SparseFile(t, 8*mib)
	sfdisk(t, mbr, "label: dos\nstart=2048, type=83\n")
	if table, ss := DetectSectorSize(testutil.ReadAt(t, mbr, 0, 8192)); table != "mbr" || ss != 0 {
		t.Errorf("MBR: %q, %d", table, ss)
	}

	if err := CheckSectorSize(s["4kn"][:8192], 4096); err != nil {
		t.Error(err)
	}
	if err := CheckSectorSize(s["plain"][:8192], 512); err != nil {
		t.Error(err)
	}
	err = CheckSectorSize(s["4kn"][:8192], 512)
	var se *SectorSizeError
	// The customer's text ("image sector size 4096 does not match disk
	// sector size 512") is the agent's: its TestErrorTable.
	if !errors.As(err, &se) || *se != (SectorSizeError{4096, 512}) || err.Error() != "image made for 4096-byte sectors, the disk has 512-byte sectors" {
		t.Errorf("CheckSectorSize = %v", err)
	}
	err = CheckSectorSize(s["plain"][:8192], 4096)
	if !errors.As(err, &se) || *se != (SectorSizeError{512, 4096}) || err.Error() != "image made for 512-byte sectors, the disk has 4096-byte sectors" {
		t.Errorf("CheckSectorSize = %v", err)
	}
}

// TestReadMBRLogical reads an MBR with an extended partition and compares
// with sfdisk --dump.
func TestReadMBRLogical(t *testing.T) {
	testutil.RequireCommand(t, "sfdisk")
	img := testutil.SparseFile(t, 64*mib)
	sfdisk(t, img, "label: dos\nlabel-id: 0x12345678\nstart=2048, size=8192, type=83, bootable\nstart=10240, size=40960, type=5\nstart=12288, size=4096, type=82\nstart=18432, size=4096, type=83\n")
	tab, err := Read(openDisk(t, img, 512))
	if err != nil {
		t.Fatal(err)
	}
	if tab.Type != "mbr" || tab.DiskSignature != 0x12345678 || len(tab.Problems) > 0 {
		t.Errorf("table %+v", tab)
	}
	var got []string
	for _, p := range tab.Partitions {
		s := fmt.Sprintf("P%d : start= %11d, size= %11d, type=%x", p.Number, p.Start/512, p.Size/512, p.MBRType)
		if p.Bootable {
			s += ", bootable"
		}
		got = append(got, s)
	}
	want := sfdiskDump(t, img)[2:] // without "label: dos" and label-id
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Read:\n%s\nsfdisk --dump:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestReadGPTMatchesSfdisk compares Read with sfdisk --dump on the odd table.
func TestReadGPTMatchesSfdisk(t *testing.T) {
	testutil.RequireCommand(t, "sfdisk")
	img := sgdiskImage(t, 64*mib, gptCases[1].args...)
	tab, err := Read(openDisk(t, img, 512))
	if err != nil {
		t.Fatal(err)
	}
	dump := sfdiskDump(t, img)
	if dump[1] != "label-id: "+tab.DiskGUID {
		t.Errorf("disk GUID %s, sfdisk: %s", tab.DiskGUID, dump[1])
	}
	for i, p := range tab.Partitions {
		prefix := fmt.Sprintf("P%d : start= %11d, size= %11d, type=%s, uuid=%s", p.Number, p.Start/512, p.Size/512, p.TypeGUID, p.GUID)
		if !strings.HasPrefix(dump[2+i], prefix) {
			t.Errorf("partition %+v\nsfdisk: %s", p, dump[2+i])
		}
	}
	if tab.HybridMBR || len(tab.Problems) > 0 || tab.FirstUsable != 34 || tab.LastUsable != 64*mib/512-34 {
		t.Errorf("table %+v", tab)
	}
}

func TestReadHybrid(t *testing.T) {
	img := sgdiskImage(t, 64*mib, gptCases[4].args...)
	tab, err := Read(openDisk(t, img, 512))
	if err != nil {
		t.Fatal(err)
	}
	if !tab.HybridMBR || len(tab.Partitions) != 3 || len(tab.Problems) > 0 {
		t.Errorf("table %+v", tab)
	}
}

// TestReadDamagedPrimary reads the table from the backup at the disk's end.
func TestReadDamagedPrimary(t *testing.T) {
	b := append([]byte(nil), seeds(t)["odd"]...)
	b[512+offDiskGUID] ^= 1
	tab, err := Read(newMemDisk(b, 512))
	if err != nil {
		t.Fatal(err)
	}
	if !tab.FromBackup || len(tab.Partitions) != 3 || len(tab.Problems) == 0 || !strings.Contains(tab.Problems[0], "primary GPT is damaged") {
		t.Errorf("table %+v", tab)
	}
}

// TestRelocate4Kn builds a 4096-byte-sector image with sgdisk on a 4Kn
// loop device, relocates it on a larger 4Kn loop device (the block device
// path of blockdev.Open) and judges it as on 512-byte disks.
func TestRelocate4Kn(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk", "sfdisk", "blockdev")
	ctx := context.Background()
	args := []string{"-n1:0:+10M", "-t1:ef00", "-n2:0:+20M", "-c2:root", "-A2:set:2",
		"-n3:0:+5M", "-t3:" + unknownType, "-c3:odd"}
	img := testutil.SparseFile(t, 64*mib)
	loop := testutil.LoopDevice(t, img, 4096)
	testutil.Run(t, "sgdisk", append(args, loop)...)
	testutil.Run(t, "blockdev", "--flushbufs", loop)
	before := sfdiskDump(t, loop)

	if table, ss := DetectSectorSize(testutil.ReadAt(t, img, 0, 8192)); table != "gpt" || ss != 4096 {
		t.Fatalf("DetectSectorSize = %q, %d", table, ss)
	}
	ours := growCopy(t, img, 200*mib)
	theirs := growCopy(t, img, 200*mib)

	lo := testutil.LoopDevice(t, ours, 4096)
	d, err := blockdev.Open(lo, blockdev.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.SectorSize() != 4096 {
		t.Fatalf("loop sector size %d", d.SectorSize())
	}
	if err := RelocateBackupGPT(ctx, d); err != nil {
		t.Fatal(err)
	}
	p, err := AddPartition(ctx, d, "config-2", 2*mib)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if p.Start%mib != 0 || p.Size != 2*mib {
		t.Errorf("config-2 %+v", p)
	}
	sgdiskVerify(t, lo)
	after := sfdiskDump(t, lo)
	if !reflect.DeepEqual(before, after[:len(after)-1]) || !strings.Contains(after[len(after)-1], `name="config-2"`) {
		t.Errorf("sfdisk --dump:\nbefore %q\nafter  %q", before, after)
	}

	// Compare with sgdisk -e on a copy: MBR, primary header, entries and
	// the backup in the last 5 sectors. Ours carries config-2 in entry 4
	// by now, so compare the relocation alone on a second copy.
	lt := testutil.LoopDevice(t, theirs, 4096)
	testutil.Run(t, "sgdisk", "-e", lt)
	testutil.Run(t, "blockdev", "--flushbufs", lt)
	again := growCopy(t, img, 200*mib)
	if err := RelocateBackupGPT(ctx, openDisk(t, again, 4096)); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 4096}, {4096, 4096}, {8192, 16384}, {200*mib - 5*4096, 5 * 4096}} {
		if a, b := testutil.ReadAt(t, again, r[0], r[1]), testutil.ReadAt(t, theirs, r[0], r[1]); string(a) != string(b) {
			t.Errorf("bytes at %d differ from sgdisk -e's", r[0])
		}
	}
}
