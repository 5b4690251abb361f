package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// Fail-safe deployments: each test proves one way a deployment could have
// left a disk that looks bootable but is not, or destroyed the old system
// for an image it was bound to refuse (the crash-point harness,
// crash_test.go, proves the crash-safety rules at every write).

// deployOnOld deploys data (as typ, with or without a ConfigDrive) onto a
// fresh old system of diskSize and returns the error, the disk's path and
// whether its bytes changed.
func deployOnOld(t *testing.T, data []byte, typ string, diskSize int64, cd bool, checksum bool) (error, string, bool) {
	t.Helper()
	path := crashcheck.OldSystem(t, 512, diskSize)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j := &job.Job{ImageURL: serve(t, data, ""), ImageType: typ, DiskGroupID: 1}
	if checksum {
		j.Checksum, j.ChecksumType = sumHex(sha256.New(), data), "sha256"
	}
	if cd {
		j.ConfigDrive = &job.ConfigDrive{Hostname: "h"}
	}
	_, err = (&recorder{}).run(t, j, path)
	after, rerr := os.ReadFile(path)
	if rerr != nil {
		t.Fatal(rerr)
	}
	return err, path, !bytes.Equal(before, after)
}

// TestExactSizeImageCrashPoints: an image exactly the disk's size, whose
// own backup GPT is the disk's last MiB, is held back until the commit
// (not only until the checksum): at every crash point of such a deploy the
// disk shows no table, the old system or the complete new one — never a
// table recoverable from the image's backup GPT over a partial image.
func TestExactSizeImageCrashPoints(t *testing.T) {
	const size = 32 * mib
	img := testImage(t, size, 512)
	j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", Checksum: sumHex(sha256.New(), img), ChecksumType: "sha256", DiskGroupID: 1}
	oldPath := crashcheck.OldSystem(t, 512, size)
	old, _ := os.ReadFile(oldPath)
	path := filepath.Join(t.TempDir(), "disk.img")
	run := func(at int) (int, error) {
		if err := os.WriteFile(path, old, 0o644); err != nil {
			t.Fatal(err)
		}
		d := openFile(t, path)
		defer d.Close()
		cd := &crashDisk{Device: d, crashAt: at}
		_, err := (&recorder{}).deployer().Deploy(context.Background(), j, cd)
		return cd.ops, err
	}
	n, err := run(-1)
	if err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(t.TempDir(), "ref.img")
	b, _ := os.ReadFile(path)
	os.WriteFile(ref, b, 0o644)
	systems := []crashcheck.System{{Name: "complete", Path: ref, Table: crashcheck.ReadTable(t, ref, 512)}, {Name: "old", Path: oldPath, Table: crashcheck.ReadTable(t, oldPath, 512)}}
	for at := 0; at < n; at++ {
		if _, err := run(at); err == nil {
			t.Fatalf("crash at %d: no error", at)
		}
		crashcheck.Check(t, path, systems, 512, at%8 == 0)
		if t.Failed() {
			t.Fatalf("crash at op %d of %d", at, n)
		}
	}
}

// TestQcow2WithoutTableRefusedUntouched: a qcow2 whose virtual disk holds
// no partition table is refused before anything is written, like the same
// bytes as raw, and the old system is left as it was.
func TestQcow2WithoutTableRefusedUntouched(t *testing.T) {
	raw := bytes.Repeat([]byte("not a disk image "), 1<<20/17*9)
	q, err := testimage.Qcow2(raw[:8*mib], 16)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"qcow2"} {
		err, _, changed := deployOnOld(t, q, typ, 32*mib, false, true)
		if err == nil || !strings.HasPrefix(job.Message(err), "image provided format is not of type raw because no partition table was found") {
			t.Errorf("%s: %v", typ, err)
		}
		if changed {
			t.Errorf("%s: the disk changed", typ)
		}
	}
}

// TestHybridISODeploys: a hybrid ISO (xorriso, partition 1 starting at
// LBA 0) is judged once, by the detector the format check and the
// partition code share: it is a disk image Linux reads, and it deploys,
// with a ConfigDrive (rather than passing the format check, being written,
// then refused with the disk wiped).
func TestHybridISODeploys(t *testing.T) {
	testutil.RequireCommand(t, "xorriso", "mkfs.fat", "sfdisk")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "root", "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "root", "boot", "hello"), bytes.Repeat([]byte("iso "), 1<<18), 0o644)
	efi := filepath.Join(dir, "efi.img")
	testutil.Run(t, "mkfs.fat", "-C", efi, "2048")
	iso := filepath.Join(dir, "hybrid.iso")
	testutil.Run(t, "xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-append_partition", "2", "0xef", efi, filepath.Join(dir, "root"))
	data, err := os.ReadFile(iso)
	if err != nil {
		t.Fatal(err)
	}
	start, _, typ := binary.LittleEndian.Uint32(data[446+8:]), 0, data[446+4]
	t.Logf("xorriso hybrid ISO: partition 1 type %#x starts at LBA %d", typ, start)
	err, path, _ := deployOnOld(t, data, "raw", 32*mib, true, true)
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	out := testutil.Run(t, "sfdisk", "--dump", path)
	if !strings.Contains(out, "label: dos") || strings.Count(out, "start=") < 3 {
		t.Errorf("sfdisk:\n%s", out)
	}
}

