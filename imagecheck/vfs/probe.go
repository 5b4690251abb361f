package vfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// Probed is what a partition's first bytes say it holds, as blkid would
// name it: the type, and the UUID and label fstab refers to.
type Probed struct {
	// Type is blkid's name: ext2, ext3, ext4, xfs, vfat, btrfs, swap,
	// LVM2_member, linux_raid_member, crypto_LUKS, iso9660, ntfs,
	// squashfs, f2fs; "" when unknown.
	Type  string
	UUID  string
	Label string
}

// probeSize is how much of a partition Probe reads (btrfs's superblock is
// at 64 KiB, an md 1.2 superblock at 4 KiB).
const probeSize = 68 << 10

// Probe reads the first bytes of the filesystem in r (size bytes) and tells
// what it is. Only the head is read; nothing is validated beyond the magic
// numbers.
func Probe(r io.ReaderAt, size int64) (Probed, error) {
	b := make([]byte, min(size, probeSize))
	if n, err := r.ReadAt(b, 0); n < len(b) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return Probed{}, fmt.Errorf("read the first %d bytes: %w", len(b), err)
	}
	at := func(off int, magic string) bool {
		return off+len(magic) <= len(b) && string(b[off:off+len(magic)]) == magic
	}
	le, be := binary.LittleEndian, binary.BigEndian
	switch {
	case len(b) >= 2048 && le.Uint16(b[1024+56:]) == 0xEF53:
		sb := b[1024:2048]
		t := "ext2"
		compat, incompat, ro := le.Uint32(sb[92:]), le.Uint32(sb[96:]), le.Uint32(sb[100:])
		if compat&0x4 != 0 { // has_journal
			t = "ext3"
		}
		// Any of extents, 64bit, flex_bg, or ro huge_file/dir_nlink/
		// extra_isize/metadata_csum makes it ext4, as blkid says.
		if incompat&(0x40|0x80|0x200) != 0 || ro&(0x8|0x20|0x40|0x400) != 0 {
			t = "ext4"
		}
		return Probed{Type: t, UUID: uuid(sb[104:120]), Label: cstr(sb[120:136])}, nil
	case at(0, "XFSB"):
		return Probed{Type: "xfs", UUID: uuid(b[32:48]), Label: cstr(b[108:120])}, nil
	case at(0x10040, "_BHRfS_M"):
		return Probed{Type: "btrfs", UUID: uuid(b[0x10020:0x10030]), Label: cstr(b[0x1012B:0x1022B])}, nil
	case at(4086, "SWAPSPACE2") || at(4086, "SWAP-SPACE"):
		return Probed{Type: "swap", UUID: uuid(b[1024+12 : 1024+28]), Label: cstr(b[1024+28 : 1024+44])}, nil
	case at(0, "LUKS\xba\xbe"):
		return Probed{Type: "crypto_LUKS", UUID: cstr(b[168:208])}, nil
	case at(0, "hsqs"):
		return Probed{Type: "squashfs"}, nil
	case at(0x8001, "CD001"):
		return Probed{Type: "iso9660", Label: strings.TrimSpace(cstr(b[0x8028:0x8048]))}, nil
	case at(3, "NTFS    "):
		return Probed{Type: "ntfs", UUID: fmt.Sprintf("%016X", le.Uint64(b[72:]))}, nil
	case len(b) >= 1028 && le.Uint32(b[1024:]) == 0xF2F52010:
		return Probed{Type: "f2fs"}, nil
	case len(b) >= 4100 && le.Uint32(b[4096:]) == 0xa92b4efc:
		return Probed{Type: "linux_raid_member", UUID: uuid(b[4096+16 : 4096+32])}, nil
	}
	for s := 0; s < 4; s++ { // LVM's label is in one of the first 4 sectors
		if at(s*512, "LABELONE") && at(s*512+24, "LVM2 001") {
			return Probed{Type: "LVM2_member", UUID: cstr(b[s*512+32 : s*512+64])}, nil
		}
	}
	if len(b) >= 512 && b[510] == 0x55 && b[511] == 0xAA && be.Uint16(b[11:]) != 0 {
		switch {
		case at(82, "FAT32   "):
			return Probed{Type: "vfat", UUID: fatSerial(b[67:71]), Label: fatLabel(b[71:82])}, nil
		case at(54, "FAT12   ") || at(54, "FAT16   ") || at(54, "FAT     "):
			return Probed{Type: "vfat", UUID: fatSerial(b[39:43]), Label: fatLabel(b[43:54])}, nil
		}
	}
	return Probed{}, nil
}

func uuid(b []byte) string {
	if bytes.Equal(b, make([]byte, len(b))) {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func fatSerial(b []byte) string {
	v := binary.LittleEndian.Uint32(b)
	return fmt.Sprintf("%04X-%04X", v>>16, v&0xFFFF)
}

func fatLabel(b []byte) string {
	l := strings.TrimRight(string(b), " \x00")
	if l == "NO NAME" {
		return ""
	}
	return l
}

// cstr is a NUL-terminated (or padded) string.
func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.ToValidUTF8(string(b), "?")
}
