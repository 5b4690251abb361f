package ova_test

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// TestParseOVFStyles: descriptors as VirtualBox, VMware and OVF 2.0
// producers write them.
func TestParseOVFStyles(t *testing.T) {
	for _, c := range []struct {
		style   testimage.OVFStyle
		version string
	}{
		{testimage.VirtualBox, "1"}, {testimage.VMware, "1"}, {testimage.OVF2, "2"},
	} {
		ovf := testimage.OVF(c.style, []testimage.OVFDisk{{File: "vm-disk1.vmdk", Capacity: 16 << 30, FileSize: 1234, Address: 0}})
		info, err := ova.ParseOVF(ovf)
		if err != nil {
			t.Fatalf("style %d: %v", c.style, err)
		}
		if info.Version != c.version || info.Boot.ID != "vmdisk1" || info.Boot.Capacity != 16<<30 ||
			info.Boot.CreateType != vmdk.StreamOptimized || info.BootFile.Href != "vm-disk1.vmdk" || info.BootFile.Size != 1234 {
			t.Errorf("style %d: %+v", c.style, info)
		}
	}
}

// TestParseOVFBootDisk: which disk boots, or a refusal when it cannot be
// told.
func TestParseOVFBootDisk(t *testing.T) {
	d := func(file string, ctrl, addr int) testimage.OVFDisk {
		return testimage.OVFDisk{File: file, Capacity: 1 << 30, Controller: ctrl, Address: addr}
	}
	cases := []struct {
		name  string
		style testimage.OVFStyle
		disks []testimage.OVFDisk
		boot  string // file, or "" for a refusal
		want  string
	}{
		{"one", testimage.VMware, []testimage.OVFDisk{d("a.vmdk", 1, 3)}, "a.vmdk", ""},
		{"one-detached", testimage.VMware, []testimage.OVFDisk{{File: "a.vmdk", Capacity: 1, Detached: true}}, "a.vmdk", ""},
		{"address-order", testimage.VMware, []testimage.OVFDisk{d("a.vmdk", 0, 1), d("b.vmdk", 0, 0)}, "b.vmdk", ""},
		{"controller-order", testimage.VirtualBox, []testimage.OVFDisk{d("a.vmdk", 1, 0), d("b.vmdk", 0, 2)}, "b.vmdk", ""},
		{"storageitem", testimage.OVF2, []testimage.OVFDisk{d("a.vmdk", 0, 1), d("b.vmdk", 0, 0)}, "b.vmdk", ""},
		{"one-attached", testimage.VMware, []testimage.OVFDisk{{File: "a.vmdk", Capacity: 1, Detached: true}, d("b.vmdk", 1, 1)}, "b.vmdk", ""},
		{"no-address", testimage.VMware, []testimage.OVFDisk{d("a.vmdk", 0, -1), d("b.vmdk", 0, 0)}, "b.vmdk", ""},
		{"same-address", testimage.VMware, []testimage.OVFDisk{d("a.vmdk", 0, 0), d("b.vmdk", 0, 0)}, "", "same controller at the same address"},
		{"no-addresses", testimage.VMware, []testimage.OVFDisk{d("a.vmdk", 0, -1), d("b.vmdk", 0, -1)}, "", "cannot tell which disk boots"},
		{"none-attached", testimage.VMware, []testimage.OVFDisk{{File: "a.vmdk", Detached: true}, {File: "b.vmdk", Detached: true}}, "", "attaches none of them"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			info, err := ova.ParseOVF(testimage.OVF(c.style, c.disks))
			if c.boot == "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %v, want %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.BootFile.Href != c.boot {
				t.Errorf("boot %q, want %q", info.BootFile.Href, c.boot)
			}
			if len(info.Warnings) != len(c.disks)-1 {
				t.Errorf("warnings %q", info.Warnings)
			}
		})
	}
}

// TestParseOVFCapacityUnits: DSP0004 programmatic units.
func TestParseOVFCapacityUnits(t *testing.T) {
	for _, c := range []struct {
		capacity, units string
		want            int64
	}{
		{"1073741824", "", 1 << 30},
		{"16", "byte * 2^30", 16 << 30},
		{"16", "byte*2^30", 16 << 30},
		{"512", "byte * 2^20", 512 << 20},
		{"2", "byte * 10^9", 2e9},
		{"3", "byte * 1024^3", 3 << 30},
		{"${disk.size}", "", -1},
		{"16", "MegaBytes", -1},
		{"9999999999", "byte * 2^40", -1},
	} {
		ovf := testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "a.vmdk", Capacity: 1}})
		ovf = bytes.Replace(ovf, []byte(`ovf:capacity="1"`), []byte(`ovf:capacity="`+c.capacity+`" ovf:capacityAllocationUnits="`+c.units+`"`), 1)
		info, err := ova.ParseOVF(ovf)
		if err != nil {
			t.Fatalf("%s %s: %v", c.capacity, c.units, err)
		}
		if info.Boot.Capacity != c.want {
			t.Errorf("%s %q: %d, want %d", c.capacity, c.units, info.Boot.Capacity, c.want)
		}
		if c.want < 0 && len(info.Warnings) == 0 {
			t.Errorf("%s %q: no warning", c.capacity, c.units)
		}
	}
}

