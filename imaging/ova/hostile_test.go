package ova_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/partition"
)

const (
	hostSize   = 6 * ovaMiB // the disk of the hostile packages
	hostGrain  = 64 << 10
	hostSector = 512
)

// hostRaw is the disk every hostile package carries (or pretends to).
func hostRaw(t testing.TB) []byte { return imagingtest.Disk(t, hostSize, 31) }

// hostVMDK builds a VMware-layout VMDK of raw with changes.
func hostVMDK(t testing.TB, v testimage.VMDK) []byte {
	t.Helper()
	if v.Name == "" {
		v.Name = "disk1.vmdk"
	}
	b, err := v.StreamOptimized()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostDesc is the generated descriptor with its extent line replaced.
func hostDesc(extents string, extra ...string) string {
	d := testimage.Descriptor("streamOptimized", "disk1.vmdk", hostSize/hostSector)
	d = strings.Replace(d, fmt.Sprintf("RW %d SPARSE %q", hostSize/hostSector, "disk1.vmdk"), extents, 1)
	return strings.Replace(d, "createType=", strings.Join(extra, "\n")+"\ncreateType=", 1)
}

// hostPatch returns a copy of b with le uint64/uint32 v at off.
func hostPatch(b []byte, off int, v uint64, size int) []byte {
	b = bytes.Clone(b)
	if size == 8 {
		binary.LittleEndian.PutUint64(b[off:], v)
	} else {
		binary.LittleEndian.PutUint32(b[off:], uint32(v))
	}
	return b
}

// hostTar tars members after a standard OVF for disk1.vmdk.
func hostTar(t testing.TB, members ...testimage.Member) []byte {
	t.Helper()
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: hostSize}})}
	b, err := testimage.Tar(append([]testimage.Member{ovf}, members...)...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostOVF tars an OVF descriptor and the standard disk.
func hostOVF(t testing.TB, ovf []byte, disk []byte) []byte {
	t.Helper()
	b, err := testimage.Tar(testimage.Member{Name: "vm.ovf", Data: ovf}, testimage.Member{Name: "disk1.vmdk", Data: disk})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteOVARefusedUntouched: packages whose problem is knowable before
// writing are refused with a clear message and the target's bytes are
// unchanged (not one write, not one zeroing).
func TestWriteOVARefusedUntouched(t *testing.T) {
	raw := hostRaw(t)
	good := hostVMDK(t, testimage.VMDK{Raw: raw})
	capSectors := uint64(hostSize / hostSector)
	bomb := func(lba uint64, m []byte) []byte {
		if lba == 0 {
			return testimage.GrainMarker(0, testimage.Zlib(bytes.Repeat([]byte{'A'}, 3*hostGrain)))
		}
		return m
	}
	moveFirst := func(to uint64) func(uint64, []byte) []byte {
		return func(lba uint64, m []byte) []byte {
			if lba == 0 {
				return hostPatch(m, 0, to, 8)
			}
			return m
		}
	}
	descOnly := []byte(fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW %d FLAT \"disk1-flat.vmdk\" 0\n", capSectors))
	twoDisks := testimage.OVF(testimage.VMware, []testimage.OVFDisk{
		{File: "disk1.vmdk", Capacity: hostSize, Address: 0},
		{File: "disk2.vmdk", Capacity: hostSize, Address: 0},
	})
	hugeOVF := append(bytes.Clone(testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: hostSize}})),
		[]byte("<!--"+strings.Repeat("x", 17<<20)+"-->")...)
	vmwareOVF := func(d testimage.OVFDisk) []byte {
		d.File, d.Capacity = "disk1.vmdk", hostSize
		return testimage.OVF(testimage.VMware, []testimage.OVFDisk{d})
	}
	vmdkMember := testimage.Member{Name: "disk1.vmdk", Data: good}
	ovfMember := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: hostSize}})}
	manyMembers := []testimage.Member{ovfMember}
	for i := range 70 {
		manyMembers = append(manyMembers, testimage.Member{Name: fmt.Sprintf("f%d.txt", i), Data: []byte("x")})
	}
	many, _ := testimage.Tar(append(manyMembers, vmdkMember)...)
	mustTar := func(m ...testimage.Member) []byte {
		b, err := testimage.Tar(m...)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	goodOVA := ovaPackage(t, layoutVMware, "disk1.vmdk", good, hostSize, "SHA256")
	ovfEnd := 512 + (len(ovfMember.Data)+511)/512*512 // header + OVF data

	type tc struct {
		name   string
		ovaImg []byte
		target int64 // default 16 MiB
		want   string
		is     any // an error type pointer for errors.As
	}
	vmdkErr := &vmdk.Error{}
	ovaErr := &ova.Error{}
	mfErr := &ova.ManifestError{}
	sizeErr := &imaging.SizeError{}
	cases := []tc{
		// Descriptors naming other files (CVE-2024-32498 class).
		{"extent-absolute", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf(`RW %d SPARSE "/etc/shadow"`, capSectors))})}), 0,
			`extent names file "/etc/shadow", not this VMDK: byoi never opens other files`, vmdkErr},
		{"extent-relative", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf(`RW %d SPARSE "../../var/lib/other.vmdk"`, capSectors))})}), 0,
			"byoi never opens other files", vmdkErr},
		{"extent-other-file", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf(`RW %d SPARSE "disk2.vmdk"`, capSectors))})}), 0,
			`extent names file "disk2.vmdk", not this VMDK ("disk1.vmdk")`, vmdkErr},
		{"extent-flat", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf(`RW %d FLAT "/dev/vda" 0`, capSectors))})}), 0,
			`extent of type FLAT names file "/dev/vda"`, vmdkErr},
		{"two-extents", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf("RW %d SPARSE \"disk1.vmdk\"\nRW 2048 SPARSE \"disk1-s002.vmdk\"", capSectors))})}), 0,
			"more than one extent", vmdkErr},
		{"parent-hint", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf(`RW %d SPARSE "disk1.vmdk"`, capSectors), `parentFileNameHint="/var/lib/images/base.vmdk"`)})}), 0,
			"parentFileNameHint", vmdkErr},
		{"parent-cid", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: strings.Replace(hostDesc(fmt.Sprintf(`RW %d SPARSE "disk1.vmdk"`, capSectors)), "parentCID=ffffffff", "parentCID=1234abcd", 1)})}), 0,
			"delta disk", vmdkErr},
		{"change-track-path", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(fmt.Sprintf(`RW %d SPARSE "disk1.vmdk"`, capSectors), `changeTrackPath="disk1-ctk.vmdk"`)})}), 0,
			"changeTrackPath", vmdkErr},
		{"create-type", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: strings.Replace(hostDesc(fmt.Sprintf(`RW %d SPARSE "disk1.vmdk"`, capSectors)), `createType="streamOptimized"`, `createType="monolithicFlat"`, 1)})}), 0,
			`createType "monolithicFlat" does not match`, vmdkErr},
		{"extent-capacity", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, Descriptor: hostDesc(`RW 100 SPARSE "disk1.vmdk"`)})}), 0,
			"extent of 100 sectors does not match", vmdkErr},
		{"descriptor-only", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: descOnly}), 0,
			"descriptor-only VMDK", vmdkErr},
		// Sparse header.
		{"capacity-larger-than-disk", goodOVA, 4 * ovaMiB,
			fmt.Sprintf("image of %d bytes does not fit /dev/sdz (%d bytes)", hostSize, 4*ovaMiB), sizeErr},
		{"grain-not-power-of-2", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 20, 100, 8)}), 0,
			"grain size of 100 sectors is not a power of 2", vmdkErr},
		{"grain-huge", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 20, 1<<40, 8)}), 0,
			"is not a power of 2 from 8 to 2048", vmdkErr},
		{"num-gtes", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 44, 1024, 4)}), 0,
			"numGTEsPerGT is 1024, the specification requires 512", vmdkErr},
		{"version-4", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 4, 4, 4)}), 0,
			"sparse header version 4", vmdkErr},
		{"capacity-absurd", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 12, 1<<62, 8)}), 0,
			"capacity of 4611686018427387904 sectors is absurd", vmdkErr},
		{"text-mode-damage", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 73, 0x0d0a200d, 4)}), 0,
			"text-mode transfer", vmdkErr},
		{"compressed-without-markers", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 8, 1|1<<16, 4)}), 0,
			"compressed grains without markers", vmdkErr},
		{"descriptor-huge", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostPatch(good, 36, 1<<20, 8)}), 0,
			"embedded descriptor of 1048576 sectors", vmdkErr},
		{"not-vmdk", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: raw}), 0,
			"no sparse extent header", vmdkErr},
		// Grains the prelude meets (in the first MiB).
		{"grain-bomb", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: bomb})}), 0,
			"inflates past the grain size (a decompression bomb)", vmdkErr},
		{"grain-past-capacity", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: moveFirst(capSectors + 128)})}), 0,
			"lies past the capacity of 12288 sectors", vmdkErr},
		{"grain-unaligned", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: moveFirst(1)})}), 0,
			"not aligned to the grain size", vmdkErr},
		{"no-partition-table", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: append(make([]byte, 2*ovaMiB), raw[2*ovaMiB:]...)})}), 0,
			"the virtual disk holds no partition table; it seems to contain: only zeros", ovaErr},
		{"gpt-behind-mbr", hostTar(t, testimage.Member{Name: "disk1.vmdk", Data: hostVMDK(t, testimage.VMDK{Raw: hostHiddenGPT(raw)})}), 0,
			"", &partition.TableError{}},
		// The archive.
		{"member-dotdot", hostTar(t, testimage.Member{Name: "../disk1.vmdk", Data: good}), 0,
			`"../disk1.vmdk": member name is not a plain file name`, ovaErr},
		{"member-absolute", hostTar(t, testimage.Member{Name: "/etc/cron.d/x", Data: []byte("x")}), 0,
			"member name is not a plain file name", ovaErr},
		{"member-nested", hostTar(t, testimage.Member{Name: "dir/disk1.vmdk", Data: good}), 0,
			"member name is not a plain file name", ovaErr},
		{"member-symlink", hostTar(t, testimage.Member{Name: "disk1.vmdk", Type: tar.TypeSymlink, Linkname: "/dev/sda"}), 0,
			"member is not a regular file", ovaErr},
		{"member-hardlink", hostTar(t, testimage.Member{Name: "disk1.vmdk", Type: tar.TypeLink, Linkname: "vm.ovf"}), 0,
			"member is not a regular file", ovaErr},
		{"member-device", hostTar(t, testimage.Member{Name: "disk1.vmdk", Type: tar.TypeBlock}), 0,
			"member is not a regular file", ovaErr},
		{"member-twice", hostTar(t, testimage.Member{Name: "x.txt", Data: []byte("a")}, testimage.Member{Name: "x.txt", Data: []byte("b")}, vmdkMember), 0,
			"member appears twice", ovaErr},
		{"too-many-members", many, 0, "more than 64 archive members", ovaErr},
		{"ovf-not-first", mustTar(vmdkMember, ovfMember), 0,
			"the first member of an OVA must be the OVF descriptor", ovaErr},
		{"ovf-huge", hostOVF(t, hugeOVF, good), 0, "bytes is larger than 16777216", ovaErr},
		{"ovf-not-xml", hostOVF(t, []byte("<Envelope><References>"), good), 0, "OVF descriptor is not valid XML", ovaErr},
		{"ovf-namespace", hostOVF(t, bytes.ReplaceAll(vmwareOVF(testimage.OVFDisk{}), []byte("http://schemas.dmtf.org/ovf/envelope/1"), []byte("http://example.com/ovf")), good), 0,
			"is not OVF 1 or 2", ovaErr},
		{"ovf-href-url", hostOVF(t, bytes.Replace(vmwareOVF(testimage.OVFDisk{}), []byte(`ovf:href="disk1.vmdk"`), []byte(`ovf:href="http://evil.example/disk1.vmdk"`), 1), good), 0,
			"not a plain name inside the package: byoi never opens or fetches other files", ovaErr},
		{"ovf-href-dotdot", hostOVF(t, bytes.Replace(vmwareOVF(testimage.OVFDisk{}), []byte(`ovf:href="disk1.vmdk"`), []byte(`ovf:href="../disk1.vmdk"`), 1), good), 0,
			"not a plain name inside the package", ovaErr},
		{"ovf-format-qcow2", hostOVF(t, vmwareOVF(testimage.OVFDisk{Format: "http://www.gnome.org/~markmc/qcow-image-format.html"}), good), 0,
			"byoi deploys VMDK disks", ovaErr},
		{"ovf-chunked", hostOVF(t, bytes.Replace(vmwareOVF(testimage.OVFDisk{}), []byte(`ovf:href="disk1.vmdk"`), []byte(`ovf:href="disk1.vmdk" ovf:chunkSize="1048576"`), 1), good), 0,
			"split in chunks", ovaErr},
		{"ovf-compression-bzip2", hostOVF(t, vmwareOVF(testimage.OVFDisk{Compression: "bzip2"}), good), 0,
			`compression "bzip2"`, ovaErr},
		{"ovf-size-mismatch", hostOVF(t, vmwareOVF(testimage.OVFDisk{FileSize: 12345}), good), 0,
			"the OVF descriptor says 12345", ovaErr},
		{"ovf-two-disks-undecidable", mustTar(testimage.Member{Name: "vm.ovf", Data: twoDisks}, vmdkMember, testimage.Member{Name: "disk2.vmdk", Data: good}), 0,
			"cannot tell which disk boots", ovaErr},
		{"ovf-disk-missing", mustTar(ovfMember, testimage.Member{Name: "other.vmdk", Data: good}), 0,
			"the disk the OVF descriptor deploys is not in the archive", ovaErr},
		{"gzip-member-not-gzip", hostOVF(t, vmwareOVF(testimage.OVFDisk{Compression: "gzip"}), good), 0,
			"disk member is not gzip data", ovaErr},
		{"empty-archive", make([]byte, 10240), 0, "the archive is empty", ovaErr},
		{"not-tar", raw, 0, "not a valid tar archive", ovaErr},
		{"truncated-in-ovf", goodOVA[:512+100], 0, "archive truncated", ovaErr},
		{"truncated-before-disk", goodOVA[:ovfEnd], 0, "archive truncated", ovaErr},
		// Manifests knowable before the disk (VMware layout: ovf, mf).
		{"manifest-unknown-algo", ovaPackageOpts(t, layoutVMware, "disk1.vmdk", good, hostSize, "SHA256", func(b *ovaBuild) {
			b.manifest = func(ovf testimage.Member, d []testimage.Member) []byte {
				return bytes.ReplaceAll(testimage.Manifest("SHA256", false, append([]testimage.Member{ovf}, d...)...), []byte("SHA256("), []byte("MD5("))
			}
		}), 0, `digest algorithm "MD5" is not one byoi checks`, mfErr},
		{"manifest-wrong-ovf-digest", ovaPackageOpts(t, layoutVMware, "disk1.vmdk", good, hostSize, "SHA256", func(b *ovaBuild) {
			b.manifest = func(ovf testimage.Member, d []testimage.Member) []byte {
				ovf.Data = append(bytes.Clone(ovf.Data), ' ')
				return testimage.Manifest("SHA1", false, append([]testimage.Member{ovf}, d...)...)
			}
		}), 0, "OVA manifest: the sha1 digest of vm.ovf is ", mfErr},
		{"manifest-garbage", ovaPackageOpts(t, layoutVMware, "disk1.vmdk", good, hostSize, "SHA256", func(b *ovaBuild) {
			b.manifest = func(testimage.Member, []testimage.Member) []byte { return []byte("this is not a manifest\n") }
		}), 0, "is not ALGO(file)= digest", mfErr},
	}
	cases = append(cases, tc{"member-gnu-sparse", hostGNUSparse(t, good), 0, "member is a sparse file", ovaErr})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			size := c.target
			if size == 0 {
				size = 16 * ovaMiB
			}
			dst := imagingtest.NewMemTarget(size, 0xFF)
			before := dst.Sum()
			verified := false
			_, err := ova.Write(t.Context(), testutil.ChunkyReader{R: bytes.NewReader(c.ovaImg)}, dst, ova.Options{
				TargetName: "/dev/sdz",
				Ended:      func(int64) error { verified = true; return nil },
				Logger:     testutil.Logger(t),
			})
			if err == nil {
				t.Fatal("Write accepted it")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q\nwant it to contain %q", err, c.want)
			}
			switch want := c.is.(type) {
			case *vmdk.Error:
				if !errors.As(err, &want) || !errors.Is(err, vmdk.ErrRefused) {
					t.Errorf("error %T is not a vmdk.Error", err)
				}
			case *ova.Error:
				if !errors.As(err, &want) || !errors.Is(err, ova.ErrRefused) {
					t.Errorf("error %T is not an Error", err)
				}
			case *ova.ManifestError:
				if !errors.As(err, &want) || !errors.Is(err, imaging.ErrChecksum) {
					t.Errorf("error %T is not a ManifestError matching ErrChecksum", err)
				}
			case *imaging.SizeError:
				if !errors.As(err, &want) {
					t.Errorf("error %T is not a SizeError", err)
				}
			case *partition.TableError:
				if !errors.As(err, &want) {
					t.Errorf("error %T is not a partition.TableError", err)
				}
			}
			if verified {
				t.Error("Ended called")
			}
			if dst.Writes != 0 || dst.Zeroings != 0 || dst.Sum() != before {
				t.Errorf("target touched: %d writes, %d zeroings", dst.Writes, dst.Zeroings)
			}
		})
	}
}

