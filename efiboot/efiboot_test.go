package efiboot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// h decodes hex written with spaces, line breaks and # comments.
func h(s string) []byte {
	var clean []string
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		clean = append(clean, strings.Fields(line)...)
	}
	b, err := hex.DecodeString(strings.Join(clean, ""))
	if err != nil {
		panic(err)
	}
	return b
}

var debianEntry = Entry{
	Description: "debian",
	Partition: Partition{
		Number:   1,
		GUID:     "8da63339-0007-60c0-c436-083ac8230908",
		StartLBA: 2048,
		SizeLBA:  1048576,
	},
	LoaderPath: `\EFI\debian\grubx64.efi`,
}

// debianOption is debianEntry laid out by hand from UEFI 2.10 §3.1.3
// (EFI_LOAD_OPTION), §10.3.5.1 (Hard Drive media device path) and §10.3.5.4
// (File Path media device path).
var debianOption = h(`
	01000000                 # Attributes: LOAD_OPTION_ACTIVE
	6200                     # FilePathListLength: 42 + 52 + 4 = 98
	6400 6500 6200 6900 6100 6e00 0000   # "debian" NUL
	0401 2a00                # HD: type 4 (media), subtype 1, length 42
	01000000                 # partition number 1
	0008000000000000         # start LBA 0x800
	0000100000000000         # size 0x100000 LBAs
	3933a68d 0700 c060 c436 083ac8230908 # GUID 8DA63339-0007-60C0-C436-083AC8230908 in EFI byte order
	02                       # MBRType: GPT
	02                       # SignatureType: GUID
	0404 3400                # File: type 4, subtype 4, length 4 + 2*24
	5c00 4500 4600 4900      # \EFI
	5c00 6400 6500 6200 6900 6100 6e00       # \debian
	5c00 6700 7200 7500 6200 7800 3600 3400  # \grubx64
	2e00 6500 6600 6900 0000 # .efi NUL
	7fff 0400                # End of entire device path
`)

func TestLoadOptionLayout(t *testing.T) {
	got, err := LoadOption(debianEntry)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(debianOption) || !bytes.Equal(got, debianOption) {
		t.Fatalf("load option\n got %x\nwant %x", got, debianOption)
	}
	// Upper-case GUID and forward slashes without the leading separator give the same bytes.
	e := debianEntry
	e.Partition.GUID = strings.ToUpper(e.Partition.GUID)
	e.LoaderPath = "EFI/debian/grubx64.efi"
	got2, err := LoadOption(e)
	if err != nil || !bytes.Equal(got2, debianOption) {
		t.Fatalf("normalised entry: %v\n got %x", err, got2)
	}
}

func TestParseAndString(t *testing.T) {
	o, err := ParseLoadOption(debianOption)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Active() || o.Description != "debian" || len(o.OptionalData) != 0 || o.Network() {
		t.Fatalf("parsed %+v", o)
	}
	want := `HD(1,GPT,8DA63339-0007-60C0-C436-083AC8230908,0x800,0x100000)/File(\EFI\debian\grubx64.efi)`
	if s := DevicePathString(o.DevicePath); s != want {
		t.Fatalf("DevicePathString = %s, want %s", s, want)
	}
	n, _ := ParseLoadOption(pxeOption("UEFI PXEv4"))
	if !n.Network() || !strings.Contains(DevicePathString(n.DevicePath), "MAC(525400123456,0x1)") {
		t.Fatalf("network option not recognised: %s", DevicePathString(n.DevicePath))
	}
}

