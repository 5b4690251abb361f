package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/byoi/byoi/job"

	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/partition"
)

// espImage is testutil.ESPImage with this package's seed.
func espImage(t *testing.T, files []string, legacy bool) []byte {
	t.Helper()
	return testutil.ESPImage(t, files, legacy, 5)
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
		testutil.AssertNoTable(t, path)
	}
}
