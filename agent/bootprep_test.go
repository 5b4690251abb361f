package agent

import (
	"context"
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/efiboot"
	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// fakeEFIVars makes a directory laid out like efivarfs: a network entry
// Boot0001 the machine booted from (BootCurrent), then a disk entry.
func fakeEFIVars(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	v := efiboot.Vars{Dir: dir}
	// A MAC-address device path entry, as OVMF's PXE entry is: the
	// messaging/MAC node (3, 11) then End.
	dp := []byte{3, 11, 37, 0}
	dp = append(dp, make([]byte, 33)...)
	dp = append(dp, 0x7f, 0xff, 4, 0)
	opt := binary.LittleEndian.AppendUint32(nil, 1)
	opt = binary.LittleEndian.AppendUint16(opt, uint16(len(dp)))
	opt = append(opt, 'P', 0, 'X', 0, 'E', 0, 0, 0)
	opt = append(opt, dp...)
	if err := v.Set(efiboot.BootName(1), opt); err != nil {
		t.Fatal(err)
	}
	if err := v.SetBootOrder([]uint16{1}); err != nil {
		t.Fatal(err)
	}
	cur := []byte{1, 0}
	if err := v.Set("BootCurrent", cur); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPrepareBootUEFI: with a Rebooter, the deployed disk's ESP gets a
// boot entry for efiBootloaderPath right after the network entry, before
// the final "done"; the BIOS key is the disk's GPT GUID in on-disk order;
// BeforeReboot gets both after the final status.
func TestPrepareBootUEFI(t *testing.T) {
	dir := fakeEFIVars(t)
	img := testutil.ESPImage(t, []string{"EFI/debian/grubx64.efi"}, true, 8)
	path := crashcheck.OldSystem(t, 512, 48*mib)
	rec := &recorder{}
	var got agentapi.BootInfo
	rb := &fakeRebooter{rec: rec}
	j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1, EFIBootloaderPath: `\EFI\debian\grubx64.efi`}
	_, err := Run(context.Background(), j, Env{Target: path, Report: ReporterFunc(rec.report), Rebooter: rb, EFIVarsDir: dir,
		BeforeReboot: func(_ context.Context, b agentapi.BootInfo) { got = b }})
	if err != nil {
		t.Fatal(err)
	}
	v := efiboot.Vars{Dir: dir}
	order, err := v.BootOrder()
	if err != nil || len(order) != 2 || order[0] != 1 {
		t.Fatalf("BootOrder %v %v", order, err)
	}
	entries, _ := v.Entries()
	e := entries[order[1]]
	if e.Description != "byoi deployed image" || !strings.Contains(efiboot.DevicePathString(e.DevicePath), `\EFI\debian\grubx64.efi`) {
		t.Errorf("entry %q %s", e.Description, efiboot.DevicePathString(e.DevicePath))
	}
	if got.EFIEntry == "" || !strings.HasPrefix(got.DiskKey, "gpt:") || len(got.DiskKey) != 36 {
		t.Errorf("boot info %+v", got)
	}
	disk, _ := os.ReadFile(path)
	if want := "gpt:" + hexOf(disk[512+56:512+72]); got.DiskKey != want {
		t.Errorf("disk key %s, want the GUID bytes at LBA 1 + 56: %s", got.DiskKey, want)
	}
}

// TestPrepareBootServerPath: a job without efiBootloaderPath gets the
// server's (OVH's server property) in its boot entry when the file is on
// the image's ESP, and the default loader path, not a failure, when not.
func TestPrepareBootServerPath(t *testing.T) {
	img := testutil.ESPImage(t, []string{"EFI/debian/grubx64.efi"}, true, 8)
	for _, c := range []struct{ server, want string }{
		{`\EFI\debian\grubx64.efi`, `\EFI\debian\grubx64.efi`},
		{`\efi\debian\GRUBX64.EFI`, `\efi\debian\GRUBX64.EFI`},
		{`\EFI\ubuntu\shimx64.efi`, `\EFI\BOOT\BOOTX64.EFI`},
	} {
		dir := fakeEFIVars(t)
		path := crashcheck.OldSystem(t, 512, 48*mib)
		j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1}
		var got agentapi.BootInfo
		_, err := Run(context.Background(), j, Env{Target: path, Report: ReporterFunc((&recorder{}).report), Rebooter: &fakeRebooter{rec: &recorder{}},
			EFIVarsDir: dir, Options: Options{ServerEFIBootloaderPath: c.server},
			BeforeReboot: func(_ context.Context, b agentapi.BootInfo) { got = b }})
		if err != nil {
			t.Fatalf("server path %s: %v", c.server, err)
		}
		v := efiboot.Vars{Dir: dir}
		order, err := v.BootOrder()
		if err != nil || len(order) != 2 {
			t.Fatalf("BootOrder %v %v", order, err)
		}
		entries, _ := v.Entries()
		if dp := efiboot.DevicePathString(entries[order[1]].DevicePath); !strings.Contains(dp, c.want) {
			t.Errorf("server path %s: entry %s, want %s", c.server, dp, c.want)
		}
		if !strings.HasSuffix(got.EFIEntry, " "+c.want) {
			t.Errorf("server path %s: reported entry %q", c.server, got.EFIEntry)
		}
	}
}

// TestPrepareBootNeverTouchesRealVars: without a real reboot, no efivarfs
// is written, whatever the machine booted with.
func TestPrepareBootNeverTouchesRealVars(t *testing.T) {
	env := Env{Rebooter: &fakeRebooter{}}
	if d := env.efiVarsDir(); d != "" {
		t.Fatalf("a test would write %s", d)
	}
	env.Rebooter = nil
	if d := env.efiVarsDir(); d != "" {
		t.Fatalf("no reboot, yet %s", d)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
