package imaging_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// TestWriteOVAMemory deploys OVAs built in memory (the VMware stream
// layout with a footer, out of order grains, the qemu layout) in each
// member order onto an in-memory target and compares with the disk.
func TestWriteOVAMemory(t *testing.T) {
	const size = 6*ovaMiB + 3*512 // capacity not a multiple of the grain
	raw := ovaDisk(t, size, 1)
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
				vmdk, err := v.vm.StreamOptimized()
				if err != nil {
					t.Fatal(err)
				}
				ova := ovaPackage(t, layout, "disk1.vmdk", vmdk, size, "SHA256")
				dst := newMemTarget(16*ovaMiB, 0xFF)
				opts, verified := ovaHashVerify(ova)
				opts.DeclaredSize = int64(len(ova))
				opts.Logger = testutil.Logger(t)
				res, err := imaging.WriteOVA(t.Context(), testutil.ChunkyReader{R: bytes.NewReader(ova)}, dst, opts)
				if err != nil {
					t.Fatal(err)
				}
				if !verified() {
					t.Error("Ended not called")
				}
				if !bytes.Equal(dst.b[:size], raw) {
					t.Fatal("target differs from the disk")
				}
				if res.VirtualSize != size || res.Disk != "disk1.vmdk" || res.Table != "gpt" || res.Read != int64(len(ova)) {
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
