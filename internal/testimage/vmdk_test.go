package testimage_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// TestStreamOptimizedReadByQemu: qemu-img, the independent judge, reads
// the VMware-layout VMDKs this package builds back to the same disk.
func TestStreamOptimizedReadByQemu(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	const mib = 1 << 20
	raw, err := testimage.GPT(6*mib+64<<10, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 1 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 2 * mib, Size: 3 * mib, Fill: testimage.FillMixed},
	}, 3)
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, make([]byte, 1536)...) // capacity not a multiple of the grain
	for _, c := range []struct {
		name string
		v    testimage.VMDK
	}{
		{"vmware", testimage.VMDK{Raw: raw}},
		{"reverse", testimage.VMDK{Raw: raw, Reverse: true}},
		{"nofooter", testimage.VMDK{Raw: raw, NoFooter: true}},
		{"grain16", testimage.VMDK{Raw: raw, GrainSectors: 16}},
		{"small-overhead", testimage.VMDK{Raw: raw, GrainSectors: 8, Overhead: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.v.Name = "disk.vmdk"
			img, err := c.v.StreamOptimized()
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "disk.vmdk")
			if err := os.WriteFile(p, img, 0o644); err != nil {
				t.Fatal(err)
			}
			out := testutil.Run(t, "qemu-img", "info", p)
			if !strings.Contains(out, "streamOptimized") || !strings.Contains(out, fmt.Sprintf("(%d bytes)", len(raw))) {
				t.Errorf("qemu-img info:\n%s", out)
			}
			testutil.Run(t, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", p, filepath.Join(dir, "out.raw"))
			got, err := os.ReadFile(filepath.Join(dir, "out.raw"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, raw) {
				t.Fatal("qemu-img reads another disk")
			}
		})
	}
}

// TestMonolithicSparseReadByQemu: the same for the monolithicSparse
// builder.
func TestMonolithicSparseReadByQemu(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	raw, err := testimage.GPT(3<<20, 512, []testimage.Part{
		{Name: "root", Type: testimage.TypeLinux, Start: 1 << 20, Size: 1 << 20, Fill: testimage.FillMixed},
	}, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []testimage.VMDK{{Raw: raw}, {Raw: raw, GrainSectors: 8, Overhead: 1}} {
		img, err := v.MonolithicSparse()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		p := filepath.Join(dir, "disk.vmdk")
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		if out := testutil.Run(t, "qemu-img", "check", p); !strings.Contains(out, "No errors") {
			t.Errorf("qemu-img check:\n%s", out)
		}
		testutil.Run(t, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", p, filepath.Join(dir, "out.raw"))
		got, err := os.ReadFile(filepath.Join(dir, "out.raw"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, raw) {
			t.Fatalf("grain %d: qemu-img reads another disk", v.GrainSectors)
		}
	}
}

// TestOVFAndTar: the generated descriptor is XML qemu-img never sees;
// check the archive round trip and the manifest format.
func TestManifestFormats(t *testing.T) {
	m := testimage.Member{Name: "a.vmdk", Data: []byte("abc")}
	if got := string(testimage.Manifest("SHA256", false, m)); got != "SHA256(a.vmdk)= ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n" {
		t.Errorf("manifest %q", got)
	}
	if got := string(testimage.Manifest("SHA1", true, m)); got != "SHA1 (a.vmdk) = a9993e364706816aba3e25717850c26c9cd0d89d\n" {
		t.Errorf("manifest %q", got)
	}
	b, err := testimage.Tar(m)
	if err != nil || len(b)%10240 != 0 {
		t.Fatalf("tar: %d bytes, %v", len(b), err)
	}
}
