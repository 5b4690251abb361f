package xfs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/imagecheck/vfs/vfstest"
	"github.com/byoi/byoi/internal/testutil"
)

// MkfsXFS builds a sparse XFS image of 320 MiB holding tree and returns
// its path.
func MkfsXFS(t testing.TB, tree vfstest.Tree, args ...string) string {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.xfs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	vfstest.Write(t, src, tree)
	proto := filepath.Join(dir, "proto")
	if err := os.WriteFile(proto, []byte(vfstest.Proto(tree, src)), 0o644); err != nil {
		t.Fatal(err)
	}
	img := testutil.SparseFile(t, 320<<20)
	a := append([]string{"-q", "-f", "-L", "xroot", "-m", "uuid=7d9b7f3e-1a2b-4c3d-8e4f-5a6b7c8d9e0f", "-p", proto}, args...)
	testutil.Run(t, "mkfs.xfs", append(a, img)...)
	return img
}

func TestRead(t *testing.T) {
	tree := vfstest.Sample()
	for name, args := range map[string][]string{
		"v5":          nil,
		"v5-dirblk8k": {"-n", "size=8192"},
		"v5-inode1k":  {"-i", "size=1024"},
		"v4":          {"-m", "crc=0,finobt=0,uuid=7d9b7f3e-1a2b-4c3d-8e4f-5a6b7c8d9e0f"},
		"v5-nrext64":  {"-i", "nrext64=1"},
	} {
		t.Run(name, func(t *testing.T) {
			img := MkfsXFS(t, tree, args...)
			fh, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			st, _ := fh.Stat()
			f, err := Open(fh, st.Size())
			if err != nil {
				t.Fatal(err)
			}
			if f.UUID != "7d9b7f3e-1a2b-4c3d-8e4f-5a6b7c8d9e0f" || f.Label != "xroot" {
				t.Errorf("uuid %q label %q", f.UUID, f.Label)
			}
			if p, err := vfs.Probe(fh, st.Size()); err != nil || p.Type != "xfs" || p.UUID != f.UUID || p.Label != "xroot" {
				t.Errorf("probe %+v %v", p, err)
			}
			vfstest.Check(t, f, tree)
		})
	}
}

func TestNotXFS(t *testing.T) {
	for _, b := range [][]byte{make([]byte, 4096), append([]byte("XFSB"), make([]byte, 4092)...)} {
		if _, err := Open(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Error("garbage accepted")
		}
	}
}

// FuzzXFS opens arbitrary bytes as XFS and walks them: errors are fine,
// panics, hangs and unbounded memory are not. The seed is the head of a
// real filesystem.
func FuzzXFS(f *testing.F) {
	if _, err := testutil.LookPath("mkfs.xfs"); err == nil {
		img := MkfsXFS(f, vfstest.Tree{
			"etc/fstab": {Data: []byte("x")}, "lib": {Link: "usr/lib"},
			"usr/lib/modules/6.1.0/a.ko": {Data: []byte("m")}, "boot/k": {Data: make([]byte, 3000)},
			"usr/share/long": {Link: strings.Repeat("x/", 100)},
		})
		b, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		// The first AG's head holds the superblock, the root and the
		// first inodes and directories.
		b = b[:1<<20]
		n := len(b)
		for n > 0 && b[n-1] == 0 {
			n--
		}
		f.Add(b[:(n+4095)/4096*4096])
	}
	f.Add(append([]byte("XFSB"), make([]byte, 4092)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := vfstest.Budget(b)
		fs, err := Open(r, r.Size())
		if err != nil {
			return
		}
		vfstest.Exercise(fs)
	})
}