// gptWithMBR returns a GPT image whose MBR sector is patched by fix.
func gptWithMBR(t *testing.T, fix func(mbr []byte)) []byte {
	t.Helper()
	img := testImage(t, 16*mib, 512)
	fix(img[:512])
	return img
}

// TestProtectiveMBRVerdicts: the kernel reads the table byoi writes. A
// protective MBR of type 0x8E (Linux would read a DOS table with an LVM
// partition and ignore the GPT) is refused before writing, saying why; a
// protective entry starting at LBA 2 (Linux requires LBA 1) is repaired,
// said in a warning, and the deployed disk is a GPT to sfdisk and blkid.
func TestProtectiveMBRVerdicts(t *testing.T) {
	lvm := gptWithMBR(t, func(m []byte) { m[446+4] = 0x8E })
	err, _, changed := deployOnOld(t, lvm, "raw", 32*mib, true, true)
	if err == nil || !strings.Contains(job.Message(err), "no protective (0xEE) entry: Linux would read the MBR and ignore the GPT") || changed {
		t.Errorf("0x8E: err %v, changed %v", err, changed)
	}
	if c, _ := job.Describe(err); c != job.TableRefused {
		t.Errorf("code %s", c)
	}
	at2 := gptWithMBR(t, func(m []byte) {
		binary.LittleEndian.PutUint32(m[446+8:], 2)
		binary.LittleEndian.PutUint32(m[446+12:], binary.LittleEndian.Uint32(m[446+12:])-1)
	})
	path := crashcheck.OldSystem(t, 512, 32*mib)
	rec := &recorder{}
	j := &job.Job{ImageURL: serve(t, at2, ""), ImageType: "raw", DiskGroupID: 1, ConfigDrive: &job.ConfigDrive{Hostname: "h"}}
	if _, err := rec.run(t, j, path); err != nil {
		t.Fatalf("LBA 2: %v", err)
	}
	warned := false
	for _, e := range rec.events {
		if e.Code == job.WarnProtectiveMBR && strings.Contains(e.Message, "did not start at LBA 1") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no repair warning: %s", rec.all())
	}
	b, _ := os.ReadFile(path)
	if s := binary.LittleEndian.Uint32(b[446+8:]); s != 1 || b[446+4] != 0xEE {
		t.Errorf("protective entry type %#x start %d", b[446+4], s)
	}
	testutil.RequireCommand(t, "sfdisk", "blkid")
	if out := testutil.Run(t, "sfdisk", "--dump", path); !strings.Contains(out, "label: gpt") {
		t.Errorf("sfdisk does not see a GPT:\n%s", out)
	}
	if out, _, _ := testutil.RunErr("blkid", "-p", "-o", "export", path); !strings.Contains(out, "PTTYPE=gpt") {
		t.Errorf("blkid: %s", out)
	}
}

// TestZstdQcow2BigClusters: a zstd-compressed qcow2 with 2 MiB clusters
// (qemu-img's) deploys: its virtual disk's head is read through whole
// clusters, not through a reader that caps a cluster's output at 1 MiB.
func TestZstdQcow2BigClusters(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	raw := testImage(t, 16*mib, 512)
	dir := t.TempDir()
	src := filepath.Join(dir, "raw.img")
	os.WriteFile(src, raw, 0o644)
	q := filepath.Join(dir, "z.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=2M", src, q)
	data, _ := os.ReadFile(q)
	err, path, _ := deployOnOld(t, data, "qcow2", 32*mib, false, true)
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got[mib:len(raw)-2*mib], raw[mib:len(raw)-2*mib]) {
		t.Error("the disk differs from the image")
	}
}

// TestConfigDriveRoomCheckedFirst: failures known before writing are found
// before writing, the old system untouched: a raw image exactly the disk's
// size with a ConfigDrive (no room for it), an MBR image with four primary
// partitions and a ConfigDrive (no slot for it).
func TestConfigDriveRoomCheckedFirst(t *testing.T) {
	// Its root partition reaches the end of the usable area: no MiB left.
	exact, err := testimage.GPT(32*mib, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: 27*mib - 64<<10, Fill: testimage.FillMixed},
	}, 3)
	if err != nil {
		t.Fatal(err)
	}
	err, _, changed := deployOnOld(t, exact, "raw", 32*mib, true, true)
	if err == nil || !strings.HasPrefix(job.Message(err), "Could not create configdrive on disk.") || changed {
		t.Errorf("exact size: err %v, changed %v", err, changed)
	}
	// Without a ConfigDrive the same image deploys.
	if err, _, _ := deployOnOld(t, exact, "raw", 32*mib, false, true); err != nil {
		t.Errorf("exact size without a ConfigDrive: %v", err)
	}
	mbr := make([]byte, 16*mib)
	copy(mbr[:440], bytes.Repeat([]byte{0xEB}, 440))
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i:]
		e[4] = 0x83
		binary.LittleEndian.PutUint32(e[8:], uint32(2048+i*4096))
		binary.LittleEndian.PutUint32(e[12:], 4096)
	}
	mbr[510], mbr[511] = 0x55, 0xAA
	err, _, changed = deployOnOld(t, mbr, "raw", 32*mib, true, true)
	if err == nil || !strings.Contains(job.Message(err), "all 4 primary MBR partition slots are in use") || changed {
		t.Errorf("4 primaries: err %v, changed %v", err, changed)
	}
}

