package initramfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/byoi/byoi/imagecheck/internal/fixture"

	"github.com/byoi/byoi/internal/testutil"
)

func TestWalk(t *testing.T) {
	files := map[string]string{
		"usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko":      "nvme",
		"usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme-core.ko": "core",
		"init": "#!/bin/sh", ".profile": "x", "big": strings.Repeat("z", 300000),
	}
	main := fixture.Cpio(t, files)
	for name := range fixture.Compressors {
		t.Run(name, func(t *testing.T) {
			img := append(fixture.Microcode(t), fixture.Compress(t, main, name)...)
			seen := map[string]bool{}
			info, err := Walk(bytes.NewReader(img), Limits{}, func(e Entry) bool { seen[e.Name] = true; return false })
			if err != nil {
				t.Fatal(err)
			}
			if len(info.Segments) != 2 || info.Segments[0] != "cpio" || info.Segments[1] != name {
				t.Errorf("segments %v", info.Segments)
			}
			for f := range files {
				if !seen[f] {
					t.Errorf("%s not listed (%v)", f, seen)
				}
			}
			if !seen["kernel/x86/microcode/GenuineIntel.bin"] {
				t.Error("microcode not listed")
			}
			// Stopping early.
			info, err = Walk(bytes.NewReader(img), Limits{}, func(e Entry) bool { return strings.HasSuffix(e.Name, "nvme.ko") })
			if err != nil || !info.Stopped {
				t.Errorf("stop: %+v %v", info, err)
			}
			// Bounds.
			if _, err := Walk(bytes.NewReader(img), Limits{MaxBytes: 100000}, func(Entry) bool { return false }); err == nil {
				t.Error("byte limit not enforced")
			}
			if _, err := Walk(bytes.NewReader(img), Limits{MaxEntries: 3}, func(Entry) bool { return false }); err == nil {
				t.Error("entry limit not enforced")
			}
			if _, err := Walk(bytes.NewReader(img[:len(img)-40]), Limits{}, func(Entry) bool { return false }); err == nil {
				t.Error("truncated accepted")
			}
		})
	}
	if _, err := Walk(strings.NewReader("\x89LZO\x00junk"), Limits{}, func(Entry) bool { return false }); err == nil {
		t.Error("lzo accepted")
	}
}

// FuzzWalk walks arbitrary bytes as an initramfs.
func FuzzWalk(f *testing.F) {
	if _, err := testutil.LookPath("cpio"); err == nil {
		main := fixture.Cpio(f, map[string]string{"usr/lib/modules/6.1.0/kernel/nvme.ko": "n", "init": "x"})
		f.Add(main)
		for _, name := range []string{"gzip", "zstd", "xz", "lz4", "bzip2", "lzma"} {
			if _, err := testutil.LookPath(fixture.Compressors[name][0]); err == nil {
				f.Add(append(fixture.Microcode(f), fixture.Compress(f, main, name)...))
			}
		}
	}
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		Walk(bytes.NewReader(b), Limits{MaxBytes: 32 << 20}, func(Entry) bool { return false })
	})
}

// BenchmarkWalk walks a Debian-sized initramfs (a microcode archive, then
// zstd -q of 160 MiB of module-like data, the wanted module last: the
// worst case, no early stop): go test ./imagecheck/initramfs -bench Walk
// -benchtime 3x.
func BenchmarkWalk(b *testing.B) {
	files := map[string]string{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 160; i++ {
		chunk := make([]byte, 1<<20)
		for k := range chunk { // compresses about 2.5:1, as modules do
			chunk[k] = byte(rng.IntN(24)) + 'a'
		}
		files[fmt.Sprintf("usr/lib/modules/6.1.0/kernel/m%03d.ko", i)] = string(chunk)
	}
	files["zz/usr/lib/modules/6.1.0/kernel/nvme.ko"] = "n"
	img := fixture.Initramfs(b, files, "zstd")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		found := false
		if _, err := Walk(bytes.NewReader(img), Limits{}, func(e Entry) bool { found = strings.HasSuffix(e.Name, "nvme.ko"); return found }); err != nil || !found {
			b.Fatal(err, found)
		}
	}
	b.ReportMetric(float64(len(img))/(1<<20), "MiB-compressed")
}

// TestDecoderMemory: a stream that asks for a huge window or dictionary
// (the decoder would allocate it before decoding a byte) is refused. The
// streams are the real compressors' output with the size in their header
// raised, as a hostile image would.
func TestDecoderMemory(t *testing.T) {
	main := fixture.Cpio(t, map[string]string{"init": "#!/bin/sh"})
	for _, tc := range []struct {
		name  string
		patch func(b []byte) bool
	}{
		{"zstd", func(b []byte) bool {
			if b[4]&0x20 != 0 { // Single_Segment: no window descriptor
				return false
			}
			b[5] = 20 << 3 // windowLog 30: 1 GiB
			return true
		}},
		{"xz", func(b []byte) bool {
			hs := (int(b[12]) + 1) * 4 // the first block header
			if b[13]&3 != 0 || b[14] != 0x21 || b[15] != 1 {
				return false // not a lone LZMA2 filter
			}
			b[16] = 30 // 128 MiB
			binary.LittleEndian.PutUint32(b[12+hs-4:], crc32.ChecksumIEEE(b[12:12+hs-4]))
			return true
		}},
		{"lzma", func(b []byte) bool {
			binary.LittleEndian.PutUint32(b[1:], 1<<30)
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fixture.Compress(t, main, tc.name)
			if !tc.patch(c) {
				t.Fatalf("%s wrote a header this test does not know: %x", tc.name, c[:min(len(c), 24)])
			}
			_, err := Walk(bytes.NewReader(append(fixture.Microcode(t), c...)), Limits{}, func(Entry) bool { return false })
			if err == nil || !strings.Contains(err.Error(), "window") && !strings.Contains(err.Error(), "dictionary") {
				t.Errorf("a 1 GiB window or dictionary: %v", err)
			}
			t.Log(err)
		})
	}
}