func TestLoadOptionRejects(t *testing.T) {
	bad := []func(*Entry){
		func(e *Entry) { e.Partition.Number = 0 },
		func(e *Entry) { e.Partition.SizeLBA = 0 },
		func(e *Entry) { e.Partition.GUID = "8da63339-0007-60c0-c436-083ac823090" },
		func(e *Entry) { e.Partition.GUID = "8da63339x0007-60c0-c436-083ac8230908" },
		func(e *Entry) { e.Partition.GUID = "00000000-0000-0000-0000-000000000000" },
		func(e *Entry) { e.LoaderPath = "" },
		func(e *Entry) { e.LoaderPath = `\EFI\debian\` },
		func(e *Entry) { e.Description = "a\x00b" },
		func(e *Entry) { e.Description = strings.Repeat("x", 300) },
	}
	for i, f := range bad {
		e := debianEntry
		f(&e)
		if _, err := LoadOption(e); err == nil {
			t.Errorf("case %d: %+v accepted", i, e)
		}
	}
}

// pxeOption is a network entry like OVMF's "UEFI PXEv4 (MAC:525400123456)":
// PciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,0x1)/IPv4(...) shortened to
// the MAC node.
func pxeOption(desc string) []byte {
	dp := h(`02010c00 d041030a 00000000   # PciRoot(0x0)
	         01010600 0003              # Pci(0x3,0x0)
	         030b2500 525400123456`)
	dp = append(dp, make([]byte, 26)...)
	dp = append(dp, 0x01, 0x7f, 0xff, 0x04, 0x00)
	d, _ := ucs2z(desc, 100, "")
	b := binary.LittleEndian.AppendUint32(nil, LoadOptionActive)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(dp)))
	return append(append(b, d...), dp...)
}

func diskOption(desc, guid string) []byte {
	b, err := LoadOption(Entry{Description: desc, Partition: Partition{Number: 2, GUID: guid, StartLBA: 34, SizeLBA: 99}, LoaderPath: `\EFI\BOOT\BOOTX64.EFI`})
	if err != nil {
		panic(err)
	}
	return b
}

func writeVar(t *testing.T, dir, name string, value []byte) {
	t.Helper()
	if err := (Vars{Dir: dir}).Set(name, value); err != nil {
		t.Fatal(err)
	}
}

func u16s(s ...uint16) []byte {
	var b []byte
	for _, n := range s {
		b = binary.LittleEndian.AppendUint16(b, n)
	}
	return b
}

func TestInstallAfterBootCurrent(t *testing.T) {
	dir := t.TempDir()
	writeVar(t, dir, "Boot0000", diskOption("UiApp", "11111111-2222-3333-4444-555555555555"))
	writeVar(t, dir, "Boot0001", pxeOption("UEFI PXEv4 (MAC:525400123456)"))
	writeVar(t, dir, "Boot0002", pxeOption("UEFI PXEv4 (MAC:525400123457)"))
	writeVar(t, dir, "Boot0003", diskOption("UEFI QEMU NVMe Ctrl", "11111111-2222-3333-4444-555555555556"))
	writeVar(t, dir, "Boot0005", diskOption("debian", "11111111-2222-3333-4444-555555555557")) // stale, same description
	writeVar(t, dir, "BootOrder", u16s(2, 1, 5, 3, 0))
	writeVar(t, dir, "BootCurrent", u16s(1))

	res, err := Install(dir, debianEntry)
	if err != nil {
		t.Fatal(err)
	}
	want := Installed{Num: 4, Removed: []uint16{5}, BootOrder: []uint16{2, 1, 4, 3, 0}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("Install = %+v, want %+v", res, want)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "Boot0004-"+GlobalVariableGUID))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[:4], []byte{7, 0, 0, 0}) || !bytes.Equal(raw[4:], debianOption) {
		t.Fatalf("Boot0004 = %x", raw)
	}
	if _, err := os.Stat(filepath.Join(dir, "Boot0005-"+GlobalVariableGUID)); !os.IsNotExist(err) {
		t.Fatalf("stale entry kept: %v", err)
	}
	v := Vars{Dir: dir}
	if o, _ := v.BootOrder(); !reflect.DeepEqual(o, []uint16{2, 1, 4, 3, 0}) {
		t.Fatalf("BootOrder = %v", o)
	}
	if _, err := v.Get("BootNext"); !os.IsNotExist(err) {
		t.Fatalf("BootNext written: %v", err)
	}

	// Again: the identical entry is reused, nothing moves.
	res, err = Install(dir, debianEntry)
	if err != nil {
		t.Fatal(err)
	}
	want = Installed{Num: 4, Reused: true, BootOrder: []uint16{2, 1, 4, 3, 0}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("second Install = %+v, want %+v", res, want)
	}
	// A new deployment on another partition replaces it, in the same place.
	e := debianEntry
	e.Partition.GUID = "8da63339-0007-60c0-c436-083ac8230909"
	res, err = Install(dir, e)
	if err != nil {
		t.Fatal(err)
	}
	want = Installed{Num: 5, Removed: []uint16{4}, BootOrder: []uint16{2, 1, 5, 3, 0}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("third Install = %+v, want %+v", res, want)
	}
}

func TestInstallMovesDisksBehindTheNetwork(t *testing.T) {
	// OVMF without QEMU bootindex, fresh variables: the disks come first
	// (they failed: blank), then the network entry the rescue booted from.
	dir := t.TempDir()
	writeVar(t, dir, "Boot0000", diskOption("UiApp", "11111111-2222-3333-4444-555555555555"))
	writeVar(t, dir, "Boot0001", diskOption("UEFI QEMU NVMe Ctrl byoi-c 1", "11111111-2222-3333-4444-555555555556"))
	writeVar(t, dir, "Boot0002", pxeOption("UEFI PXEv4 (MAC:525400123457)"))
	writeVar(t, dir, "Boot0003", diskOption("UEFI QEMU NVMe Ctrl byoi-a 1", "11111111-2222-3333-4444-555555555557"))
	writeVar(t, dir, "Boot0004", pxeOption("UEFI PXEv4 (MAC:525400123456)"))
	writeVar(t, dir, "Boot0005", pxeOption("UEFI PXEv6 (MAC:525400123456)"))
	writeVar(t, dir, "BootOrder", u16s(1, 2, 3, 4, 5, 0))
	writeVar(t, dir, "BootCurrent", u16s(4))
	res, err := Install(dir, debianEntry)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint16{2, 4, 6, 1, 3, 5, 0}; res.Num != 6 || !reflect.DeepEqual(res.BootOrder, want) {
		t.Fatalf("Install = %+v, want Boot0006 and BootOrder %v", res, want)
	}
}

func TestInstallWithoutBootCurrent(t *testing.T) {
	dir := t.TempDir()
	writeVar(t, dir, "Boot0000", pxeOption("UEFI PXEv4"))
	writeVar(t, dir, "Boot0001", pxeOption("UEFI HTTPv4"))
	writeVar(t, dir, "Boot0002", diskOption("UEFI Misc Device", "11111111-2222-3333-4444-555555555555"))
	writeVar(t, dir, "BootOrder", u16s(0, 1, 2))
	res, err := Install(dir, debianEntry)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.BootOrder, []uint16{0, 1, 3, 2}) || res.Num != 3 {
		t.Fatalf("after the leading network entries: %+v", res)
	}

	// BootCurrent not in BootOrder (one-time boot): same rule.
	dir = t.TempDir()
	writeVar(t, dir, "Boot0000", diskOption("disk", "11111111-2222-3333-4444-555555555555"))
	writeVar(t, dir, "Boot0001", pxeOption("UEFI PXEv4"))
	writeVar(t, dir, "BootOrder", u16s(0, 1))
	writeVar(t, dir, "BootCurrent", u16s(9))
	res, err = Install(dir, debianEntry)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.BootOrder, []uint16{2, 0, 1}) {
		t.Fatalf("no leading network entry: first; got %+v", res)
	}

	// Empty directory: Boot0000, BootOrder created.
	dir = t.TempDir()
	res, err = Install(dir, debianEntry)
	if err != nil || res.Num != 0 || !reflect.DeepEqual(res.BootOrder, []uint16{0}) {
		t.Fatalf("empty: %+v %v", res, err)
	}
}

func TestVarsErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "BootOrder-"+GlobalVariableGUID), []byte{7, 0, 0, 0, 1}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(dir, debianEntry); err == nil {
		t.Fatal("odd-length BootOrder accepted")
	}
	if _, err := Install(filepath.Join(dir, "missing"), debianEntry); err == nil {
		t.Fatal("missing directory accepted")
	}
}

func FuzzParseLoadOption(f *testing.F) {
	f.Add(debianOption)
	f.Add(pxeOption("UEFI PXEv4"))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseLoadOption(b)
		if err != nil {
			return
		}
		_ = DevicePathString(o.DevicePath)
		_ = o.Network()
	})
}

// TestMatchesEfibootmgr compares LoadOption with the bytes efibootmgr wrote
// in a guest (testdata/efibootmgr-17.txt says how they were captured).
func TestMatchesEfibootmgr(t *testing.T) {
	raw, err := os.ReadFile("testdata/efibootmgr-17.txt")
	if err != nil {
		t.Fatal(err)
	}
	want := h(string(raw))
	got, err := LoadOption(Entry{
		Description: "byoi deployed image",
		Partition:   Partition{Number: 2, GUID: "97D822A0-88E6-4EC0-9721-E6C7B9E40155", StartLBA: 0x4800, SizeLBA: 0x14000},
		LoaderPath:  `\EFI\debian\grubx64.efi`,
	})
	if err != nil {
		t.Fatal(err)
	}
	got = append([]byte{7, 0, 0, 0}, got...)
	if !bytes.Equal(got, want) {
		t.Fatalf("efiboot differs from efibootmgr\n got %x\nwant %x", got, want)
	}
	o, err := ParseLoadOption(want[4:])
	if err != nil {
		t.Fatal(err)
	}
	if s := DevicePathString(o.DevicePath); s != `HD(2,GPT,97D822A0-88E6-4EC0-9721-E6C7B9E40155,0x4800,0x14000)/File(\EFI\debian\grubx64.efi)` {
		t.Fatalf("DevicePathString = %s", s)
	}
}
