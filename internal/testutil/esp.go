package testutil

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testimage"
)

const mib = 1 << 20

// ESPImage builds a 24 MiB GPT image: partition 1 an 8 MiB EFI System
// Partition holding a FAT filesystem made by mkfs.fat with the given files
// (paths with slashes, each holding "efi"), partition 2 a 12 MiB root of
// mixed data, and, when legacy is set, boot code in the MBR. It needs
// mkfs.fat and mtools (skips, or fails in CI, without them).
func ESPImage(t testing.TB, files []string, legacy bool, seed uint64) []byte {
	t.Helper()
	RequireCommand(t, "mkfs.fat", "mmd", "mcopy")
	img, err := testimage.GPT(24*mib, 512, []testimage.Part{
		{Name: "EFI system partition", Type: testimage.TypeESP, Start: 1 * mib, Size: 8 * mib},
		{Name: "root", Type: testimage.TypeLinux, Start: 9 * mib, Size: 12 * mib, Fill: testimage.FillMixed},
	}, seed)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fsImg := filepath.Join(dir, "esp")
	Run(t, "mkfs.fat", "-C", "-n", "ESP", fsImg, "8192")
	src := filepath.Join(dir, "f")
	if err := os.WriteFile(src, []byte("efi"), 0o644); err != nil {
		t.Fatal(err)
	}
	made := map[string]bool{}
	for _, f := range files {
		parts := strings.Split(strings.Trim(f, "/"), "/")
		for i := 1; i < len(parts); i++ {
			d := "::/" + strings.Join(parts[:i], "/")
			if !made[d] {
				Run(t, "mmd", "-i", fsImg, d)
				made[d] = true
			}
		}
		Run(t, "mcopy", "-i", fsImg, src, "::/"+strings.Join(parts, "/"))
	}
	b, err := os.ReadFile(fsImg)
	if err != nil {
		t.Fatal(err)
	}
	copy(img[1*mib:], b)
	if legacy {
		copy(img[0:440], bytes.Repeat([]byte{0xEB, 0x63, 0x90}, 100))
	}
	return img
}
