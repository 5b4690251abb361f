package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/job"

	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/partition"
)

// espImage builds a GPT image whose ESP holds a FAT filesystem made by
// mkfs.fat with the given files, and MBR boot code when legacy is set.
func espImage(t *testing.T, files []string, legacy bool) []byte {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.fat", "mmd", "mcopy")
	img, err := testimage.GPT(24*mib, 512, []testimage.Part{
		{Name: "EFI system partition", Type: testimage.TypeESP, Start: 1 * mib, Size: 8 * mib},
		{Name: "root", Type: testimage.TypeLinux, Start: 9 * mib, Size: 12 * mib, Fill: testimage.FillMixed},
	}, 5)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fsImg := filepath.Join(dir, "esp")
	testutil.Run(t, "mkfs.fat", "-C", "-n", "ESP", fsImg, "8192")
	src := filepath.Join(dir, "f")
	os.WriteFile(src, []byte("efi"), 0o644)
	for _, f := range files {
		parts := strings.Split(strings.Trim(f, "/"), "/")
		for i := 1; i < len(parts); i++ {
			testutil.RunErr("mmd", "-i", fsImg, "::/"+strings.Join(parts[:i], "/")) // exists: fine
		}
		testutil.Run(t, "mcopy", "-i", fsImg, src, "::/"+strings.Join(parts, "/"))
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

type memDisk struct {
	*bytes.Reader
	b []byte
}

func (m memDisk) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m memDisk) Size() int64                              { return int64(len(m.b)) }
func (m memDisk) SectorSize() int64                        { return 512 }

func inspect(t *testing.T, img []byte, efiPath string) BootReport {
	t.Helper()
	d := memDisk{bytes.NewReader(img), img}
	tab, err := partition.Read(d)
	if err != nil {
		t.Fatal(err)
	}
	return InspectBoot(d, tab, efiPath)
}

func TestInspectBoot(t *testing.T) {
	img := espImage(t, []string{"EFI/debian/grubx64.efi", "EFI/BOOT/BOOTX64.EFI"}, true)
	r := inspect(t, img, `\efi\debian\GRUBX64.EFI`)
	if r.ESP == nil || r.ESP.Number != 1 || !r.RemovablePath || !r.BootloaderFound || !r.Legacy || r.BootloaderProblem != nil {
		t.Errorf("report %+v", r)
	}
	if len(r.Problems) != 0 {
		t.Errorf("problems %v", r.Problems)
	}
	r = inspect(t, img, `\EFI\ubuntu\shimx64.efi`)
	if r.BootloaderFound || r.BootloaderProblem == nil || !strings.Contains(r.BootloaderProblem.Error(), `\EFI\ubuntu\shimx64.efi not found`) {
		t.Errorf("missing bootloader not reported: %+v", r)
	}

	img = espImage(t, []string{"EFI/debian/grubx64.efi"}, false)
	r = inspect(t, img, "")
	if r.Legacy || r.RemovablePath || len(r.Problems) != 2 {
		t.Errorf("report %+v", r)
	}

	noESP, err := testimage.GPT(8*mib, 512, []testimage.Part{{Name: "root", Type: testimage.TypeLinux, Start: mib, Size: 4 * mib}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	r = inspect(t, noESP, `\efi\debian\grubx64.efi`)
	if r.ESP != nil || !strings.Contains(strings.Join(r.Problems, "\n"), "no EFI System Partition") || r.BootloaderProblem == nil {
		t.Errorf("report %+v", r)
	}
}

// TestDeployRefusesMissingEFIBootloader: a job naming a bootloader the
// image lacks fails before reboot and leaves no partition table.
func TestDeployRefusesMissingEFIBootloader(t *testing.T) {
	img := espImage(t, []string{"EFI/debian/grubx64.efi"}, true)
	url := serve(t, img, "")
	for _, tc := range []struct {
		path string
		ok   bool
	}{{`\efi\debian\grubx64.efi`, true}, {`\efi\redhat\shimx64.efi`, false}} {
		path := oldSystemDisk(t, 48*mib)
		disk := openFile(t, path)
		sum := sha256.Sum256(img)
		j := &job.Job{ImageURL: url, ImageType: "raw", Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256", DiskGroupID: 1, EFIBootloaderPath: tc.path}
		res, err := (&recorder{}).deployer().Deploy(context.Background(), j, disk)
		if tc.ok {
			if err != nil || !res.Boot.BootloaderFound {
				t.Fatalf("%s: %v", tc.path, err)
			}
			continue
		}
		if err == nil || job.Message(err) != `EFI bootloader \efi\redhat\shimx64.efi not found: no such file in the EFI System Partition` {
			t.Fatalf("err %v", err)
		}
		assertNoTable(t, path)
	}
}
