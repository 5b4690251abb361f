package initramfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// Cpio packs the files (path -> content) into a newc archive with the
// real cpio, as mkinitramfs does (find . | cpio -o -H newc).
func Cpio(t testing.TB, files map[string]string) []byte {
	t.Helper()
	testutil.RequireCommand(t, "cpio")
	dir := t.TempDir()
	var list []string
	for p, c := range files {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		list = append(list, "./"+p)
	}
	cmd := exec.Command("cpio", "--quiet", "-o", "-H", "newc")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(".\n" + strings.Join(list, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	return out
}

// Compress runs the compressor command (gzip -c, zstd -c, xz -c, lz4 -l,
// bzip2 -c) over b.
func Compress(t testing.TB, b []byte, name string, args ...string) []byte {
	t.Helper()
	testutil.RequireCommand(t, name)
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

// Microcode is an early microcode archive padded as the kernel allows.
func Microcode(t testing.TB) []byte {
	b := Cpio(t, map[string]string{"kernel/x86/microcode/GenuineIntel.bin": strings.Repeat("u", 1000)})
	return append(b, make([]byte, 512-len(b)%512)...)
}

var compressors = map[string][]string{
	"gzip": {"gzip", "-c"}, "zstd": {"zstd", "-q", "-c"}, "xz": {"xz", "--check=crc32", "-c"},
	"lz4": {"lz4", "-q", "-l", "-c"}, "bzip2": {"bzip2", "-c"}, "lzma": {"xz", "--format=lzma", "-c"},
}

func TestWalk(t *testing.T) {
	files := map[string]string{
		"usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko":      "nvme",
		"usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme-core.ko": "core",
		"init": "#!/bin/sh", ".profile": "x", "big": strings.Repeat("z", 300000),
	}
	main := Cpio(t, files)
	for name, cmd := range compressors {
		t.Run(name, func(t *testing.T) {
			img := append(Microcode(t), Compress(t, main, cmd[0], cmd[1:]...)...)
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
		main := Cpio(f, map[string]string{"usr/lib/modules/6.1.0/kernel/nvme.ko": "n", "init": "x"})
		f.Add(main)
		for _, name := range []string{"gzip", "zstd", "xz", "lz4"} {
			if _, err := testutil.LookPath(compressors[name][0]); err == nil {
				f.Add(append(Microcode(f), Compress(f, main, compressors[name][0], compressors[name][1:]...)...))
			}
		}
	}
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		Walk(bytes.NewReader(b), Limits{MaxBytes: 32 << 20}, func(Entry) bool { return false })
	})
}
