package ova_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// TestWriteOVAMemory deploys OVAs built in memory (the VMware stream
// layout with a footer, out of order grains, the qemu layout) in each
// member order onto an in-memory target and compares with the disk.
func TestWriteOVAMemory(t *testing.T) {
	const size = 6*ovaMiB + 3*512 // capacity not a multiple of the grain
	raw := imagingtest.Disk(t, size, 1)
	for _, v := range []struct {
		name string
		vm   testimage.VMDK
	}{
		{"footer", testimage.VMDK{}},
		{"reverse", testimage.VMDK{Reverse: true}},
		{"nofooter", testimage.VMDK{NoFooter: true}},
		{"grain4k", testimage.VMDK{GrainSectors: 8}},
	} {
		for _, layout := range []ovaLayout{layoutVMware, layoutVirtualBox, layoutNoManifest} {
			t.Run(fmt.Sprintf("%s/%s", v.name, layout), func(t *testing.T) {
				v.vm.Raw, v.vm.Name = raw, "disk1.vmdk"
				vmdkImg, err := v.vm.StreamOptimized()
				if err != nil {
					t.Fatal(err)
				}
				ovaImg := ovaPackage(t, layout, "disk1.vmdk", vmdkImg, size, "SHA256")
				dst := imagingtest.NewMemTarget(16*ovaMiB, 0xFF)
				opts, verified := ovaHashVerify(ovaImg)
				opts.DeclaredSize = int64(len(ovaImg))
				opts.Logger = testutil.Logger(t)
				res, err := ova.Write(t.Context(), testutil.ChunkyReader{R: bytes.NewReader(ovaImg)}, dst, opts)
				if err != nil {
					t.Fatal(err)
				}
				if !verified() {
					t.Error("Ended not called")
				}
				if !bytes.Equal(dst.B[:size], raw) {
					t.Fatal("target differs from the disk")
				}
				if res.VirtualSize != size || res.Disk != "disk1.vmdk" || res.Table != "gpt" || res.Read != int64(len(ovaImg)) {
					t.Errorf("result %+v", res)
				}
				if (layout == layoutNoManifest) != (res.Manifest == "") {
					t.Errorf("manifest %q", res.Manifest)
				}
				t.Logf("result %+v", res)
			})
		}
	}
}
