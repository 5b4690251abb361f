package partition

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

const unknownType = "12345678-1234-1234-1234-123456789ABC"

// gptCases are odd but valid tables made by sgdisk (512-byte sectors).
var gptCases = []struct {
	name string
	args []string
}{
	{"plain", []string{"-n1:0:+10M", "-t1:ef00", "-c1:EFI system", "-n2:0:0", "-t2:8300", "-c2:root"}},
	{"odd", []string{"-a1",
		"-n1:40:1063", "-t1:83BD6B9D-7F41-11DC-BE0B-001560B84F0F", "-c1:FreeBSD boot", // before 1 MiB
		"-n2:2048:+10M", "-t2:8300", "-c2:root", "-A2:set:2", "-A2:set:60", "-A2:set:63",
		"-n3:0:+5M", "-t3:" + unknownType, "-c3:ünïcødé ñame of 36 characters!!!"}},
	{"256 entries", []string{"--resize-table=256", "-n1:0:+10M", "-n7:0:+1M", "-c7:seven"}},
	{"4 entries", []string{"--resize-table=4", "-n1:0:+10M", "-n2:0:+1M"}},
	{"hybrid", []string{"-a1", "-n1:40:1063", "-t1:a501", "-n2:2048:+10M", "-t2:8300", "-n3:0:+5M", "-h", "1:2"}},
}

// TestRelocateMatchesSgdisk relocates sgdisk-made tables to a disk three
// times the image's size and judges the result with sgdisk -v, sfdisk
// --dump and a copy relocated by sgdisk -e.
func TestRelocateMatchesSgdisk(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk", "sfdisk")
	ctx := context.Background()
	for _, tc := range gptCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // sgdisk sleeps after writing: overlap the waits
			img := sgdiskImage(t, 64*mib, tc.args...)
			before := sfdiskDump(t, img)
			ours := growCopy(t, img, 200*mib)
			theirs := growCopy(t, img, 200*mib)

			if err := RelocateBackupGPT(ctx, openSyncedDisk(t, ours, 512)); err != nil {
				t.Fatal(err)
			}
			testutil.Run(t, "sgdisk", "-e", theirs)
			sgdiskVerify(t, ours)
			if after := sfdiskDump(t, ours); !reflect.DeepEqual(before, after) {
				t.Errorf("sfdisk --dump changed:\nbefore %q\nafter  %q", before, after)
			}
			// Byte for byte what sgdisk -e writes: the MBR, the primary
			// header and entries, and the last 33 sectors (backup entries
			// and header); the old backup we wipe, sgdisk leaves.
			const size = 200 * mib
			for _, r := range []struct {
				what    string
				off, n  int64
				exclude bool
			}{
				{what: "MBR", off: 0, n: 512},
				{what: "primary header", off: 512, n: 512},
				{what: "primary entries", off: 1024, n: 1 << 20},
				{what: "backup", off: size - 1<<20, n: 1 << 20},
			} {
				a, b := testutil.ReadAt(t, ours, r.off, r.n), testutil.ReadAt(t, theirs, r.off, r.n)
				if !bytes.Equal(a, b) {
					t.Errorf("%s differs from sgdisk -e's", r.what)
				}
			}
			tab, err := Read(openDisk(t, ours, 512))
			if err != nil {
				t.Fatal(err)
			}
			if len(tab.Problems) > 0 || tab.AlternateLBA != size/512-1 {
				t.Errorf("after relocation: %+v", tab)
			}
			// The old backup header, in the middle of the disk now, is gone.
			if old := testutil.ReadAt(t, ours, 64*mib-512, 8); string(old) == gptSignature {
				t.Error("stale backup header left at the image's end")
			}
		})
	}
}

