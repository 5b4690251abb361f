package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// readAll reads every grain of a VMDK file through Stream into a
// disk image, as ova.Write's pipeline would.
func readAll(b []byte, name string) ([]byte, *Info, error) {
	s, err := Open(bytes.NewReader(b), name, 0, int64(len(b)))
	if err != nil {
		return nil, nil, err
	}
	disk := make([]byte, s.info.Capacity)
	var infl Inflater
	g := &Grain{Data: make([]byte, 0, s.grainBytes), Comp: make([]byte, 0, s.MaxCompressed())}
	for {
		err := s.Next(g)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		data := g.Data
		if g.Compressed {
			buf := make([]byte, s.grainBytes)
			n, err := infl.Inflate(buf, g.Comp)
			if err != nil {
				return nil, nil, err
			}
			data = buf[:min(int64(n), s.info.Capacity-g.Off)]
		}
		copy(disk[g.Off:], data)
	}
	if err := s.Drain(); err != nil {
		return nil, nil, err
	}
	return disk, &s.info, nil
}

// qemuConvert runs qemu-img (or qemu-io) commands in a temp dir holding
// file name, and returns the file and qemu-img's raw reading of it.
func qemuConvert(t *testing.T, name string, cmds ...[]string) (vmdk, raw []byte) {
	t.Helper()
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	for _, c := range cmds {
		args := make([]string, len(c)-1)
		for i, a := range c[1:] {
			args[i] = strings.ReplaceAll(a, "$F", p)
		}
		testutil.Run(t, c[0], args...)
	}
	testutil.Run(t, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", p, filepath.Join(dir, "out.raw"))
	var err error
	if vmdk, err = os.ReadFile(p); err != nil {
		t.Fatal(err)
	}
	if raw, err = os.ReadFile(filepath.Join(dir, "out.raw")); err != nil {
		t.Fatal(err)
	}
	return vmdk, raw
}

// TestVMDKStreamZeroedGrain: a version 2 monolithicSparse with zeroed-grain
// entries (GTE 1; the grain's old data still in the file) reads as qemu-img
// reads it.
func TestVMDKStreamZeroedGrain(t *testing.T) {
	vmdk, raw := qemuConvert(t, "z.vmdk",
		[]string{"qemu-img", "create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", "$F", "4M"},
		[]string{"qemu-io", "-f", "vmdk", "-c", "write -P 0xaa 0 1M", "-c", "write -z 0 64k", "-c", "write -z 128k 64k", "-c", "write -P 0x55 3M 64k", "$F"},
	)
	got, info, err := readAll(vmdk, "z.vmdk")
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 2 || info.CreateType != MonolithicSparse {
		t.Errorf("info %+v", info)
	}
	if !bytes.Equal(got, raw) {
		t.Fatal("differs from qemu-img's reading")
	}
	if raw[0] != 0 || raw[64<<10] != 0xaa || raw[128<<10] != 0 {
		t.Fatal("the test image is not what it should be")
	}
}

// TestVMDKSparseLayouts: monolithicSparse layouts that would need seeking
// backwards are refused with the reason, others read exactly.
func TestVMDKSparseLayouts(t *testing.T) {
	vmdk, raw := qemuConvert(t, "s.vmdk",
		[]string{"qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", "$F", "8M"},
		[]string{"qemu-io", "-f", "vmdk", "-c", "write -P 0x11 6M 128k", "-c", "write -P 0x22 0 64k", "-c", "write -P 0x33 7M 64k", "$F"},
	)
	// qemu-io allocates grains in write order: file order is not disk order.
	got, _, err := readAll(vmdk, "s.vmdk")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatal("differs from qemu-img's reading")
	}
	le := binary.LittleEndian
	gdOff := int64(le.Uint64(vmdk[offGD:])) * sectorBytes
	gt := int64(le.Uint32(vmdk[gdOff:])) * sectorBytes

	// The grain table moved to the end of the file, after its grains.
	late := append(bytes.Clone(vmdk), vmdk[gt:gt+2048]...)
	le.PutUint32(late[gdOff:], uint32(len(vmdk)/sectorBytes))
	if _, _, err := readAll(late, "s.vmdk"); err == nil || !strings.Contains(err.Error(), "needs seeking backwards") {
		t.Errorf("grain table after its grains: %v", err)
	}
	// A grain table entry pointing into the header.
	back := bytes.Clone(vmdk)
	le.PutUint32(back[gt:], 2)
	if _, _, err := readAll(back, "s.vmdk"); err == nil || !strings.Contains(err.Error(), "needs seeking backwards") {
		t.Errorf("grain in the header: %v", err)
	}
	// Two entries sharing a grain.
	shared := bytes.Clone(vmdk)
	copy(shared[gt+4*5:], shared[gt:gt+4])
	if _, _, err := readAll(shared, "s.vmdk"); err == nil || !strings.Contains(err.Error(), "needs seeking backwards") {
		t.Errorf("shared grain: %v", err)
	}
	// An entry past the capacity (8 MiB = 128 grains of the 512 a table maps).
	past := bytes.Clone(vmdk)
	le.PutUint32(past[gt+4*200:], le.Uint32(vmdk[gt:]))
	if _, _, err := readAll(past, "s.vmdk"); err == nil || !strings.Contains(err.Error(), "past the capacity") {
		t.Errorf("grain past the capacity: %v", err)
	}
	// The grain directory at the end (GD_AT_END) in a sparse file.
	atEnd := bytes.Clone(vmdk)
	le.PutUint64(atEnd[offGD:], gDAtEnd)
	if _, _, err := readAll(atEnd, "s.vmdk"); err == nil || !strings.Contains(err.Error(), "cannot be streamed") {
		t.Errorf("GD at end: %v", err)
	}
	// Truncated in a grain.
	if _, _, err := readAll(vmdk[:len(vmdk)-1000], "s.vmdk"); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrRefused) {
		t.Errorf("truncated: %v", err)
	}
}

