package initramfs

import (
	"bytes"
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
