package qcow2_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// fuzzSeeds are small images (a few clusters of at most 16 KiB: the fuzzer
// minimises every new interesting input, which takes long on big ones): qemu-img-made when qemu-img is there, the
// pure Go testimage writer otherwise, plus hand-made headers.
func fuzzSeeds(f *testing.F) [][]byte { return fuzzSeedsT(f) }

func fuzzSeedsT(f testing.TB) [][]byte {
	var seeds [][]byte
	raw := make([]byte, 32<<10)
	for i := range raw {
		if (i/4096)%3 == 0 {
			raw[i] = byte(i * 7 / 13)
		}
	}
	copy(raw[len(raw)-5:], "LAST!")
	for _, cb := range []uint{9, 16} {
		if img, err := testimage.Qcow2(raw, cb); err == nil {
			seeds = append(seeds, img)
		}
	}
	if _, err := testutil.LookPath("qemu-img"); err == nil {
		dir := f.TempDir()
		src := filepath.Join(dir, "src.raw")
		if err := os.WriteFile(src, raw, 0o600); err != nil {
			f.Fatal(err)
		}
		for i, o := range []struct {
			opts string
			c    bool
		}{
			{"compat=0.10,cluster_size=512", false},
			{"compat=1.1,cluster_size=2048", false},
			{"compat=1.1,cluster_size=4096", true},
			{"compat=1.1,cluster_size=4096,compression_type=zstd", true},
			{"compat=1.1,cluster_size=16384,extended_l2=on", false},
		} {
			out := filepath.Join(dir, "seed"+string(rune('a'+i))+".qcow2")
			args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2", "-o", o.opts}
			if o.c {
				args = append(args, "-c")
			}
			if _, stderr, err := testutil.RunErr("qemu-img", append(args, src, out)...); err != nil {
				f.Fatalf("qemu-img: %v: %s", err, stderr)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				f.Fatal(err)
			}
			seeds = append(seeds, b)
		}
	}
	// Hand-made: a bare v2 and v3 header with no tables, a backing file.
	h := make([]byte, 512)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 2)
	binary.BigEndian.PutUint32(h[20:], 16)
	binary.BigEndian.PutUint64(h[24:], 1<<20)
	seeds = append(seeds, bytes.Clone(h))
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[100:], 112)
	seeds = append(seeds, bytes.Clone(h))
	binary.BigEndian.PutUint64(h[8:], 200)
	binary.BigEndian.PutUint32(h[16:], 10)
	copy(h[200:], "/etc/shadow")
	seeds = append(seeds, bytes.Clone(h))
	return seeds
}

// FuzzCheck feeds header validation and, for what it accepts,
// conversion to an in-memory target: nothing may panic, hang, or allocate
// without bound, and an accepted image converts or fails cleanly.
func FuzzCheck(f *testing.F) {
	qcow2.RegisterDecompressors()
	qcow2.RouteWarnings(nil)
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		if _, err := qcow2.ParseHeader(img); err != nil && !errors.Is(err, qcow2.ErrRefused) {
			t.Fatalf("ParseHeader error %v is not ErrRefused", err)
		}
		info, err := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", 0)
		if err != nil {
			return
		}
		if info.VirtualSize <= 0 || info.ClusterSize < 512 || info.ClusterSize > 2<<20 || info.HasBackingFile {
			t.Fatalf("accepted %+v", info)
		}
		if info.VirtualSize > 4<<20 {
			return // keep each run small; the checks above already ran
		}
		dst := imagingtest.NewMemTarget(info.VirtualSize, 0xEE)
		err = deploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.ConvertOptions{Workers: 2, ChunkSize: 1 << 20})
		if err != nil {
			var we *imaging.WriteError
			if !errors.As(err, &we) {
				t.Fatalf("conversion error %v is not a WriteError", err)
			}
			if _, ok := imaging.HasPartitionTable(dst.B[:min(len(dst.B), imaging.HeadSize)]); ok && len(dst.B) >= 1024 {
				t.Fatal("partition table left after a failed conversion")
			}
		}
	})
}