func TestRelocateOddTableSurvives(t *testing.T) {
	img := sgdiskImage(t, 64*mib, gptCases[1].args...)
	disk := growCopy(t, img, 200*mib)
	if err := RelocateBackupGPT(context.Background(), openDisk(t, disk, 512)); err != nil {
		t.Fatal(err)
	}
	tab, err := Read(openDisk(t, disk, 512))
	if err != nil {
		t.Fatal(err)
	}
	if len(tab.Partitions) != 3 {
		t.Fatalf("partitions: %+v", tab.Partitions)
	}
	p := tab.Partitions
	if p[0].Start != 40*512 || p[0].TypeName != "FreeBSD boot" || p[0].Name != "FreeBSD boot" {
		t.Errorf("partition 1: %+v", p[0])
	}
	if p[1].Attributes != 1<<2|1<<60|1<<63 || !p[1].Bootable || p[1].Name != "root" {
		t.Errorf("partition 2: %+v", p[1])
	}
	if p[2].TypeGUID != unknownType || p[2].TypeName != "" || p[2].Name != "ünïcødé ñame of 36 characters!!!" {
		t.Errorf("partition 3: %+v", p[2])
	}
	if tab.LastUsable != 200*mib/512-34 {
		t.Errorf("last usable %d", tab.LastUsable)
	}
}

