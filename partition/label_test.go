package partition

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// putFile copies the file src into path at off.
func putFile(t *testing.T, path, src string, off int64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestFindByLabel(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk", "mkfs.vfat", "genisoimage")
	dir := t.TempDir()
	fat16 := filepath.Join(dir, "fat16")
	testutil.Run(t, "mkfs.vfat", "-C", "-F", "16", "-s", "1", "-n", "CONFIG-2", fat16, "8192")
	fat32 := filepath.Join(dir, "fat32")
	testutil.Run(t, "mkfs.vfat", "-C", "-F", "32", "-s", "1", "-n", "config-2", fat32, "40960")
	other := filepath.Join(dir, "other")
	testutil.Run(t, "mkfs.vfat", "-C", "-n", "EFI", other, "4096")
	nolabel := filepath.Join(dir, "nolabel")
	testutil.Run(t, "mkfs.vfat", "-C", nolabel, "4096")
	if err := os.MkdirAll(filepath.Join(dir, "iso", "openstack", "latest"), 0o755); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "cd.iso")
	testutil.Run(t, "genisoimage", "-quiet", "-R", "-V", "config-2", "-o", iso, filepath.Join(dir, "iso"))

	for _, tc := range []struct {
		name   string
		fs     string
		wantOK bool
	}{
		{"fat16", fat16, true},
		{"fat32", fat32, true},
		{"iso9660", iso, true},
		{"other label", other, false},
		{"no label", nolabel, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := sgdiskImage(t, 100*mib, "-n1:0:+4M", "-t1:ef00", "-n2:0:+50M")
			putFile(t, img, nolabel, mib)
			putFile(t, img, tc.fs, 5*mib)
			p, ok, err := FindByLabel(openDisk(t, img, 512), "config-2")
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.wantOK || (ok && (p.Number != 2 || p.Start != 5*mib)) {
				t.Errorf("FindByLabel = %+v, %v", p, ok)
			}
		})
	}
}

func TestFindByLabelNoTable(t *testing.T) {
	_, _, err := FindByLabel(newMemDisk(make([]byte, mib), 512), "config-2")
	if err == nil {
		t.Fatal("no error on a disk without a table")
	}
}
