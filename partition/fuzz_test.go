package partition

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
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

// addSeeds adds each fixture, a copy with its primary header damaged, and
// one claiming 2^32-1 entries with a good CRC.
func addSeeds(f *testing.F, withExtra bool) {
	for name, b := range seeds(f) {
		sel := seedSectorSize(name)
		ss := 512
		if sel == 1 {
			ss = 4096
		}
		damaged := append([]byte(nil), b...)
		damaged[ss+offDiskGUID] ^= 0xff
		absurd := append([]byte(nil), b...)
		h := absurd[ss : ss+92]
		binary.LittleEndian.PutUint32(h[offNumEntries:], 0xFFFFFFFF)
		binary.LittleEndian.PutUint32(h[offHeaderCRC:], 0)
		binary.LittleEndian.PutUint32(h[offHeaderCRC:], crc32.ChecksumIEEE(h))
		for _, img := range [][]byte{b, damaged, absurd} {
			if withExtra {
				f.Add(img, uint16(0), sel)
				f.Add(img, uint16(100), sel)
			} else {
				f.Add(img, sel)
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

// FuzzRead: any bytes read as a disk give a table or an error, never a
// panic, and a table's partitions are sane.
func FuzzRead(f *testing.F) {
	addSeeds(f, false)
	f.Fuzz(func(t *testing.T, data []byte, sel byte) {
		if len(data) > 4<<20 {
			return
		}
		DetectSectorSize(data)
		ss := fuzzSectorSize(sel)
		_ = CheckSectorSize(data, ss)
		d := newMemDisk(append([]byte(nil), data...), ss)
		tab, err := Read(d)
		if err != nil {
			return
		}
		if tab.Type != "gpt" && tab.Type != "mbr" {
			t.Fatalf("table type %q", tab.Type)
		}
		for _, p := range tab.Partitions {
			if p.Size <= 0 && tab.Type == "gpt" {
				t.Fatalf("partition %+v", p)
			}
		}
		if d.writes != 0 {
			t.Fatal("Read wrote")
		}
		_, _, _ = FindByLabel(d, "config-2")
	})
}

// FuzzRelocate: relocation of any bytes onto a larger disk either fails
// without writing or leaves a GPT with no problems whose backup is at the
// last LBA, and a second relocation writes nothing.
func FuzzRelocate(f *testing.F) {
	addSeeds(f, true)
	f.Fuzz(func(t *testing.T, data []byte, extra uint16, sel byte) {
		if len(data) > 4<<20 {
			return
		}
		ss := fuzzSectorSize(sel)
		img := int64(len(data)) / ss * ss
		disk := make([]byte, img+int64(extra)*ss)
		copy(disk, data[:img])
		d := newMemDisk(disk, ss)
		before := append([]byte(nil), disk...)
		ctx := context.Background()
		if err := RelocateBackupGPTFrom(ctx, d, img); err != nil {
			if !strings.HasPrefix(err.Error(), "Can not move backup GPT data structures to the end of disk. ") {
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
			return // an MBR that Read does not accept either (e.g. a bad EBR chain is a problem, not an error)
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
		if err := RelocateBackupGPTFrom(ctx, d, img); err != nil {
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
