package fat

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// mkfs makes a FAT image with mkfs.fat and fills it with mtools.
func mkfs(t testing.TB, fatBits string, sizeKiB string) []byte {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.fat", "mmd", "mcopy")
	dir := t.TempDir()
	img := filepath.Join(dir, "esp.img")
	testutil.Run(t, "mkfs.fat", "-C", "-F", fatBits, "-n", "ESP", img, sizeKiB)
	f := filepath.Join(dir, "grubx64.efi")
	os.WriteFile(f, []byte("grub"), 0o644)
	testutil.Run(t, "mmd", "-i", img, "::/EFI", "::/EFI/debian", "::/EFI/BOOT", "::/EFI/a-rather-long-directory-name")
	testutil.Run(t, "mcopy", "-i", img, f, "::/EFI/debian/grubx64.efi")
	testutil.Run(t, "mcopy", "-i", img, f, "::/EFI/BOOT/BOOTX64.EFI")
	testutil.Run(t, "mcopy", "-i", img, f, "::/EFI/a-rather-long-directory-name/Some Long File Name.efi")
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLookup(t *testing.T) {
	for _, c := range []struct{ bits, kib string }{{"12", "2048"}, {"16", "32768"}, {"32", "65536"}} {
		t.Run("FAT"+c.bits, func(t *testing.T) {
			b := mkfs(t, c.bits, c.kib)
			fs, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]int{"12": 12, "16": 16, "32": 32}[c.bits]; fs.Type != want {
				t.Errorf("type FAT%d, want FAT%d", fs.Type, want)
			}
			if fs.Label != "ESP" {
				t.Errorf("label %q", fs.Label)
			}
			for path, want := range map[string]bool{
				`\efi\debian\grubx64.efi`:                                   true,
				`/EFI/DEBIAN/GRUBX64.EFI`:                                   true,
				`\EFI\BOOT\bootx64.efi`:                                     true,
				`/efi/A-Rather-Long-Directory-Name/some long file name.EFI`: true,
				`\efi\debian\shimx64.efi`:                                   false,
				`\efi\nothing\grubx64.efi`:                                  false,
				`\efi\debian\grubx64.efi\x`:                                 false,
			} {
				e, ok, err := fs.Lookup(path)
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				if ok != want {
					t.Errorf("%s: found %v, want %v", path, ok, want)
				}
				if ok && (e.Dir || e.Size != 4) {
					t.Errorf("%s: %+v", path, e)
				}
				if ok {
					if b, err := fs.ReadFile(e, 1<<20); err != nil || string(b) != "grub" {
						t.Errorf("%s: read %q, %v", path, b, err)
					}
					if _, err := fs.ReadFile(e, 3); err == nil {
						t.Errorf("%s: limit not enforced", path)
					}
				}
			}
		})
	}
}

func TestNotFAT(t *testing.T) {
	for _, b := range [][]byte{make([]byte, 4096), bytes.Repeat([]byte{0xff}, 4096)} {
		if _, err := Open(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Error("garbage accepted")
		}
	}
}

// FuzzLookup opens arbitrary bytes as FAT and looks paths up: errors are
// fine, panics and hangs are not.
func FuzzLookup(f *testing.F) {
	if _, err := testutil.LookPath("mkfs.fat"); err == nil {
		b := mkfs(f, "12", "1024")
		f.Add(b[:64<<10], `\EFI\debian\grubx64.efi`)
	}
	f.Add(make([]byte, 1024), "/a")
	f.Fuzz(func(t *testing.T, b []byte, path string) {
		fs, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if e, ok, err := fs.Lookup(path); err == nil && ok && !e.Dir {
			fs.ReadFile(e, 1<<20)
		}
	})
}

func TestReadDir(t *testing.T) {
	b := mkfs(t, "16", "32768")
	fs, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	root, _, _ := fs.Lookup("/")
	ents, err := fs.ReadDir(root)
	if err != nil || len(ents) != 1 || ents[0].Name != "EFI" || !ents[0].Dir {
		t.Fatalf("root: %+v, %v", ents, err)
	}
	efi, _, _ := fs.Lookup(`\EFI`)
	ents, err = fs.ReadDir(efi)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	if err != nil || len(ents) != 3 {
		t.Fatalf(`\EFI: %v, %v`, names, err)
	}
	f, _, _ := fs.Lookup(`\EFI\BOOT\BOOTX64.EFI`)
	if _, err := fs.ReadDir(f); err == nil {
		t.Error("a file listed as a directory")
	}
}

// TestSharedLoopingDirectories: a hostile FAT whose 60 directories all
// start at one cluster that chains to itself. Each listing of such a
// directory reads up to 4 MiB before it fails; the reads stop at 64 MiB
// in all, not 60 × 4 MiB (or, walked path by path, far more).
func TestSharedLoopingDirectories(t *testing.T) {
	testutil.RequireCommand(t, "mkfs.fat", "mmd")
	dir := t.TempDir()
	img := filepath.Join(dir, "esp.img")
	testutil.Run(t, "mkfs.fat", "-C", "-F", "16", "-n", "ESP", img, "32768")
	for i := 0; i < 60; i++ {
		testutil.Run(t, "mmd", "-i", img, fmt.Sprintf("::/D%02d", i))
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	const loop = 100 // a cluster that chains to itself
	binary.LittleEndian.PutUint16(b[fs.fatOffset+2*loop:], loop)
	dirs := 0
	for i := int64(0); i < fs.rootEntries; i++ {
		e := b[fs.rootOffset+32*i:][:32]
		if e[0] != 0 && e[0] != 0xE5 && e[11]&0x10 != 0 {
			binary.LittleEndian.PutUint16(e[26:], loop)
			dirs++
		}
	}
	if dirs != 60 {
		t.Fatalf("%d directories patched", dirs)
	}
	root, _, err := fs.Lookup("/")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := fs.ReadDir(root)
	if err != nil || len(ents) != 60 {
		t.Fatalf("root: %d entries, %v", len(ents), err)
	}
	var last error
	for _, e := range ents {
		if _, err := fs.ReadDir(e); err == nil {
			t.Errorf("%s: a looping directory listed", e.Name)
		} else {
			last = err
		}
		fs.Lookup("/" + e.Name + "/x")
	}
	if last == nil || !strings.Contains(last.Error(), "in all") || fs.dirBytes > maxDirTotal {
		t.Errorf("after 60 looping directories: %v, %d MiB read", last, fs.dirBytes>>20)
	}
}
