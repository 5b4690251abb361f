package imaging

import (
	"bytes"
	"errors"

	"github.com/byoi/byoi/partition"
)

// Format is what the first bytes of an image look like.
type Format string

// Formats Sniff recognises. FormatRaw is a disk image with a partition
// table: the only thing byoi writes as raw.
const (
	FormatRaw      Format = "raw"
	FormatQcow2    Format = "qcow2"
	FormatGzip     Format = "gzip"
	FormatXz       Format = "xz"
	FormatZstd     Format = "zstd"
	FormatBzip2    Format = "bzip2"
	FormatISO9660  Format = "iso9660"
	FormatExt4     Format = "ext4" // ext2, ext3 and ext4 share the superblock magic
	FormatXFS      Format = "xfs"
	FormatBtrfs    Format = "btrfs"
	FormatVMDK     Format = "vmdk"
	FormatVHDX     Format = "vhdx"
	FormatVDI      Format = "vdi"
	FormatVHD      Format = "vhd"
	FormatLVM2     Format = "lvm2"
	FormatLUKS     Format = "luks"
	FormatSquashfs Format = "squashfs"
	FormatZip      Format = "zip"
	FormatTar      Format = "tar"
	FormatEmpty    Format = "empty" // nothing but zeros (or no bytes at all)
	FormatUnknown  Format = "unknown"
)

// magic is a signature at a fixed offset.
type magic struct {
	off int
	sig string
	f   Format
}

// wrappers are image containers, compressors and archives: their magic sits
// at offset 0, where a raw disk has boot code, so they are checked before
// the partition table (a 0x55AA at 510 inside a qcow2 header is chance).
var wrappers = []magic{
	{0, "QFI\xfb", FormatQcow2},              // qcow2 spec: magic "QFI\xfb"
	{0, "KDMV", FormatVMDK},                  // VMDK sparse extent header
	{0, "# Disk DescriptorFile", FormatVMDK}, // VMDK text descriptor
	{0, "vhdxfile", FormatVHDX},              // VHDX file type identifier
	{64, "\x7f\x10\xda\xbe", FormatVDI},      // VDI: 0xbeda107f little endian after the "<<< " text
	{0, "conectix", FormatVHD},               // VHD footer copy (dynamic/differencing disks)
	{0, "\x1f\x8b", FormatGzip},              // RFC 1952
	{0, "\xfd7zXZ\x00", FormatXz},            // xz file format 2.2.1
	{0, "\x28\xb5\x2f\xfd", FormatZstd},      // RFC 8878 frame magic
	{0, "PK\x03\x04", FormatZip},             // local file header
	{257, "ustar", FormatTar},                // POSIX ustar and GNU tar
}

// volumes are filesystems and volume formats a partitionless image (a bare
// filesystem) would hold. They are checked after the partition table: a
// hybrid ISO (isohybrid, xorriso) carries both, and is a disk image.
var volumes = []magic{
	{32769, "CD001", FormatISO9660},       // ECMA-119: volume descriptor at sector 16 (2048-byte sectors), id at +1
	{65536 + 64, "_BHRfS_M", FormatBtrfs}, // btrfs superblock at 64 KiB, magic at +0x40
	{0, "XFSB", FormatXFS},                // XFS superblock sb_magicnum
	{0, "LUKS\xba\xbe", FormatLUKS},       // LUKS1/LUKS2 primary header
	{0, "hsqs", FormatSquashfs},           // squashfs little-endian superblock
	{1024 + 56, "\x53\xef", FormatExt4},   // ext2/3/4 s_magic 0xEF53 at 1024+0x38
	{512, "LABELONE", FormatLVM2},         // LVM2 label, normally in sector 1
	{0, "LABELONE", FormatLVM2},           // ... but it may sit in any of the first 4 sectors
	{1024, "LABELONE", FormatLVM2},
	{1536, "LABELONE", FormatLVM2},
}

func (m magic) match(head []byte) bool {
	return len(head) >= m.off+len(m.sig) && string(head[m.off:m.off+len(m.sig)]) == m.sig
}

// Sniff tells what an image is from its first bytes (up to HeadSize; a
// shorter head is fine, signatures beyond it are not seen). A head with a
// partition table is FormatRaw even if it also carries a filesystem
// signature (hybrid ISO images).
func Sniff(head []byte) Format {
	for _, m := range wrappers {
		if m.match(head) {
			if m.f == FormatVDI && !bytes.HasPrefix(head, []byte("<<< ")) {
				continue
			}
			return m.f
		}
	}
	// bzip2: "BZh" then the block size digit '1'..'9'.
	if len(head) >= 4 && string(head[:3]) == "BZh" && head[3] >= '1' && head[3] <= '9' {
		return FormatBzip2
	}
	if _, ok := HasPartitionTable(head); ok {
		return FormatRaw
	}
	for _, m := range volumes {
		if m.match(head) {
			return m.f
		}
	}
	if AllZero(head) {
		return FormatEmpty
	}
	return FormatUnknown
}

// HasPartitionTable finds a partition table in the head of an image: "gpt"
// or "mbr", by partition.Examine, the one detector byoi has (Linux's rules:
// a GPT header at LBA 1 of 512 or 4096 bytes, or a classic MBR). A table
// Examine refuses (a GPT hidden behind an MBR) still counts as a table
// here: the image is a disk image, and CheckFormat says why it is refused.
func HasPartitionTable(head []byte) (table string, ok bool) {
	v, err := partition.Examine(head)
	var te *partition.TableError
	switch {
	case err == nil:
		return v.Table, true
	case errors.As(err, &te):
		return te.Table, true
	}
	return "", false
}

// zeroBlock is compared against: bytes.Equal is vectorised.
var zeroBlock [64 << 10]byte

// AllZero reports whether b holds only zero bytes (true for an empty b),
// 64 KiB at a time (bytes.Equal is vectorised).
func AllZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
