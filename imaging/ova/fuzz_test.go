package ova_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/internal/testimage"
)

// ovfFuzzSeeds are descriptors in each producer's style, with one and two
// disks, and a few odd ones.
func ovfFuzzSeeds() [][]byte {
	var seeds [][]byte
	for _, style := range []testimage.OVFStyle{testimage.VirtualBox, testimage.VMware, testimage.OVF2} {
		seeds = append(seeds,
			testimage.OVF(style, []testimage.OVFDisk{{File: "a.vmdk", Capacity: 1 << 30, FileSize: 99, Address: 0}}),
			testimage.OVF(style, []testimage.OVFDisk{
				{File: "a.vmdk", Capacity: 1 << 30, Controller: 1, Address: 0},
				{File: "b.vmdk", Capacity: 1 << 20, Controller: 0, Address: 1, Compression: "gzip", Format: testimage.FormatSparse},
			}))
	}
	seeds = append(seeds,
		[]byte(`<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2"><References><File id="f" href="d.vmdk"/></References><DiskSection><Disk diskId="d" fileRef="f" capacity="1" capacityAllocationUnits="byte * 2^30" format="http://www.vmware.com/specifications/vmdk.html#compressed"/></DiskSection></Envelope>`),
		[]byte(`<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&a;</Envelope>`),
	)
	return seeds
}

// FuzzParseOVF: the descriptor parser never panics, refuses with an
// Error, and what it accepts is consistent: a boot disk among the disks,
// a plain file name inside the package.
func FuzzParseOVF(f *testing.F) {
	for _, s := range ovfFuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := ova.ParseOVF(b)
		if err != nil {
			if !errors.Is(err, ova.ErrRefused) {
				t.Fatalf("error %v is not an Error", err)
			}
			return
		}
		found := false
		for _, d := range info.Disks {
			found = found || d.ID == info.Boot.ID
		}
		if !found || info.BootFile.ID != info.Boot.FileRef || info.BootFile.Href == "" ||
			strings.ContainsAny(info.BootFile.Href, "/\\:") || info.BootFile.Href == ".." ||
			(info.BootFile.Compression != "" && info.BootFile.Compression != "gzip") || info.Boot.CreateType == "" {
			t.Fatalf("accepted %+v", info)
		}
	})
}

// fuzzSeeds are small OVAs: a 64 KiB GPT disk in 4 KiB grains, in the
// VMware and VirtualBox member orders, stream-optimized, sparse and
// gzipped.
func fuzzSeeds(tb testing.TB) [][]byte {
	raw, err := testimage.GPT(64<<10, 512, nil, 6)
	if err != nil {
		tb.Fatal(err)
	}
	so, _ := testimage.VMDK{Raw: raw, Name: "d.vmdk", GrainSectors: 8, Overhead: 1}.StreamOptimized()
	ms, _ := testimage.VMDK{Raw: raw, Name: "d.vmdk", GrainSectors: 8, Overhead: 1}.MonolithicSparse()
	var seeds [][]byte
	for i, c := range []struct {
		vmdkImg []byte
		layout  ovaLayout
		opts    []ovaOpt
	}{
		{so, layoutVMware, nil},
		{so, layoutVirtualBox, nil},
		{ms, layoutNoManifest, []ovaOpt{ovaFormat(testimage.FormatSparse)}},
		{dzGzip(tb, so), layoutVMware, []ovaOpt{ovaCompression("gzip")}},
	} {
		// The archive without its 10 KiB record padding: smaller seeds.
		opts := append(c.opts, func(b *ovaBuild) { b.noPad = true })
		seeds = append(seeds, ovaPackageOpts(tb, c.layout, "d.vmdk", c.vmdkImg, int64(len(raw)), []string{"SHA1", "SHA256", "SHA512", "SHA256"}[i], opts...))
	}
	return seeds
}

// FuzzWrite feeds whole packages to Write onto a 2 MiB in-memory target:
// nothing may panic or hang; every error is one of the documented types;
// a failure leaves no partition table; a success leaves the disk's.
func FuzzWrite(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dst := imagingtest.NewMemTarget(2<<20, 0xEE)
		res, err := ova.Write(context.Background(), bytes.NewReader(b), dst, ova.Options{Workers: 2})
		if err != nil {
			var se *imaging.SizeError
			var we *imaging.WriteError
			if !errors.Is(err, ova.ErrRefused) && !errors.Is(err, vmdk.ErrRefused) && !errors.Is(err, imaging.ErrChecksum) &&
				!errors.As(err, &se) && !errors.As(err, &we) {
				t.Fatalf("error %v (%T) is not a documented one", err, err)
			}
			if dst.Writes+dst.Zeroings > 0 {
				if _, ok := imaging.HasPartitionTable(dst.B[:imaging.HeadSize]); ok {
					t.Fatal("partition table left after a failure")
				}
			} else if !bytes.Equal(dst.B, bytes.Repeat([]byte{0xEE}, len(dst.B))) {
				t.Fatal("target changed without a write")
			}
			return
		}
		if _, ok := imaging.HasPartitionTable(dst.B[:imaging.HeadSize]); !ok || res.VirtualSize <= 0 || res.VirtualSize > 2<<20 {
			t.Fatalf("accepted %+v without a partition table", res)
		}
	})
}

// TestOVAFuzzSeedsDeploy: the seeds themselves deploy (a seed that is
// refused would fuzz only the refusal), and are small.
func TestOVAFuzzSeedsDeploy(t *testing.T) {
	for i, s := range fuzzSeeds(t) {
		if len(s) > 32<<10 {
			t.Errorf("seed %d is %d bytes", i, len(s))
		}
		dst := imagingtest.NewMemTarget(4<<20, 0xEE)
		if _, err := ova.Write(t.Context(), bytes.NewReader(s), dst, ova.Options{}); err != nil {
			t.Errorf("seed %d: %v", i, err)
		}
	}
	for i, s := range ovfFuzzSeeds()[:6] {
		if _, err := ova.ParseOVF(s); err != nil {
			t.Errorf("OVF seed %d: %v", i, err)
		}
	}
}
