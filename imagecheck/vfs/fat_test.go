package vfs_test

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/byoi/byoi/imagecheck/internal/fixture"
	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/imagecheck/vfs/vfstest"
	"github.com/byoi/byoi/internal/testutil"
)

// espFiles are an EFI System Partition's, with systemd-boot's entries.
var espFiles = map[string]string{
	"EFI/BOOT/BOOTX64.EFI":     "shim",
	"EFI/debian/grubx64.efi":   "grub",
	"loader/entries/a.conf":    "title A\nlinux /vmlinuz\n",
	"loader/entries/b.conf":    "title B\n",
	"6.1.0-18-amd64/initrd.im": string(bytes.Repeat([]byte("I"), 70000)),
}

// TestFAT reads a FAT filesystem made by mkfs.vfat and mcopy through the
// Driver and a Tree: names without regard to case, listings, whole and
// partial reads, and what FAT cannot have (links).
func TestFAT(t *testing.T) {
	img := fixture.FAT(t, espFiles, 8192)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	r := vfs.NewReader(context.Background(), bytes.NewReader(b), int64(len(b)), vfs.Limits{})
	d, err := vfs.OpenFAT(r, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	if d.Kind() != "vfat" || d.Label() != "ESP" {
		t.Errorf("kind %q label %q", d.Kind(), d.Label())
	}
	tr := vfs.NewTree(d)
	for p, want := range espFiles {
		got, err := tr.ReadFile(p, 1<<20)
		if err != nil || string(got) != want {
			t.Errorf("%s: %d bytes, %v", p, len(got), err)
		}
	}
	for _, p := range []string{"efi/boot/bootx64.efi", "/EFI/Debian/GRUBX64.EFI", "EFI/BOOT/../debian/grubx64.efi"} {
		if ok, err := tr.Exists(p); !ok || err != nil {
			t.Errorf("%s: %v %v", p, ok, err)
		}
	}
	if ok, err := tr.Exists("EFI/BOOT/grubx64.efi"); ok || err != nil {
		t.Errorf("absent file: %v %v", ok, err)
	}
	ents, err := tr.ReadDir("loader/entries", 10)
	if err != nil || len(ents) != 2 || ents[0].Node.Type != vfs.TypeRegular {
		t.Errorf("loader/entries: %+v %v", ents, err)
	}
	if _, err := tr.ReadDir("loader/entries", 1); err == nil {
		t.Error("ReadDir max not enforced")
	}
	if _, err := tr.ReadFile("6.1.0-18-amd64/initrd.im", 1000); err == nil {
		t.Error("ReadFile limit not enforced")
	}
	l, err := tr.Stat("6.1.0-18-amd64/initrd.im")
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 10)
	if n, err := d.ReadAt(l.Node, p, 69995); n != 5 || string(p[:5]) != "IIIII" || err == nil {
		t.Errorf("read at the end: %d %q %v", n, p[:n], err)
	}
	if _, err := d.Readlink(l.Node); err == nil {
		t.Error("a FAT file read as a link")
	}
}

// FuzzFAT opens arbitrary bytes as FAT through the Driver and walks them
// as the checks do (an ESP's loaders, its BLS entries): errors are fine,
// panics, hangs and unbounded memory are not.
func FuzzFAT(f *testing.F) {
	if _, err := testutil.LookPath("mcopy"); err == nil {
		img := fixture.FAT(f, map[string]string{"EFI/BOOT/BOOTX64.EFI": "shim", "loader/entries/a.conf": "title A\n", "etc/fstab": "x"}, 1024)
		b, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:64<<10])
	}
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := vfstest.Budget(b)
		d, err := vfs.OpenFAT(r, r.Size())
		if err != nil {
			return
		}
		vfstest.Exercise(d)
		tr := vfs.NewTree(d)
		tr.Exists("EFI/BOOT/BOOTX64.EFI")
		if ents, err := tr.ReadDir("EFI", 64); err == nil {
			for _, e := range ents {
				tr.ReadDir("EFI/"+e.Name, 64)
			}
		}
		tr.ReadDir("loader/entries", 64)
	})
}