// TestWriteOVATwoDisks: the boot disk is deployed, the other read,
// checked against the manifest and reported.
func TestWriteOVATwoDisks(t *testing.T) {
	const size = 4 * ovaMiB
	boot := imagingtest.Disk(t, size, 41)
	data := imagingtest.Disk(t, size, 42)
	v1, _ := testimage.VMDK{Raw: data, Name: "vm-disk1.vmdk"}.StreamOptimized()
	v2, _ := testimage.VMDK{Raw: boot, Name: "vm-disk2.vmdk"}.StreamOptimized()
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VirtualBox, []testimage.OVFDisk{
		{File: "vm-disk1.vmdk", Capacity: size, Controller: 0, Address: 1},
		{File: "vm-disk2.vmdk", Capacity: size, Controller: 0, Address: 0},
	})}
	m1, m2 := testimage.Member{Name: "vm-disk1.vmdk", Data: v1}, testimage.Member{Name: "vm-disk2.vmdk", Data: v2}
	for _, bad := range []bool{false, true} {
		mfDisks := []testimage.Member{ovf, m1, m2}
		if bad {
			mfDisks[1].Data = v2 // the other disk's digest is wrong
		}
		ovaImg, err := testimage.Tar(ovf, m1, m2, testimage.Member{Name: "vm.mf", Data: testimage.Manifest("SHA256", true, mfDisks...)})
		if err != nil {
			t.Fatal(err)
		}
		dst := imagingtest.NewMemTarget(8*ovaMiB, 0xFF)
		res, err := ova.Write(t.Context(), bytes.NewReader(ovaImg), dst, ova.Options{Logger: testutil.Logger(t)})
		if bad {
			if err == nil || !strings.Contains(err.Error(), "the sha256 digest of vm-disk1.vmdk is ") {
				t.Fatalf("error %v", err)
			}
			if _, ok := imaging.HasPartitionTable(dst.B[:ovaMiB]); ok {
				t.Error("partition table left")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if res.Disk != "vm-disk2.vmdk" || !bytes.Equal(dst.B[:size], boot) {
			t.Fatalf("deployed %q", res.Disk)
		}
		if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `disk vmdisk1 ("vm-disk1.vmdk") is not deployed: only the boot disk vmdisk2 ("vm-disk2.vmdk") is`) {
			t.Errorf("warnings %q", res.Warnings)
		}
	}
}

// TestWriteOVAProgress: progress counts the OVA's bytes against
// DeclaredSize, at most every 100 ms, and ends at the size.
func TestWriteOVAProgress(t *testing.T) {
	const size = 8 * ovaMiB
	raw := imagingtest.Disk(t, size, 43)
	vmdkImg, _ := testimage.VMDK{Raw: raw, Name: "disk1.vmdk"}.StreamOptimized()
	ovaImg := ovaPackage(t, layoutVMware, "disk1.vmdk", vmdkImg, size, "SHA256")
	var calls, last atomic.Int64
	var prev time.Time
	tooSoon := 0
	_, err := ova.Write(t.Context(), &ovaSlow{r: bytes.NewReader(ovaImg), every: 64 << 10, wait: 5 * time.Millisecond}, imagingtest.NewMemTarget(16*ovaMiB, 0), ova.Options{
		DeclaredSize: int64(len(ovaImg)),
		Progress: func(done, total int64) {
			if total != int64(len(ovaImg)) || done > total || done < last.Load() {
				t.Errorf("progress %d/%d after %d", done, total, last.Load())
			}
			if !prev.IsZero() && time.Since(prev) < 90*time.Millisecond && done != total {
				tooSoon++
			}
			prev = time.Now()
			calls.Add(1)
			last.Store(done)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() < 2 || last.Load() != int64(len(ovaImg)) || tooSoon > 0 {
		t.Errorf("%d calls, last %d of %d, %d too soon", calls.Load(), last.Load(), len(ovaImg), tooSoon)
	}
}

// ovaSlow waits a little every so many bytes.
type ovaSlow struct {
	r     *bytes.Reader
	every int
	wait  time.Duration
	n     int
}

func (s *ovaSlow) Read(p []byte) (int, error) {
	n, err := s.r.Read(p[:min(len(p), s.every)])
	if s.n += n; s.n >= s.every {
		s.n = 0
		time.Sleep(s.wait)
	}
	return n, err
}
