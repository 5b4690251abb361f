package partition

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// seeds returns the gzipped fixtures in testdata by name, with the sector
// size they were made for.
func seeds(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob("testdata/*.img.gz")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no seeds in testdata: %v", err)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(zr)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(p), ".img.gz")] = b
	}
	return out
}

func seedSectorSize(name string) byte {
	if strings.HasPrefix(name, "4kn") {
		return 1
	}
	return 0
}

// splitImage cuts an image whose middle is zeros (sgdisk's, on a sparse
// file) into its head and tail, trailing zeros trimmed, and the number of
// zero sectors between them: fuzz inputs stay small (the fuzzer minimizes
// large inputs very slowly) and fuzzImage rebuilds the image.
func splitImage(img []byte, ss int64) (head, tail []byte, gap uint16) {
	half := int64(len(img)) / 2 / ss * ss
	head = bytes.TrimRight(img[:half], "\x00")
	// The tail starts at the first non-zero sector of the second half (the
	// backup entry array).
	t := half
	for t < int64(len(img)) && allZero(img[t:t+ss]) {
		t += ss
	}
	tail = bytes.TrimRight(img[t:], "\x00")
	hl := (int64(len(head)) + ss - 1) / ss * ss
	return head, tail, uint16((t - hl) / ss)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// fuzzImage is head, padded to whole sectors, gap zero sectors, and tail,
// padded to whole sectors.
func fuzzImage(head, tail []byte, gap uint16, ss int64) []byte {
	pad := func(n int) int64 { return (int64(n) + ss - 1) / ss * ss }
	hl, tl := pad(len(head)), pad(len(tail))
	img := make([]byte, hl+int64(gap)*ss+tl)
	copy(img, head)
	copy(img[hl+int64(gap)*ss:], tail)
	return img
}

// addSeeds adds each fixture, a copy with its primary header damaged, and
// one claiming 2^32-1 entries with a good CRC, split by splitImage.
func addSeeds(f *testing.F, withExtra bool) {
	for name, b := range seeds(f) {
		sel := seedSectorSize(name)
		ss := fuzzSectorSize(sel)
		damaged := append([]byte(nil), b...)
		damaged[ss+offDiskGUID] ^= 0xff
		absurd := append([]byte(nil), b...)
		h := absurd[ss : ss+92]
		binary.LittleEndian.PutUint32(h[offNumEntries:], 0xFFFFFFFF)
		binary.LittleEndian.PutUint32(h[offHeaderCRC:], 0)
		binary.LittleEndian.PutUint32(h[offHeaderCRC:], crc32.ChecksumIEEE(h))
		for _, img := range [][]byte{b, damaged, absurd} {
			head, tail, gap := splitImage(img, ss)
			if !bytes.Equal(fuzzImage(head, tail, gap, ss), img) {
				f.Fatalf("seed %s does not split", name)
			}
			if withExtra {
				f.Add(head, tail, gap, uint16(0), sel)
				f.Add(head, tail, gap, uint16(100), sel)
			} else {
				f.Add(head, tail, gap, sel)
			}
		}
	}
}

func fuzzSectorSize(sel byte) int64 {
	if sel&1 == 1 {
		return 4096
	}
	return 512
}

const maxFuzzPart = 256 << 10

// FuzzRead: any bytes read as a disk give a table or an error, never a
// panic, and a table's partitions are sane.
func FuzzRead(f *testing.F) {
	addSeeds(f, false)
	f.Fuzz(func(t *testing.T, head, tail []byte, gap uint16, sel byte) {
		if len(head) > maxFuzzPart || len(tail) > maxFuzzPart {
			return
		}
		ss := fuzzSectorSize(sel)
		data := fuzzImage(head, tail, gap%1024, ss)
		DetectSectorSize(data)
		_ = CheckSectorSize(data, ss)
		d := newMemDisk(data, ss)
		tab, err := Read(d)
		if err != nil {
			return
		}
		if tab.Type != "gpt" && tab.Type != "mbr" {
			t.Fatalf("table type %q", tab.Type)
		}
		if len(tab.Problems) == 0 && tab.Type == "gpt" {
			for _, p := range tab.Partitions {
				if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > d.Size() {
					t.Fatalf("partition %+v outside a %d-byte disk, no problem reported", p, d.Size())
				}
			}
		}
		_, _, _ = FindByLabel(d, "config-2")
		if d.writes != 0 {
			t.Fatal("Read wrote")
		}
	})
}

// FuzzRelocate: relocation of any bytes onto a larger disk either fails
// without writing or leaves a GPT with no problems whose backup is at the
// last LBA, and a second relocation writes nothing.
func FuzzRelocate(f *testing.F) {
	addSeeds(f, true)
	f.Fuzz(func(t *testing.T, head, tail []byte, gap, extra uint16, sel byte) {
		if len(head) > maxFuzzPart || len(tail) > maxFuzzPart {
			return
		}
		ss := fuzzSectorSize(sel)
		img := fuzzImage(head, tail, gap%1024, ss)
		disk := append(img, make([]byte, int64(extra%1024)*ss)...)
		d := newMemDisk(disk, ss)
		before := append([]byte(nil), disk...)
		ctx := context.Background()
		if err := RelocateBackupGPTFrom(ctx, d, int64(len(img))); err != nil {
			var re *RelocateError
			if !errors.As(err, &re) || !strings.HasPrefix(err.Error(), "relocate the backup GPT: ") {
				t.Fatalf("message %q", err)
			}
			if !bytes.Equal(before, disk) && !strings.Contains(err.Error(), "verify") {
				// Validation happens before the first write; only the
				// final read-back may fail after writing.
				t.Fatalf("failed after writing: %v", err)
			}
			return
		}
		tab, err := Read(d)
		if err != nil {
			return // an MBR: nothing was relocated
		}
		if tab.Type == "gpt" {
			if len(tab.Problems) > 0 && !tolerable(tab.Problems) {
				t.Fatalf("problems after relocation: %q", tab.Problems)
			}
			if tab.AlternateLBA != uint64(int64(len(disk))/ss-1) {
				t.Fatalf("backup at %d, disk of %d sectors", tab.AlternateLBA, int64(len(disk))/ss)
			}
		}
		d.writes = 0
		if err := RelocateBackupGPTFrom(ctx, d, int64(len(img))); err != nil {
			t.Fatalf("second relocation: %v", err)
		}
		if d.writes != 0 {
			t.Fatalf("second relocation wrote %d times", d.writes)
		}
	})
}

// tolerable tells whether every problem is one relocation leaves alone:
// overlapping partitions (entries are copied verbatim) or an MBR with
// partitions but no 0xEE entry (not ours to rewrite).
func tolerable(ps []string) bool {
	for _, p := range ps {
		if !strings.Contains(p, "overlap") && p != "no protective MBR" {
			return false
		}
	}
	return true
}

// TestSeedsRelocate: every fixture, intact or with its primary header
// damaged, relocates onto a larger disk and reads back without problems.
func TestSeedsRelocate(t *testing.T) {
	for name, b := range seeds(t) {
		ss := fuzzSectorSize(seedSectorSize(name))
		for _, damage := range []bool{false, true} {
			img := append([]byte(nil), b...)
			if damage {
				img[ss+offDiskGUID] ^= 0xff
			}
			d := newMemDisk(append(img, make([]byte, 100*ss)...), ss)
			if err := RelocateBackupGPTFrom(context.Background(), d, int64(len(b))); err != nil {
				t.Fatalf("%s (damaged %v): %v", name, damage, err)
			}
			tab, err := Read(d)
			if err != nil {
				t.Fatal(err)
			}
			if len(tab.Problems) > 0 || tab.FromBackup || tab.AlternateLBA != uint64(len(d.b))/uint64(ss)-1 {
				t.Errorf("%s (damaged %v): %+v", name, damage, tab)
			}
		}
	}
}
