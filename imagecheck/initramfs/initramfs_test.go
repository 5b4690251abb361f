package initramfs

import (
	"bytes"
	"fmt"
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
		for _, name := range []string{"gzip", "zstd", "xz", "lz4"} {
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