// TestRelocateSameSize: on a disk exactly the image's size, nothing is
// written and the table stays valid.
func TestRelocateSameSize(t *testing.T) {
	img := sgdiskImage(t, 64*mib, gptCases[1].args...)
	d := &countingDisk{Disk: openDisk(t, img, 512)}
	if err := RelocateBackupGPT(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if d.writes != 0 {
		t.Errorf("%d writes on a disk already in place", d.writes)
	}
	sgdiskVerify(t, img)
}

// TestRelocateTwice: relocation is idempotent.
func TestRelocateTwice(t *testing.T) {
	img := sgdiskImage(t, 64*mib, gptCases[0].args...)
	disk := growCopy(t, img, 100*mib)
	if err := RelocateBackupGPT(context.Background(), openDisk(t, disk, 512)); err != nil {
		t.Fatal(err)
	}
	d := &countingDisk{Disk: openDisk(t, disk, 512)}
	if err := RelocateBackupGPT(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if d.writes != 0 {
		t.Errorf("%d writes on the second relocation", d.writes)
	}
}

// TestRelocateRecoversFromBackup damages the primary (header, then entry
// array) and checks the relocated disk equals the one relocated from the
// undamaged image.
func TestRelocateRecoversFromBackup(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk", "sfdisk")
	ctx := context.Background()
	img := sgdiskImage(t, 64*mib, gptCases[1].args...)
	want := growCopy(t, img, 200*mib)
	if err := RelocateBackupGPT(ctx, openDisk(t, want, 512)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		off    int64
		size   int64 // image size passed
		nosize bool
	}{
		{name: "header CRC", off: 512 + offDiskGUID},
		{name: "header signature", off: 512},
		{name: "entry array", off: 1024 + 200},
		{name: "header, image size unknown", off: 512 + offDiskGUID, nosize: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := growCopy(t, img, 200*mib)
			f, err := os.OpenFile(disk, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte{0x5a}, tc.off); err != nil {
				t.Fatal(err)
			}
			f.Close()
			size := int64(64 * mib)
			if tc.nosize {
				size = 0
			}
			err = RelocateBackupGPTFrom(ctx, openDisk(t, disk, 512), size)
			if tc.nosize {
				// The backup is in the middle of the disk; without the image
				// size it cannot be found (a header whose signature survives
				// would have told where).
				var re *RelocateError
				if !errors.As(err, &re) || !strings.Contains(err.Error(), "no good backup GPT") {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sgdiskVerify(t, disk)
			for _, r := range [][2]int64{{0, 512}, {512, 512}, {1024, 16 << 10}, {200*mib - 33*512, 33 * 512}} {
				if !bytes.Equal(testutil.ReadAt(t, disk, r[0], r[1]), testutil.ReadAt(t, want, r[0], r[1])) {
					t.Errorf("bytes at %d differ from the undamaged relocation", r[0])
				}
			}
		})
	}
}

// TestRelocateTruncatedImage: an image cut short (its backup lost) on a
// larger disk: the primary is good, the backup is rebuilt from it.
func TestRelocateTruncatedImage(t *testing.T) {
	img := sgdiskImage(t, 64*mib, "-n1:0:+10M")
	if err := os.Truncate(img, 32*mib); err != nil {
		t.Fatal(err)
	}
	tab, err := Read(openDisk(t, img, 512))
	if err != nil {
		t.Fatal(err)
	}
	if len(tab.Problems) == 0 || !strings.Contains(tab.Problems[0], "beyond the end of the disk") {
		t.Errorf("problems: %q", tab.Problems)
	}
	disk := growCopy(t, img, 100*mib)
	if err := RelocateBackupGPT(context.Background(), openDisk(t, disk, 512)); err != nil {
		t.Fatal(err)
	}
	sgdiskVerify(t, disk)
}

// TestRelocatePartitionBeyondDisk: a partition reaching past the new last
// usable LBA (a disk smaller than the image) is refused, nothing written.
func TestRelocatePartitionBeyondDisk(t *testing.T) {
	img := sgdiskImage(t, 64*mib, "-n1:0:0")
	disk := growCopy(t, img, 63*mib)
	d := &countingDisk{Disk: openDisk(t, disk, 512)}
	err := RelocateBackupGPT(context.Background(), d)
	var re *RelocateError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "beyond the last usable LBA") {
		t.Fatalf("err = %v", err)
	}
	if !strings.HasPrefix(err.Error(), "relocate the backup GPT: ") {
		t.Errorf("message %q", err)
	}
	if d.writes != 0 {
		t.Errorf("%d writes", d.writes)
	}
}

func TestRelocateMBRNoop(t *testing.T) {
	testutil.RequireCommand(t, "sfdisk")
	img := testutil.SparseFile(t, 64*mib)
	sfdisk(t, img, "start=2048, size=20480, type=83\nstart=22528, size=4096, type=82\n")
	d := &countingDisk{Disk: openDisk(t, img, 512)}
	if err := RelocateBackupGPT(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if d.writes != 0 {
		t.Errorf("%d writes on an MBR disk", d.writes)
	}
}

// sfdisk writes a table from a script.
func sfdisk(t testing.TB, path, script string) {
	t.Helper()
	cmd := "printf '%s' \"$1\" | sfdisk --no-reread --no-tell-kernel \"$2\""
	testutil.Run(t, "sh", "-c", cmd, "sh", script, path)
}

// TestRelocateRejectsBadInput: garbage, truncated and absurd headers give
// a clear error and no panic, and nothing is written.
func TestRelocateRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	good := sgdiskImage(t, 1*mib, "-n1:0:0")
	goodBytes, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	withHeader := func(edit func(h []byte)) []byte {
		b := append([]byte(nil), goodBytes...)
		edit(b[512:1024])
		binary.LittleEndian.PutUint32(b[512+offHeaderCRC:], 0)
		binary.LittleEndian.PutUint32(b[512+offHeaderCRC:], crc32.ChecksumIEEE(b[512:512+92]))
		// Damage the backup too, so nothing can be recovered.
		copy(b[len(b)-512:], "garbage!")
		return b
	}
	garbage := make([]byte, 4*mib)
	for i := range garbage {
		garbage[i] = byte(i*7 + i>>9)
	}
	for _, tc := range []struct {
		name  string
		b     []byte
		want  string
		exact bool // the disk is exactly b, not b followed by 1 MiB
	}{
		{"zeros", make([]byte, mib), "no partition table", false},
		{"garbage", garbage, "no partition table", false},
		{"too small", goodBytes[:700], "too small", true},
		{"truncated before the entries", goodBytes[:1536], "outside the disk", true},
		{"2^32-1 entries", withHeader(func(h []byte) { binary.LittleEndian.PutUint32(h[offNumEntries:], 0xFFFFFFFF) }), "exceeds", false},
		{"zero entries", withHeader(func(h []byte) { binary.LittleEndian.PutUint32(h[offNumEntries:], 0) }), "0 partition entries", false},
		{"entry size 100", withHeader(func(h []byte) { binary.LittleEndian.PutUint32(h[offEntrySize:], 100) }), "entry size 100", false},
		{"header size 600", withHeader(func(h []byte) { binary.LittleEndian.PutUint32(h[offHeaderSize:], 600) }), "header size", false},
		{"entries past the end", withHeader(func(h []byte) { binary.LittleEndian.PutUint64(h[offEntryLBA:], 1<<62) }), "outside the disk", false},
		{"first usable after last", withHeader(func(h []byte) { binary.LittleEndian.PutUint64(h[offFirstUsable:], 1<<40) }), "first usable", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append([]byte(nil), tc.b...)
			if !tc.exact {
				b = append(b, make([]byte, mib)...)
			}
			d := newMemDisk(b, 512)
			err := RelocateBackupGPT(ctx, d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if d.writes != 0 {
				t.Errorf("%d writes", d.writes)
			}
			if _, err := Read(d); err == nil {
				t.Errorf("Read accepted it")
			}
		})
	}
}

func TestRelocateSectorSizeMismatch(t *testing.T) {
	img := sgdiskImage(t, 4*mib, "-n1:0:0")
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	d := newMemDisk(b, 4096)
	err = RelocateBackupGPT(context.Background(), d)
	var se *SectorSizeError
	if !errors.As(err, &se) || *se != (SectorSizeError{512, 4096}) {
		t.Fatalf("err = %v", err)
	}
}

// TestRelocateHugeDisk: on a 3 TiB disk the protective MBR's size
// saturates at 0xFFFFFFFF, as sgdisk -e does it.
func TestRelocateHugeDisk(t *testing.T) {
	t.Parallel()
	img := sgdiskImage(t, 64*mib, gptCases[0].args...)
	const size = 3 << 40
	ours, theirs := growCopy(t, img, size), growCopy(t, img, size)
	if err := RelocateBackupGPT(context.Background(), openDisk(t, ours, 512)); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sgdisk", "-e", theirs)
	sgdiskVerify(t, ours)
	for _, r := range [][2]int64{{0, 512}, {512, 512}, {1024, 16 << 10}, {size - 33*512, 33 * 512}} {
		if !bytes.Equal(testutil.ReadAt(t, ours, r[0], r[1]), testutil.ReadAt(t, theirs, r[0], r[1])) {
			t.Errorf("bytes at %d differ from sgdisk -e's", r[0])
		}
	}
	if got := binary.LittleEndian.Uint32(testutil.ReadAt(t, ours, 446+12, 4)); got != 0xFFFFFFFF {
		t.Errorf("protective MBR size %#x", got)
	}
}

func TestFixProtectiveMBR(t *testing.T) {
	mk := func(es ...mbrEntry) []byte {
		b := make([]byte, 512)
		for i, e := range es {
			putMBREntry(b, i, e)
		}
		b[510], b[511] = 0x55, 0xAA
		return b
	}
	const oldTotal, sectors = 131072, 409600
	for _, tc := range []struct {
		name string
		in   []byte
		want [4]uint32 // sizes
	}{
		{"protective", mk(mbrEntry{typ: 0xEE, start: 1, sectors: oldTotal - 1}), [4]uint32{sectors - 1}},
		{"hybrid, 0xEE first", mk(mbrEntry{typ: 0xEE, start: 1, sectors: 39}, mbrEntry{typ: 0x83, start: 40, sectors: 100}), [4]uint32{39, 100}},
		{"hybrid, 0xEE to the end", mk(mbrEntry{typ: 0x83, start: 2048, sectors: 100}, mbrEntry{typ: 0xEE, start: 1, sectors: 2047}, mbrEntry{typ: 0xEE, start: 2148, sectors: oldTotal - 2148}), [4]uint32{100, 2047, sectors - 2148}},
		{"no table", make([]byte, 512), [4]uint32{sectors - 1}},
		{"MBR without 0xEE", mk(mbrEntry{typ: 0x83, start: 2048, sectors: 100}), [4]uint32{100}},
	} {
		out := fixProtectiveMBR(tc.in, oldTotal, sectors)
		var got [4]uint32
		for i, e := range parseMBREntries(out) {
			got[i] = e.sectors
		}
		if got != tc.want || !hasBootSignature(out) {
			t.Errorf("%s: sizes %v, want %v", tc.name, got, tc.want)
		}
	}
}
