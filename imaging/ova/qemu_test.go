package ova_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// TestWriteOVAQemu is the equivalence test: OVAs made of qemu-img's
// streamOptimized and monolithicSparse VMDKs and of VMware-layout VMDKs
// (header at the end: footer, GD_AT_END), in the member orders VMware
// (ovf, mf, vmdk) and VirtualBox (ovf, vmdk, mf) write, deployed onto a
// sparse file and onto a loop device whose every byte was 0xFF. The
// virtual disk on the target must equal qemu-img's own reading of the
// member (qemu-img convert -f vmdk -O raw) byte for byte; past the virtual
// disk the target is untouched but for its last MiB, cleared of the old
// backup GPT by the Guard it is written through (as a deployment writes).
func TestWriteOVAQemu(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "sfdisk")
	const size = 10*ovaMiB + 3*512 // not a multiple of the 64 KiB grain
	const targetSize = 16 * ovaMiB
	raw := imagingtest.Disk(t, size, 21)
	vmware, err := testimage.VMDK{Raw: raw, Name: "disk1.vmdk"}.StreamOptimized()
	if err != nil {
		t.Fatal(err)
	}
	vmdks := []struct {
		name        string
		vmdkImg     []byte
		gzip        bool
		createType  string
		footerAtEnd bool
	}{
		{"qemu-streamOptimized", ovaQemuVMDK(t, raw, "streamOptimized", "disk1.vmdk"), false, vmdk.StreamOptimized, false},
		{"qemu-monolithicSparse", ovaQemuVMDK(t, raw, "monolithicSparse", "disk1.vmdk"), false, vmdk.MonolithicSparse, false},
		{"qemu-monolithicSparse-gzip", ovaQemuVMDK(t, raw, "monolithicSparse", "disk1.vmdk"), true, vmdk.MonolithicSparse, false},
		{"vmware-footer", vmware, false, vmdk.StreamOptimized, true},
	}
	for _, v := range vmdks {
		// The judge: qemu-img's reading of the member.
		judge := ovaQemuRaw(t, v.vmdkImg, "disk1.vmdk")
		if !bytes.Equal(judge, raw) {
			t.Fatalf("%s: qemu-img reads another disk than the source", v.name)
		}
		info, err := vmdk.CheckHeader(v.vmdkImg[:64<<10], "disk1.vmdk", 0)
		if err != nil {
			t.Fatalf("%s: vmdk.CheckHeader: %v", v.name, err)
		}
		if info.CreateType != v.createType || info.Capacity != size || info.FooterAtEnd != v.footerAtEnd || info.GrainSize != 64<<10 {
			t.Errorf("%s: vmdk.CheckHeader = %+v", v.name, info)
		}
		for _, layout := range []ovaLayout{layoutVMware, layoutVirtualBox} {
			for _, loop := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/%s", v.name, layout, map[bool]string{false: "file", true: "loop-0xFF"}[loop])
				t.Run(name, func(t *testing.T) {
					member := v.vmdkImg
					opts := []ovaOpt{}
					if v.createType == vmdk.MonolithicSparse {
						opts = append(opts, ovaFormat(testimage.FormatSparse))
					}
					if v.gzip {
						member = dzGzip(t, v.vmdkImg)
						opts = append(opts, ovaCompression("gzip"))
					}
					ovaImg := ovaPackageOpts(t, layout, "disk1.vmdk", member, size, "SHA256", opts...)
					fill := byte(0)
					if loop {
						fill = 0xFF
					}
					dst, path := imagingtest.FileTarget(t, targetSize, fill, loop)
					o, verified := ovaHashVerify(ovaImg)
					o.DeclaredSize = int64(len(ovaImg))
					o.TargetName = path
					o.Logger = testutil.Logger(t)
					res, err := ovaDeploy(t.Context(), testutil.ChunkyReader{R: bytes.NewReader(ovaImg)}, dst, o)
					if err != nil {
						t.Fatal(err)
					}
					if !verified() || res.Manifest != "vm.mf" || res.CreateType != v.createType || res.Table != "gpt" {
						t.Errorf("result %+v (verified %v)", res, verified())
					}
					if err := dst.Close(); err != nil {
						t.Fatal(err)
					}
					got := testutil.ReadAt(t, path, 0, targetSize)
					if !bytes.Equal(got[:size], judge) {
						t.Fatal("target differs from qemu-img's reading of the VMDK")
					}
					rest := got[size : targetSize-ovaMiB]
					if !bytes.Equal(rest, bytes.Repeat([]byte{fill}, len(rest))) {
						t.Error("target changed past the virtual disk")
					}
					if !ovaZeros(got[targetSize-ovaMiB:]) {
						t.Error("last MiB of the target (old backup GPT) not cleared")
					}
					out := testutil.Run(t, "sfdisk", "-l", path)
					if !strings.Contains(out, "Disklabel type: gpt") {
						t.Errorf("sfdisk -l does not see the image's GPT:\n%s", out)
					}
				})
			}
		}
	}
}

func ovaZeros(b []byte) bool { return bytes.Equal(b, make([]byte, len(b))) }

// TestWriteOVALargeGrainsAndOrder: a VMware-layout VMDK with grains in
// reverse order (the format allows any order): the partition table is then
// checked after the rest was written, and the disk still ends exact.
func TestWriteOVAReverseOrderLoop(t *testing.T) {
	const size = 8 * ovaMiB
	raw := imagingtest.Disk(t, size, 22)
	vmdkImg, err := testimage.VMDK{Raw: raw, Name: "disk1.vmdk", Reverse: true}.StreamOptimized()
	if err != nil {
		t.Fatal(err)
	}
	if got := ovaQemuRaw(t, vmdkImg, "disk1.vmdk"); !bytes.Equal(got, raw) {
		t.Fatal("qemu-img reads another disk")
	}
	ovaImg := ovaPackage(t, layoutVMware, "disk1.vmdk", vmdkImg, size, "SHA1")
	dst, path := imagingtest.FileTarget(t, 12*ovaMiB, 0xFF, true)
	if _, err := ova.Write(t.Context(), bytes.NewReader(ovaImg), dst, ova.Options{Logger: testutil.Logger(t)}); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	if got := testutil.ReadAt(t, path, 0, size); !bytes.Equal(got, raw) {
		t.Fatal("target differs from the disk")
	}
}
