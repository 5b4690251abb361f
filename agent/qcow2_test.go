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

	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/partition"
)

// TestDeployQcow2 deploys a compressed qcow2 converted as it streams in
// (its tables ahead of its data), staged in memory and, with a memory
// reserve larger than the machine, on the disk's own tail.
func TestDeployQcow2(t *testing.T) {
	raw := testImage(t, 24*mib, 512)
	q, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(q)
	url := serve(t, q, "")
	for _, tc := range []struct {
		name    string
		reserve int64
		where   string
	}{{"streamed", 0, ""}, {"memory", 0, "memory"}, {"disk tail", 1 << 50, "disk tail"}} {
		t.Run(tc.name, func(t *testing.T) {
			path := oldSystemDisk(t, 96*mib)
			disk := openFile(t, path)
			rec := &recorder{}
			dep := rec.deployer()
			dep.MemoryReserve = tc.reserve
			dep.Qcow2Staging = tc.where != ""
			j := &job.Job{ImageURL: url, ImageType: "qcow2", Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256", DiskGroupID: 1,
				ConfigDrive: &job.ConfigDrive{Hostname: "q"}}
			res, err := dep.Deploy(context.Background(), j, disk)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(res.Staged, tc.where) || res.Streamed != (tc.where == "") || (tc.where == "") != (res.Staged == "") {
				t.Errorf("staged in %q (streamed %v), want %q", res.Staged, res.Streamed, tc.where)
			}
			got := make([]byte, len(raw)-3*mib)
			if _, err := disk.ReadAt(got, mib); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, raw[mib:len(raw)-2*mib]) {
				t.Error("disk differs from the image")
			}
			tab, err := partition.Read(disk)
			if err != nil || len(tab.Problems) > 0 || len(tab.Partitions) != 3 {
				t.Fatalf("table %+v, %v", tab, err)
			}
			// Nothing of the staged qcow2 remains past the ConfigDrive.
			end := tab.Partitions[2].Start + tab.Partitions[2].Size
			rest := make([]byte, disk.Size()-end-64*1024)
			disk.ReadAt(rest, end)
			if bytes.Contains(rest, []byte("QFI\xfb")) {
				t.Error("staged qcow2 left on the disk")
			}
		})
	}
}

// TestDeployQcow2ChecksumMismatch: staged in memory, a bad checksum leaves
// the disk untouched; staged on the disk's tail or streamed, it leaves no
// partition table (the old system's tail, or its data, was overwritten;
// the image's tables were held by the Guard, never written).
func TestDeployQcow2ChecksumMismatch(t *testing.T) {
	raw := testImage(t, 24*mib, 512)
	q, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, q, "")
	for _, tc := range []struct {
		reserve int64
		stage   bool
	}{{0, true}, {1 << 50, true}, {0, false}} {
		reserve := tc.reserve
		path := oldSystemDisk(t, 64*mib)
		before, _ := os.ReadFile(path)
		disk := openFile(t, path)
		j := &job.Job{ImageURL: url, ImageType: "qcow2", Checksum: strings.Repeat("0", 128), ChecksumType: "sha512", DiskGroupID: 1}
		dep := (&recorder{}).deployer()
		dep.MemoryReserve = reserve
		dep.Qcow2Staging = tc.stage
		_, err = dep.Deploy(context.Background(), j, disk)
		if err == nil || !strings.HasPrefix(job.Message(err), "Bad sha512 for downloaded file, got : ") {
			t.Fatalf("err %v", err)
		}
		if reserve == 0 && tc.stage {
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Error("memory staging: the disk changed")
			}
			continue
		}
		testutil.AssertNoTable(t, path)
	}
}

// TestDeployReusesImageConfigDrive: an image that already has a partition
// holding a config-2 filesystem gets the new ConfigDrive written there, and
// no partition is added.
func TestDeployReusesImageConfigDrive(t *testing.T) {
	img, err := testimage.GPT(24*mib, 512, []testimage.Part{
		{Name: "root", Type: testimage.TypeLinux, Start: 1 * mib, Size: 16 * mib, Fill: testimage.FillMixed},
		{Name: "cidata", Type: testimage.TypeLinux, Start: 17 * mib, Size: 4 * mib},
	}, 11)
	if err != nil {
		t.Fatal(err)
	}
	old, err := configdrive.Build(context.Background(), configdrive.Content{UUID: configdrive.DeriveUUID("old"), Hostname: "old"}, configdrive.ISO9660)
	if err != nil {
		t.Fatal(err)
	}
	copy(img[17*mib:], old)
	path := oldSystemDisk(t, 64*mib)
	disk := openFile(t, path)
	j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1, ConfigDrive: &job.ConfigDrive{Hostname: "new"}}
	res, err := (&recorder{}).deployer().Deploy(context.Background(), j, disk)
	if err != nil {
		t.Fatal(err)
	}
	if res.ConfigDrive == nil || res.ConfigDrive.Number != 2 || len(res.Table.Partitions) != 2 {
		t.Fatalf("config drive %+v, table %+v", res.ConfigDrive, res.Table)
	}
	part := make([]byte, 4*mib)
	if _, err := disk.ReadAt(part, 17*mib); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(part, []byte(`"hostname":"new"`)) || bytes.Contains(part, []byte(`"hostname":"old"`)) {
		t.Error("the image's config-2 partition does not hold the new ConfigDrive")
	}
}

// TestDeployQcow2PathLogged: the log says which path a qcow2 took: a
// qemu-img image converts as it streams ("qcow2: streaming conversion"),
// one with extended L2 entries (not streamable) is staged, the log naming
// the reason and the offset, and both end as the image.
func TestDeployQcow2PathLogged(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	raw := testImage(t, 24*mib, 512)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, opts, log string
		streamed        bool
	}{
		{"streamed", "compat=1.1", "qcow2: streaming conversion", true},
		{"extended L2", "compat=1.1,extended_l2=on", "qcow2: extended L2 entries at offset 0: staging", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "img.qcow2")
			testutil.Run(t, "qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", tc.opts, src, out)
			q, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			disk := openFile(t, oldSystemDisk(t, 64*mib))
			rec := &recorder{}
			j := &job.Job{ImageURL: serve(t, q, ""), ImageType: "qcow2", Checksum: sumHex(sha256.New(), q), ChecksumType: "sha256", DiskGroupID: 1}
			res, err := rec.deployer().Deploy(context.Background(), j, disk)
			if err != nil {
				t.Fatal(err)
			}
			rec.mu.Lock()
			log := rec.log.String()
			rec.mu.Unlock()
			if !strings.Contains(log, tc.log) || res.Streamed != tc.streamed || (res.Staged == "") != tc.streamed {
				t.Fatalf("streamed %v, staged in %q; log lacks %q:\n%s", res.Streamed, res.Staged, tc.log, log)
			}
			got := make([]byte, len(raw)-3*mib)
			if _, err := disk.ReadAt(got, mib); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, raw[mib:len(raw)-2*mib]) {
				t.Error("disk differs from the image")
			}
		})
	}
}