// TestTruncatedWithoutChecksumRefused: without a checksum, a download that
// ended early (a Content-Length shorter than the image, a body closed
// early) is refused, not deployed: the image's own GPT says where it ends.
func TestTruncatedWithoutChecksumRefused(t *testing.T) {
	img := testImage(t, 24*mib, 512)
	for _, mode := range []string{"short-length", "close-delimited"} {
		t.Run(mode, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				part := img[:len(img)/2]
				if mode == "short-length" {
					w.Header().Set("Content-Length", strconv.Itoa(len(part)))
				} else {
					w.Header().Set("Connection", "close")
					w.(http.Flusher).Flush() // no length: the body ends when the connection does
				}
				w.Write(part)
			}))
			defer srv.Close()
			path := crashcheck.OldSystem(t, 512, 48*mib)
			j := &job.Job{ImageURL: srv.URL, ImageType: "raw", DiskGroupID: 1}
			_, err := (&recorder{}).run(t, j, path)
			var te *partition.TruncatedError
			if err == nil || !errorsAs(err, &te) {
				t.Fatalf("err %v", err)
			}
			testutil.AssertNoTable(t, path)
		})
	}
}

// TestTailStagingKeepsOutOfLastMiB: a qcow2 staged on the disk's tail never
// uses the disk's last MiB, where the backup GPT goes; a disk too small for
// that stages elsewhere (the crash points of tail staging are the
// harness's, crash_test.go).
func TestTailStagingKeepsOutOfLastMiB(t *testing.T) {
	raw := testImage(t, 24*mib, 512)
	q, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 * mib
	// Big enough for the virtual disk and the stage only if the stage
	// may not use the last MiB... and one that is not.
	for _, tc := range []struct {
		disk int64
		tail bool
	}{{size, true}, {24*mib + (int64(len(q))+mib-1)/mib*mib, false}} {
		path := crashcheck.OldSystem(t, 512, max(tc.disk, 16*mib+9*mib+mib))
		if err := os.Truncate(path, tc.disk); err != nil {
			t.Fatal(err)
		}
		dep := (&recorder{}).deployer()
		dep.MemoryReserve = 1 << 60
		dep.Qcow2Staging = true
		dep.StagingDir = t.TempDir()
		j := &job.Job{ImageURL: serve(t, q, ""), ImageType: "qcow2", Checksum: sumHex(sha256.New(), q), ChecksumType: "sha256", DiskGroupID: 1}
		res, err := dep.Deploy(context.Background(), j, openFile(t, path))
		if err != nil {
			t.Fatal(err)
		}
		off, ok := strings.CutPrefix(res.Staged, "disk tail at offset ")
		if ok != tc.tail {
			t.Errorf("disk of %d bytes: staged in %q", tc.disk, res.Staged)
			continue
		}
		if ok {
			n, _ := strconv.ParseInt(off, 10, 64)
			if end := n + (int64(len(q))+mib-1)/mib*mib; end > tc.disk-mib {
				t.Errorf("the stage ends at %d, inside the last MiB of a %d-byte disk", end, tc.disk)
			}
		}
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// TestInspectConfigDriveRoom: `inspect --disk-size --configdrive` says, as
// a problem, that there is no room for the ConfigDrive exactly when a
// deployment would refuse the image for it (TestConfigDriveRoomCheckedFirst).
func TestInspectConfigDriveRoom(t *testing.T) {
	full, err := testimage.GPT(32*mib, 512, []testimage.Part{
		{Name: "root", Type: testimage.TypeLinux, Start: 1 * mib, Size: 31*mib - 64<<10},
	}, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		disk int64
		want bool
	}{{32 * mib, true}, {34 * mib, false}} {
		r, err := InspectImage(context.Background(), bytes.NewReader(full), int64(len(full)), InspectOptions{DiskSize: tc.disk, DiskSectorSize: 512, ConfigDrive: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := inspHasProblem(r, "Could not create configdrive on disk."); got != tc.want {
			t.Errorf("disk %d: ConfigDrive problem %v, want %v: %v", tc.disk, got, tc.want, r.Problems)
		}
	}
}
