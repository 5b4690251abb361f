package ext4

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/imagecheck/vfs/vfstest"
	"github.com/byoi/byoi/internal/testutil"
)

// mkfs builds an ext filesystem holding tree with mke2fs -d.
func mkfs(t testing.TB, tree vfstest.Tree, sizeMiB string, args ...string) []byte {
	t.Helper()
	testutil.RequireCommand(t, "mke2fs")
	src := filepath.Join(t.TempDir(), "src")
	vfstest.Write(t, src, tree)
	return mkfsDir(t, src, sizeMiB, args...)
}

// mkfsDir builds an ext filesystem holding directory src.
func mkfsDir(t testing.TB, src, sizeMiB string, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	a := append([]string{"-q", "-F", "-L", "rootfs", "-U", "0b5e2c3c-1111-4222-8333-444455556666", "-d", src}, args...)
	testutil.Run(t, "mke2fs", append(a, img, sizeMiB+"M")...)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRead(t *testing.T) {
	testutil.RequireCommand(t, "mke2fs")
	tree := vfstest.Sample()
	src := filepath.Join(t.TempDir(), "src")
	vfstest.Write(t, src, tree)
	for name, args := range map[string][]string{
		"ext4":         {"-t", "ext4"},
		"ext4-1k":      {"-t", "ext4", "-b", "1024"},
		"ext4-meta_bg": {"-t", "ext4", "-O", "meta_bg,^resize_inode"},
		"ext4-32bit":   {"-t", "ext4", "-O", "^64bit,^metadata_csum"},
		"ext3":         {"-t", "ext3"},
		"ext2":         {"-t", "ext2"},
		"ext2-1k":      {"-t", "ext2", "-b", "1024"},
	} {
		t.Run(name, func(t *testing.T) {
			b := mkfsDir(t, src, "24", args...)
			f, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if f.UUID != "0b5e2c3c-1111-4222-8333-444455556666" || f.Label != "rootfs" {
				t.Errorf("uuid %q label %q", f.UUID, f.Label)
			}
			p, err := vfs.Probe(bytes.NewReader(b), int64(len(b)))
			if err != nil || p.UUID != f.UUID || p.Label != "rootfs" || p.Type != map[string]string{"ext2": "ext2", "ext2-1k": "ext2", "ext3": "ext3"}[name]+map[bool]string{true: "ext4"}[name[:4] == "ext4"] {
				t.Errorf("probe: %+v %v", p, err)
			}
			vfstest.Check(t, f, tree)
		})
	}
}

func TestNotExt(t *testing.T) {
	for _, b := range [][]byte{make([]byte, 4096), bytes.Repeat([]byte{0xff}, 4096)} {
		if _, err := Open(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Error("garbage accepted")
		}
	}
}

// FuzzExt4 opens arbitrary bytes as ext4 and walks them: errors are fine,
// panics, hangs and unbounded memory are not.
func FuzzExt4(f *testing.F) {
	if _, err := testutil.LookPath("mke2fs"); err == nil {
		small := vfstest.Tree{
			"etc/fstab": {Data: []byte("x")}, "lib": {Link: "usr/lib"},
			"usr/lib/modules/6.1.0/a.ko": {Data: []byte("m")}, "boot/k": {Data: make([]byte, 3000)},
		}
		for _, args := range [][]string{{"-t", "ext4", "-b", "1024", "-N", "32"}, {"-t", "ext2", "-b", "1024", "-N", "32"}} {
			b := mkfs(f, small, "1", args...)
			f.Add(trimZeros(b))
		}
	}
	f.Add(make([]byte, 2048))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := vfstest.Budget(b)
		fs, err := Open(r, r.Size())
		if err != nil {
			return
		}
		vfstest.Exercise(fs)
	})
}

// trimZeros drops the image's trailing zeros (a smaller seed; reads past
// the end are errors the reader must take).
func trimZeros(b []byte) []byte {
	n := len(b)
	for n > 0 && b[n-1] == 0 {
		n--
	}
	return b[:(n+1023)/1024*1024]
}
