package blockdev

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev/blockdevtest"

	"github.com/byoi/byoi/internal/testutil"
)

// isoHeader is the first 64 KiB of an ISO9660 filesystem labelled label.
func isoHeader(label string) []byte {
	b := make([]byte, probeSize)
	b[0x8000] = 1
	copy(b[0x8001:], "CD001")
	copy(b[0x8028:0x8048], label+strings.Repeat(" ", 32-len(label)))
	return b
}

// fatHeader is a FAT boot sector (FAT32 when fat32) labelled label.
func fatHeader(label string, fat32 bool) []byte {
	b := make([]byte, 512)
	b[510], b[511] = 0x55, 0xAA
	l := []byte(label + strings.Repeat(" ", 11-len(label)))
	if fat32 {
		b[0x42] = 0x29
		copy(b[0x47:], l)
		copy(b[0x52:], "FAT32   ")
	} else {
		b[0x26] = 0x29
		copy(b[0x2b:], l)
		copy(b[0x36:], "FAT16   ")
	}
	return b
}

func extHeader(label string) []byte {
	b := make([]byte, 4096)
	b[1024+0x38], b[1024+0x39] = 0x53, 0xEF
	copy(b[1024+0x78:], label)
	return b
}

func TestFindConfigDriveLabels(t *testing.T) {
	f := blockdevtest.Machine{Mountinfo: rescueMounts}
	for i, d := range []blockdevtest.Dev{
		{Name: "sda", Parts: []blockdevtest.Part{{Name: "sda1", Content: isoHeader("config-2")}}},
		{Name: "sdb", Parts: []blockdevtest.Part{{Name: "sdb1", Content: fatHeader("EFI", true)}, {Name: "sdb2", Content: isoHeader("config-2")}}},
		{Name: "sdc", Parts: []blockdevtest.Part{{Name: "sdc1", Content: fatHeader("CONFIG-2", true)}}},
		{Name: "sdd", Content: extHeader("config-2")},
		{Name: "sde", Parts: []blockdevtest.Part{{Name: "sde1", Content: fatHeader("config-2", false)}}},
		{Name: "sdf", Content: fatHeader("NO NAME", false)},
		{Name: "sdg", Content: isoHeader("config-3")},
		{Name: "sdh"},
	} {
		d.Devpath, d.DevNum, d.Sectors = sataPath(i), "8:"+strconv.Itoa(16*i), 1000
		for j := range d.Parts {
			d.Parts[j].DevNum = "8:" + strconv.Itoa(16*i+j+1)
		}
		f.Devs = append(f.Devs, d)
	}
	s := build(t, f, true)
	got, err := s.FindConfigDriveLabels("/dev/sda")
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	for _, p := range got {
		rel = append(rel, strings.TrimPrefix(p, s.DevRoot+"/"))
	}
	if want := "sdb2 sdc1 sdd sde1"; strings.Join(rel, " ") != want {
		t.Errorf("config-2 found on %v, want %s", rel, want)
	}
	got, err = s.FindConfigDriveLabels(filepath.Join(s.DevRoot, "sdb1"))
	if err != nil || len(got) != 4 || strings.Contains(strings.Join(got, " "), "sdb2") {
		t.Errorf("excluding by partition sdb1: %v, %v", got, err)
	}
	got, err = s.FindConfigDriveLabels("")
	if err != nil || len(got) != 5 {
		t.Errorf("without exclude: %v, %v", got, err)
	}
}

// TestFilesystemLabelJudges checks the label reader against filesystems
// made by the real tools (xorriso, mkfs.vfat, mkfs.ext4).
func TestFilesystemLabelJudges(t *testing.T) {
	testutil.RequireCommand(t, "xorriso", "mkfs.vfat", "mkfs.ext4")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	blockdevtest.WriteFile(t, filepath.Join(src, "openstack", "latest", "meta_data.json"), "{}")
	iso := filepath.Join(dir, "cd.iso")
	testutil.Run(t, "xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "config-2", "-o", iso, src)
	for _, tc := range []struct {
		name  string
		make  func(path string)
		label string
	}{
		{"iso", func(string) {}, "config-2"},
		{"fat16", func(p string) { testutil.Run(t, "mkfs.vfat", "-F", "16", "-n", "CONFIG-2", p) }, "CONFIG-2"},
		{"fat32", func(p string) { testutil.Run(t, "mkfs.vfat", "-F", "32", "-n", "CONFIG-2", p) }, "CONFIG-2"},
		{"ext4", func(p string) { testutil.Run(t, "mkfs.ext4", "-q", "-F", "-L", "config-2", p) }, "config-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := iso
			if tc.name != "iso" {
				p = testutil.SparseFile(t, 40<<20)
				tc.make(p)
			}
			if got := fsLabelOf(p); got != tc.label {
				t.Errorf("label %q, want %q", got, tc.label)
			}
		})
	}
	empty := testutil.SparseFile(t, 1<<20)
	if got := fsLabelOf(empty); got != "" {
		t.Errorf("empty file label %q", got)
	}
	if _, err := os.Stat(iso); err != nil {
		t.Fatal(err)
	}
}

func FuzzFilesystemLabel(f *testing.F) {
	f.Add(isoHeader("config-2"))
	f.Add(fatHeader("CONFIG-2", true))
	f.Add(fatHeader("config-2", false))
	f.Add(extHeader("x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = FilesystemLabel(b)
	})
}