// hostHiddenGPT turns the protective MBR of a GPT disk into an MBR with a
// Linux partition: Linux would read the MBR and ignore the GPT.
func hostHiddenGPT(raw []byte) []byte {
	b := bytes.Clone(raw)
	b[446+4] = 0x83
	return b
}

// hostGNUSparse tars an OVF and disk1.vmdk as a GNU sparse member with
// GNU tar (archive/tar cannot write one).
func hostGNUSparse(t *testing.T, disk []byte) []byte {
	t.Helper()
	testutil.RequireCommand(t, "tar")
	dir := t.TempDir()
	ovf := testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: hostSize}})
	writeFile := func(name string, b []byte) {
		if err := osWriteFile(dir+"/"+name, b); err != nil {
			t.Fatal(err)
		}
	}
	writeFile("vm.ovf", ovf)
	// A file with a hole, so --sparse records it as sparse.
	f, err := osCreate(dir + "/disk1.vmdk")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(disk[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(disk[4096:], 4096+1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "tar", "--format=gnu", "--sparse", "-C", dir, "-cf", dir+"/x.ova", "vm.ovf", "disk1.vmdk")
	b, err := osReadFile(dir + "/x.ova")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteOVAFailuresWipe: problems found once writing started, through
// the Guard a deployment writes with, leave the target, which held a
// system with a GPT, with no partition table at all (sfdisk -l and blkid
// -p find nothing), and Write's original error.
func TestWriteOVAFailuresWipe(t *testing.T) {
	raw := imagingtest.Disk(t, 8*ovaMiB, 32)
	capSectors := uint64(len(raw) / hostSector)
	at3MiB := uint64(3 * ovaMiB / hostSector)
	hook := func(f func(m []byte) []byte) func(uint64, []byte) []byte {
		return func(lba uint64, m []byte) []byte {
			if lba == at3MiB {
				return f(m)
			}
			return m
		}
	}
	good := hostVMDK(t, testimage.VMDK{Raw: raw})
	errSrc := errors.New("connection reset by peer")
	errSum := errors.New("Bad sha256 for downloaded file")
	type tc struct {
		name   string
		ovaImg []byte
		layout ovaLayout
		opts   func(*ova.Options, context.CancelFunc)
		src    func([]byte) io.Reader
		dst    func(imaging.Target) imaging.Target
		check  func(*testing.T, error)
		// cancelAt cancels the context once the source gave that many
		// bytes (it keeps giving: Write must notice).
		cancelAt int64
	}
	wantErr := func(substr string, target any) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			if !strings.Contains(err.Error(), substr) {
				t.Errorf("error %q\nwant it to contain %q", err, substr)
			}
			switch want := target.(type) {
			case *vmdk.Error:
				if !errors.As(err, &want) {
					t.Errorf("error %T is not a vmdk.Error", err)
				}
			case *ova.Error:
				if !errors.As(err, &want) {
					t.Errorf("error %T is not an Error", err)
				}
			case *ova.ManifestError:
				if !errors.As(err, &want) || !errors.Is(err, imaging.ErrChecksum) {
					t.Errorf("error %T is not a ManifestError", err)
				}
			case *imaging.WriteError:
				if !errors.As(err, &want) || want.Format != "ova" {
					t.Errorf("error %T is not an ova WriteError", err)
				}
			}
		}
	}
	vbox := func(mf func(ovf testimage.Member, d []testimage.Member) []byte) []byte {
		return ovaPackageOpts(t, layoutVirtualBox, "disk1.vmdk", good, int64(len(raw)), "SHA256", func(b *ovaBuild) { b.manifest = mf })
	}
	goodOVA := ovaPackage(t, layoutVirtualBox, "disk1.vmdk", good, int64(len(raw)), "SHA256")
	diskStart := bytes.Index(goodOVA, good[:512])
	footerBad := hostPatch(good, len(good)-1024+12, capSectors+128, 8)
	cases := []tc{
		{name: "manifest-disk-digest", ovaImg: vbox(func(ovf testimage.Member, d []testimage.Member) []byte {
			d = []testimage.Member{{Name: d[0].Name, Data: append(bytes.Clone(d[0].Data), 0)}}
			return testimage.Manifest("SHA256", true, append([]testimage.Member{ovf}, d...)...)
		}), check: wantErr("OVA manifest: the sha256 digest of disk1.vmdk is ", &ova.ManifestError{})},
		{name: "manifest-member-missing", ovaImg: vbox(func(ovf testimage.Member, d []testimage.Member) []byte {
			return testimage.Manifest("SHA1", true, append([]testimage.Member{ovf, {Name: "disk2.vmdk", Data: []byte("x")}}, d...)...)
		}), check: wantErr(`"disk2.vmdk": listed in the manifest but not in the archive`, &ova.ManifestError{})},
		{name: "manifest-omits-disk", ovaImg: vbox(func(ovf testimage.Member, d []testimage.Member) []byte {
			return testimage.Manifest("SHA512", true, ovf)
		}), check: wantErr(`"disk1.vmdk": the disk is not listed in the manifest`, &ova.ManifestError{})},
		{name: "truncated-in-disk", ovaImg: goodOVA[:diskStart+len(good)/2], check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("error %v does not match io.ErrUnexpectedEOF", err)
			}
		}},
		{name: "truncated-end-of-archive", ovaImg: goodOVA[:diskStart+(len(good)+511)/512*512+512+(len(testimage.Manifest("SHA256", true))+1023)/512*512], check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("error %v does not match io.ErrUnexpectedEOF", err)
			}
		}},
		{name: "declared-size", ovaImg: goodOVA, opts: func(o *ova.Options, _ context.CancelFunc) { o.DeclaredSize = int64(len(goodOVA)) + 512 },
			check: wantErr("ended after", nil)},
		{name: "data-after-archive", ovaImg: append(bytes.Clone(goodOVA), "trailing garbage"...), check: wantErr("data follows the end of the archive", &ova.Error{})},
		{name: "grain-bomb", ovaImg: ovaPackage(t, layoutVMware, "disk1.vmdk", hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: hook(func(m []byte) []byte {
			return testimage.GrainMarker(at3MiB, testimage.Zlib(make([]byte, 1<<20)))
		})}), int64(len(raw)), "SHA256"), check: wantErr("decompression bomb", &vmdk.Error{})},
		{name: "grain-past-capacity", ovaImg: ovaPackage(t, layoutVMware, "disk1.vmdk", hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: hook(func(m []byte) []byte {
			return hostPatch(m, 0, capSectors, 8)
		})}), int64(len(raw)), "SHA256"), check: wantErr("lies past the capacity", &vmdk.Error{})},
		{name: "grain-twice", ovaImg: ovaPackage(t, layoutVMware, "disk1.vmdk", hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: hook(func(m []byte) []byte {
			return append(bytes.Clone(m), m...)
		})}), int64(len(raw)), "SHA256"), check: wantErr("appears twice", &vmdk.Error{})},
		{name: "grain-corrupt", ovaImg: ovaPackage(t, layoutVMware, "disk1.vmdk", hostVMDK(t, testimage.VMDK{Raw: raw, GrainHook: hook(func(m []byte) []byte {
			m = bytes.Clone(m)
			for i := 40; i < 80; i++ {
				m[i] ^= 0x55
			}
			return m
		})}), int64(len(raw)), "SHA256"), check: wantErr("corrupt compressed data", &vmdk.Error{})},
		{name: "footer-mismatch", ovaImg: ovaPackage(t, layoutVMware, "disk1.vmdk", footerBad, int64(len(raw)), "SHA256"),
			check: wantErr("does not match the header", &vmdk.Error{})},
		{name: "footer-missing", ovaImg: ovaPackage(t, layoutVMware, "disk1.vmdk", append(bytes.Clone(good[:len(good)-1536]), make([]byte, 512)...), int64(len(raw)), "SHA256"),
			check: wantErr("without the footer", &vmdk.Error{})},
		{name: "verify", ovaImg: goodOVA, opts: func(o *ova.Options, _ context.CancelFunc) { o.Ended = func(int64) error { return errSum } },
			check: func(t *testing.T, err error) {
				if err != errSum {
					t.Errorf("error %v, want Ended's unchanged", err)
				}
			}},
		{name: "source-error", ovaImg: goodOVA, src: func(b []byte) io.Reader {
			return io.MultiReader(bytes.NewReader(b[:diskStart+len(good)/2]), errReader{errSrc})
		}, check: func(t *testing.T, err error) {
			if err != errSrc {
				t.Errorf("error %v, want the source's unchanged", err)
			}
		}},
		{name: "cancel", ovaImg: goodOVA, cancelAt: int64(diskStart + len(good)/2), check: func(t *testing.T, err error) {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want context.Canceled", err)
			}
		}},
		{name: "write-error", ovaImg: goodOVA, dst: func(d imaging.Target) imaging.Target { return ovaFailTarget{d, 5 * ovaMiB} },
			check: wantErr("write the ova image: ", &imaging.WriteError{})},
	}
	for _, loop := range []bool{false, true} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/%s", c.name, map[bool]string{false: "file", true: "loop"}[loop]), func(t *testing.T) {
				dev, path := ovaOldTarget(t, 16*ovaMiB, loop)
				var dst imaging.Target = dev
				if c.dst != nil {
					dst = c.dst(dev)
				}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				opts := ova.Options{TargetName: path, Logger: testutil.Logger(t)}
				if c.opts != nil {
					c.opts(&opts, cancel)
				}
				var src io.Reader = bytes.NewReader(c.ovaImg)
				if c.src != nil {
					src = c.src(c.ovaImg)
				}
				if c.cancelAt > 0 {
					src = &ovaCancelReader{r: src, at: c.cancelAt, cancel: cancel}
				}
				// Through a Guard, as a deployment writes: its Abort
				// leaves no table.
				_, err := ovaDeploy(ctx, src, dst, opts)
				if err == nil {
					t.Fatal("Write succeeded")
				}
				c.check(t, err)
				if err := dev.Close(); err != nil {
					t.Fatal(err)
				}
				testutil.AssertNoTable(t, path)
				head := testutil.ReadAt(t, path, 0, ovaMiB)
				if _, ok := imaging.HasPartitionTable(head); ok {
					t.Error("partition table left in the first MiB")
				}
			})
		}
	}
}

// ovaFailTarget fails writes that reach past failAt.
type ovaFailTarget struct {
	imaging.Target
	failAt int64
}

func (f ovaFailTarget) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, imagingtest.ErrInjectedIO
	}
	return f.Target.WriteAt(p, off)
}

// ovaCancelReader cancels once at bytes were read, and goes on.
type ovaCancelReader struct {
	r      io.Reader
	n, at  int64
	cancel context.CancelFunc
}

func (c *ovaCancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p[:min(len(p), 4096)])
	if c.n += int64(n); c.n >= c.at && c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	return n, err
}
