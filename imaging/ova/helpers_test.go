package ova_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

const ovaMiB = 1 << 20

// ovaQemuVMDK converts raw to a VMDK of the given subformat with qemu-img;
// the file (and so the descriptor's extent) is called name.
func ovaQemuVMDK(t testing.TB, raw []byte, subformat, name string) []byte {
	t.Helper()
	testutil.RequireCommand(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	testutil.Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, src, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ovaQemuRaw is the judge: qemu-img's reading of a VMDK file as raw.
func ovaQemuRaw(t testing.TB, vmdkImg []byte, name string) []byte {
	t.Helper()
	testutil.RequireCommand(t, "qemu-img")
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, vmdkImg, 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "convert", "-q", "-f", "vmdk", "-O", "raw", p, filepath.Join(dir, "out.raw"))
	b, err := os.ReadFile(filepath.Join(dir, "out.raw"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ovaLayout is the member order of an OVA.
type ovaLayout int

const (
	layoutVMware     ovaLayout = iota // ovf, mf, vmdk
	layoutVirtualBox                  // ovf, vmdk, mf
	layoutNoManifest                  // ovf, vmdk
)

func (l ovaLayout) String() string {
	return [...]string{"vmware", "virtualbox", "nomanifest"}[l]
}

// ovaPackage tars an OVF descriptor, the disk and a manifest in layout.
func ovaPackage(t testing.TB, layout ovaLayout, diskName string, vmdkImg []byte, capacity int64, algo string) []byte {
	t.Helper()
	return ovaPackageOpts(t, layout, diskName, vmdkImg, capacity, algo)
}

// ovaBuild is what ovaOpts may change in a package being built.
type ovaBuild struct {
	disk     testimage.OVFDisk
	ovf      *testimage.Member
	disks    []testimage.Member // the disk member(s)
	manifest func(ovf testimage.Member, disks []testimage.Member) []byte
	before   []testimage.Member // members before the disk, after the OVF (and the manifest)
	after    []testimage.Member // members after the disk (before a last manifest)
	noPad    bool               // no padding to tar's 10 KiB records
}

type ovaOpt func(*ovaBuild)

func ovaCompression(c string) ovaOpt { return func(b *ovaBuild) { b.disk.Compression = c } }

func ovaFormat(f string) ovaOpt { return func(b *ovaBuild) { b.disk.Format = f } }

// ovaPackageOpts is ovaPackage with changes.
func ovaPackageOpts(t testing.TB, layout ovaLayout, diskName string, vmdkImg []byte, capacity int64, algo string, opts ...ovaOpt) []byte {
	t.Helper()
	style := testimage.VMware
	if layout == layoutVirtualBox {
		style = testimage.VirtualBox
	}
	b := &ovaBuild{disk: testimage.OVFDisk{File: diskName, Capacity: capacity, Address: 0}}
	if style == testimage.VMware {
		b.disk.FileSize = int64(len(vmdkImg))
	}
	b.disks = []testimage.Member{{Name: diskName, Data: vmdkImg}}
	b.manifest = func(ovf testimage.Member, disks []testimage.Member) []byte {
		return testimage.Manifest(algo, layout == layoutVirtualBox, append([]testimage.Member{ovf}, disks...)...)
	}
	for _, o := range opts {
		o(b)
	}
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(style, []testimage.OVFDisk{b.disk})}
	if b.ovf != nil {
		ovf = *b.ovf
	}
	mf := testimage.Member{Name: "vm.mf", Data: b.manifest(ovf, b.disks)}
	members := []testimage.Member{ovf}
	if layout == layoutVMware {
		members = append(members, mf)
	}
	members = append(members, b.before...)
	members = append(members, b.disks...)
	members = append(members, b.after...)
	if layout == layoutVirtualBox {
		members = append(members, mf)
	}
	if b.noPad {
		var buf bytes.Buffer
		if err := testimage.WriteTar(&buf, members...); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	out, err := testimage.Tar(members...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dzGzip gzips b.
func dzGzip(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ovaOldTarget is a target of size bytes that held a previous system: every
// byte 0xFF but for a GPT (primary and backup, one partition) that sfdisk
// and blkid see. loop puts it behind a loop device.
func ovaOldTarget(t *testing.T, size int64, loop bool) (*blockdev.Device, string) {
	t.Helper()
	old, err := testimage.GPT(size, 512, []testimage.Part{
		{Name: "old system", Type: testimage.TypeLinux, Start: 1 * ovaMiB, Size: size - 2*ovaMiB},
	}, 99)
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Repeat([]byte{0xFF}, int(size))
	copy(b, old[:34*512])
	copy(b[size-33*512:], old[size-33*512:])
	p := filepath.Join(t.TempDir(), "target.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	path := p
	if loop {
		path = testutil.LoopDevice(t, p, 0)
	}
	testutil.RequireCommand(t, "sfdisk", "blkid")
	if out := testutil.Run(t, "sfdisk", "-l", path); !strings.Contains(out, "Disklabel type: gpt") {
		t.Fatalf("old GPT not seen by sfdisk -l before:\n%s", out)
	}
	testutil.Run(t, "blkid", "-p", path)
	d, err := blockdev.Open(path, blockdev.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

// ovaHashVerify returns a Hash and an Ended callback comparing it with the
// sha256 of b.
func ovaHashVerify(b []byte) (ova.Options, func() bool) {
	want := sha256.Sum256(b)
	h := sha256.New()
	called := false
	return ova.Options{
			Hash: h,
			Ended: func(int64) error {
				called = true
				if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
					return fmt.Errorf("checksum mismatch: got %x, want %x", got, want)
				}
				return nil
			},
		}, func() bool {
			return called
		}
}

// ovaDeploy writes the OVA through a Guard over dst, as a deployment does
// (agent.Deployer: the image's last MiB held once Capacity tells it):
// Commit after a success, Abort after a failure. Write's error comes
// back unchanged when the abort succeeded.
func ovaDeploy(ctx context.Context, src io.Reader, dst imaging.Target, opts ova.Options) (ova.Result, error) {
	g := imaging.Begin(ctx, dst)
	capacity := opts.Capacity
	opts.Capacity = func(n int64) {
		g.Hold(n-imaging.HeadSize, imaging.HeadSize)
		if capacity != nil {
			capacity(n)
		}
	}
	opts.Start = func() error { return g.Start(ctx) }
	res, err := ova.Write(ctx, src, g, opts)
	if err != nil {
		if werr := g.Abort(ctx); werr != nil {
			return res, errors.Join(err, werr)
		}
		return res, err
	}
	return res, g.Commit(ctx)
}

func osWriteFile(p string, b []byte) error { return os.WriteFile(p, b, 0o644) }
func osReadFile(p string) ([]byte, error)  { return os.ReadFile(p) }
func osCreate(p string) (*os.File, error)  { return os.Create(p) }

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
