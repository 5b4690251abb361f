package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// TestDeployOVA: an OVA (VMware and VirtualBox layouts) deploys through the
// whole pipeline with a ConfigDrive onto an old system: the disk holds the
// image byte for byte, the ConfigDrive is there, and a manifest mismatch
// fails like a checksum mismatch, leaving no table.
func TestDeployOVA(t *testing.T) {
	raw := testImage(t, 24*mib, 512)
	for _, style := range []testimage.OVFStyle{testimage.VMware, testimage.VirtualBox} {
		ova, err := testimage.OVA(raw, style)
		if err != nil {
			t.Fatal(err)
		}
		path := crashcheck.OldSystem(t, 512, 48*mib)
		rec := &recorder{}
		j := &job.Job{ImageURL: serve(t, ova, ""), ImageType: "ova", Checksum: sumHex(sha256.New(), ova), ChecksumType: "sha256", DiskGroupID: 1,
			ConfigDrive: &job.ConfigDrive{Hostname: "ova"}}
		res, err := rec.run(t, j, path)
		if err != nil {
			t.Fatalf("style %d: %v", style, err)
		}
		if res.DiskBytes != int64(len(raw)) || res.ImageBytes != int64(len(ova)) || res.ConfigDrive == nil {
			t.Errorf("result %+v", res)
		}
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got[mib:len(raw)-2*mib], raw[mib:len(raw)-2*mib]) {
			t.Error("the disk differs from the image")
		}
		if out := testutil.Run(t, "sgdisk", "-v", path); !strings.Contains(out, "No problems found") {
			t.Errorf("sgdisk -v: %s", out)
		}
	}
	// A manifest that does not match the disk.
	vmdk, _ := testimage.VMDK{Raw: raw, Name: "disk1.vmdk"}.StreamOptimized()
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: int64(len(raw))}})}
	disk := testimage.Member{Name: "disk1.vmdk", Data: vmdk}
	other := testimage.Member{Name: "disk1.vmdk", Data: []byte("not this")}
	bad, _ := testimage.Tar(ovf, testimage.Member{Name: "vm.mf", Data: testimage.Manifest("SHA256", false, ovf, other)}, disk)
	path := crashcheck.OldSystem(t, 512, 48*mib)
	_, err := (&recorder{}).run(t, &job.Job{ImageURL: serve(t, bad, ""), ImageType: "ova", DiskGroupID: 1}, path)
	if c, _ := job.Describe(err); c != job.ManifestMismatch {
		t.Errorf("manifest mismatch: %v", err)
	}
	testutil.AssertNoTable(t, path)
}

// TestDeployCompressedRaw: a raw image gzip, zstd, xz or bzip2 compressed
// deploys byte for byte like the image itself; the checksum is of the
// compressed bytes; the result says which compression it was.
func TestDeployCompressedRaw(t *testing.T) {
	raw := testImage(t, 24*mib, 512)
	var gz, zs, x bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(raw)
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw)
	zw.Close()
	xw, _ := xz.NewWriter(&x)
	xw.Write(raw)
	xw.Close()
	images := map[string][]byte{"gzip": gz.Bytes(), "zstd": zs.Bytes(), "xz": x.Bytes()}
	if _, err := exec.LookPath("bzip2"); err == nil || testutil.Strict() {
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bzip2: %v", err)
		}
		images["bzip2"] = out
	}
	for name, data := range images {
		t.Run(name, func(t *testing.T) {
			path := crashcheck.OldSystem(t, 512, 48*mib)
			j := &job.Job{ImageURL: serve(t, data, ""), ImageType: "raw", Checksum: sumHex(sha256.New(), data), ChecksumType: "sha256", DiskGroupID: 1}
			res, err := (&recorder{}).run(t, j, path)
			if err != nil {
				t.Fatal(err)
			}
			if res.Compression != name || res.ImageBytes != int64(len(data)) || res.DiskBytes != int64(len(raw)) {
				t.Errorf("result %+v", res)
			}
			got, _ := os.ReadFile(path)
			if !bytes.Equal(got[mib:len(raw)-2*mib], raw[mib:len(raw)-2*mib]) {
				t.Error("the disk differs from the image")
			}
			// The checksum of the decompressed bytes is not the one.
			j.Checksum = sumHex(sha256.New(), raw)
			if _, err := (&recorder{}).run(t, j, crashcheck.OldSystem(t, 512, 48*mib)); err == nil {
				t.Error("the checksum of the decompressed image was accepted")
			}
		})
	}
	// Nested compression is refused before anything is written.
	var nested bytes.Buffer
	gw = gzip.NewWriter(&nested)
	gw.Write(gz.Bytes())
	gw.Close()
	err, _, changed := deployOnOld(t, nested.Bytes(), "raw", 48*mib, false, true)
	if err == nil || changed {
		t.Errorf("nested: %v, changed %v", err, changed)
	}
	_ = context.Background
}

// TestInspectOVAAndCompressed: inspect shows an OVA's disks and VMDK
// header, and a compressed raw image's table from its decompressed head;
// a VMDK naming another file is reported refused.
func TestInspectOVAAndCompressed(t *testing.T) {
	raw := testImage(t, 16*mib, 512)
	ova, err := testimage.OVA(raw, testimage.VirtualBox)
	if err != nil {
		t.Fatal(err)
	}
	r, err := InspectImage(context.Background(), bytes.NewReader(ova), int64(len(ova)), InspectOptions{DeclaredType: "ova"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Format != "tar" || r.OVA == nil || len(r.OVA.Disks) != 1 || r.OVA.VMDK == nil || r.OVA.VMDK.CreateType != "streamOptimized" ||
		r.VirtualSize != int64(len(raw)) || r.OVA.Manifest != "vm.mf" || len(r.Problems) != 0 {
		t.Errorf("OVA report %+v %+v", r, r.OVA)
	}
	// Too big for the disk.
	r, _ = InspectImage(context.Background(), bytes.NewReader(ova), int64(len(ova)), InspectOptions{DiskSize: 8 * mib})
	if !inspHasProblem(r, "larger than") {
		t.Errorf("size: %v", r.Problems)
	}
	// A descriptor naming another file.
	vmdk, _ := testimage.VMDK{Raw: raw, Name: "disk1.vmdk", Descriptor: testimage.Descriptor("streamOptimized", "/etc/shadow", int64(len(raw))/512)}.StreamOptimized()
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: int64(len(raw))}})}
	bad, _ := testimage.Tar(ovf, testimage.Member{Name: "disk1.vmdk", Data: vmdk})
	r, _ = InspectImage(context.Background(), bytes.NewReader(bad), int64(len(bad)), InspectOptions{})
	if r.OVA == nil || !strings.Contains(r.OVA.Refused, "VMDK image refused") {
		t.Errorf("hostile extent: %+v", r.OVA)
	}
	var gz bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(raw)
	gw.Close()
	r, err = InspectImage(context.Background(), bytes.NewReader(gz.Bytes()), int64(gz.Len()), InspectOptions{DiskSectorSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	if r.Compression != "gzip" || r.Format != "gzip" || r.Table == nil || r.Table.Type != "gpt" || len(r.Problems) != 0 {
		t.Errorf("gzip report %+v (%v)", r, r.Problems)
	}
}