// TestVMDKDescriptorParse covers the descriptor rules on their own.
func TestVMDKDescriptorParse(t *testing.T) {
	const capacity = 16384
	base := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n# Extent description\n%s\n\nddb.adapterType = \"ide\"\n"
	cases := []struct {
		extent string
		file   string
		ok     bool
		want   string
	}{
		{`RW 16384 SPARSE "disk.vmdk"`, "disk.vmdk", true, ""},
		{`RW 16384 SPARSE "disk.vmdk"`, "", true, ""},
		{`RDONLY 16384 SPARSE "disk.vmdk"`, "disk.vmdk", true, ""},
		{`RW 16384 SPARSE "my disk.vmdk"`, "my disk.vmdk", true, ""},
		{`RW 16384 SPARSE "disk.vmdk"`, "other.vmdk", false, "not this VMDK"},
		{`RW 16384 SPARSE "C:\disk.vmdk"`, "", false, "not this VMDK"},
		{`RW 16384 SPARSE "/dev/sda"`, "", false, "never opens other files"},
		{`RW 16384 SPARSE ""`, "", false, "never opens other files"},
		{`RW 16384 VMFS "disk-flat.vmdk"`, "", false, "extent of type VMFS"},
		{`RW 16384 ZERO`, "", false, "without a quoted file name"},
		{`NOACCESS 16384 SPARSE "disk.vmdk"`, "", false, "NOACCESS"},
		{`RW 16384 SPARSE "disk.vmdk" 0`, "", false, "with an offset"},
		{`RW 16385 SPARSE "disk.vmdk"`, "", false, "does not match"},
		{`RW -1 SPARSE "disk.vmdk"`, "", false, "does not match"},
		{`RW SPARSE "disk.vmdk"`, "", false, "malformed"},
		{``, "", false, "no extent line"},
		{`garbage line`, "", false, "neither a setting nor an extent"},
	}
	for _, c := range cases {
		_, err := parseDescriptor([]byte(strings.Replace(base, "%s", c.extent, 1)), capacity, StreamOptimized, c.file)
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%q (file %q): %v, want ok=%v %q", c.extent, c.file, err, c.ok, c.want)
		}
	}
	// Text after a NUL is not read (the embedded descriptor is padded).
	d := strings.Replace(base, "%s", `RW 16384 SPARSE "disk.vmdk"`, 1) + "\x00RW 1 FLAT \"/etc/shadow\" 0\n"
	if _, err := parseDescriptor([]byte(d), capacity, StreamOptimized, "disk.vmdk"); err != nil {
		t.Errorf("padding after NUL: %v", err)
	}
	if _, err := parseDescriptor([]byte(strings.Replace(base, "%s", `RW 16384 SPARSE "disk.vmdk"`, 1)), capacity, MonolithicSparse, ""); err == nil {
		t.Error("createType mismatch accepted")
	}
	for _, v := range []string{"version=4", "version=x"} {
		d := strings.Replace(strings.Replace(base, "%s", `RW 16384 SPARSE "disk.vmdk"`, 1), "version=1", v, 1)
		if _, err := parseDescriptor([]byte(d), capacity, StreamOptimized, ""); err == nil {
			t.Errorf("%s accepted", v)
		}
	}
}
