package vmdk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// fuzzSeeds are small VMDKs (a 64 KiB disk in 4 KiB grains, the
// smallest layout: the fuzzer mutates and minimises every seed): both
// builders' layouts, qemu-img's when it is there, and hand-made headers.
func fuzzSeeds(tb testing.TB) [][]byte {
	raw, err := testimage.GPT(64<<10, 512, nil, 5)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 40 << 10; i < 44<<10; i++ {
		raw[i] = byte(i * 7)
	}
	var seeds [][]byte
	for _, v := range []testimage.VMDK{
		{Raw: raw, Name: "disk.vmdk", GrainSectors: 8, Overhead: 1},
		{Raw: raw, Name: "disk.vmdk", GrainSectors: 8, Overhead: 1, Reverse: true},
		{Raw: raw, Name: "disk.vmdk", GrainSectors: 8, Overhead: 1, NoFooter: true},
		{Raw: raw, Name: "disk.vmdk", GrainSectors: 16, Overhead: 1, Descriptor: "createType=\"streamOptimized\"\nRW 128 SPARSE \"disk.vmdk\"\n"},
	} {
		b, err := v.StreamOptimized()
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	b, err := testimage.VMDK{Raw: raw, Name: "disk.vmdk", GrainSectors: 8, Overhead: 1}.MonolithicSparse()
	if err != nil {
		tb.Fatal(err)
	}
	seeds = append(seeds, b)
	if _, err := testutil.LookPath("qemu-img"); err == nil {
		dir := tb.TempDir()
		src := filepath.Join(dir, "src.raw")
		if err := os.WriteFile(src, raw, 0o600); err != nil {
			tb.Fatal(err)
		}
		for _, sub := range []string{"streamOptimized", "monolithicSparse"} {
			out := filepath.Join(dir, "disk.vmdk")
			if _, stderr, err := testutil.RunErr("qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat="+sub, src, out); err != nil {
				tb.Fatalf("qemu-img: %v: %s", err, stderr)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				tb.Fatal(err)
			}
			seeds = append(seeds, b)
		}
	}
	// Hand-made: a header alone, a descriptor-only file, a grain bomb.
	h := testimage.VMDKHeader(3, 1|1<<16|1<<17, 128, 8, 1, 1, 0xFFFFFFFFFFFFFFFF, 2, 1)
	seeds = append(seeds, append(bytes.Clone(h), []byte("createType=\"streamOptimized\"\nRW 128 SPARSE \"disk.vmdk\"\n")...))
	seeds = append(seeds, []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 128 FLAT \"/etc/shadow\" 0\n"))
	bomb := padTo(append(bytes.Clone(h), []byte("createType=\"streamOptimized\"\nRW 128 SPARSE \"disk.vmdk\"\n")...), 1024)
	bomb = append(bomb, testimage.GrainMarker(0, testimage.Zlib(make([]byte, 64<<10)))...)
	seeds = append(seeds, append(bomb, make([]byte, 512)...))
	return seeds
}

func padTo(b []byte, n int) []byte {
	if len(b) < n {
		b = append(b, make([]byte, n-len(b))...)
	}
	return b
}

// FuzzStream feeds the stream reader (header, descriptor, markers, tables,
// grains, inflation): nothing may panic, hang or allocate without bound;
// errors are refusals (ErrRefused) or a truncation, and an accepted disk has
// its grains inside its capacity.
func FuzzStream(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := CheckHeader(b, "disk.vmdk", 16<<20); err != nil {
			var se *imaging.SizeError
			if !errors.Is(err, ErrRefused) && !errors.As(err, &se) {
				t.Fatalf("CheckHeader error %v is not a refusal", err)
			}
		}
		for _, max := range []int64{int64(len(b)), 0} {
			s, err := Open(bytes.NewReader(b), "disk.vmdk", 16<<20, max)
			if err != nil {
				var se *imaging.SizeError
				if !errors.Is(err, ErrRefused) && !errors.As(err, &se) {
					t.Fatalf("open error %v is not a refusal", err)
				}
				return
			}
			if s.info.Capacity <= 0 || s.info.Capacity > 16<<20 || s.grainBytes < 4096 || s.grainBytes > 1<<20 {
				t.Fatalf("accepted %+v", s.info)
			}
			var infl Inflater
			g := &Grain{}
			buf := make([]byte, s.grainBytes)
			for range 100000 {
				err := s.Next(g)
				if err == io.EOF {
					if err := s.Drain(); err != nil && !errors.Is(err, ErrRefused) {
						t.Fatalf("drain error %v", err)
					}
					break
				}
				if err != nil {
					if !errors.Is(err, ErrRefused) {
						t.Fatalf("error %v is not a refusal", err)
					}
					break
				}
				if g.Off < 0 || g.Off%s.grainBytes != 0 || g.Off >= s.info.Capacity {
					t.Fatalf("grain at %d outside a disk of %d", g.Off, s.info.Capacity)
				}
				if g.Compressed {
					if n, err := infl.Inflate(buf, g.Comp); err == nil && n > len(buf) {
						t.Fatalf("inflated %d bytes into %d", n, len(buf))
					}
				} else if int64(len(g.Data)) > s.grainBytes || g.Off+int64(len(g.Data)) > s.info.Capacity {
					t.Fatalf("raw grain of %d bytes at %d", len(g.Data), g.Off)
				}
			}
		}
	})
}

// TestVMDKFuzzSeedsRead: the seeds themselves read (a seed that is
// refused would fuzz only the refusal).
func TestVMDKFuzzSeedsRead(t *testing.T) {
	for i, s := range fuzzSeeds(t)[:5] {
		if len(s) > 32<<10 {
			t.Errorf("seed %d is %d bytes", i, len(s))
		}
		if _, _, err := readAll(s, "disk.vmdk"); err != nil {
			t.Errorf("seed %d: %v", i, err)
		}
	}
}
