package partition

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// guid is a GUID as stored on disk: the first three fields little-endian,
// the last two big-endian (UEFI spec 2.10, appendix A).
type guid [16]byte

// LinuxFilesystemGUID is the "Linux filesystem data" partition type GUID,
// the type AddPartition gives the config-2 partition.
const LinuxFilesystemGUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

func (g guid) isZero() bool { return g == guid{} }

// String formats g the way sgdisk and sfdisk print it (upper case).
func (g guid) String() string {
	var b [16]byte
	binary.BigEndian.PutUint32(b[0:4], binary.LittleEndian.Uint32(g[0:4]))
	binary.BigEndian.PutUint16(b[4:6], binary.LittleEndian.Uint16(g[4:6]))
	binary.BigEndian.PutUint16(b[6:8], binary.LittleEndian.Uint16(g[6:8]))
	copy(b[8:], g[8:])
	h := strings.ToUpper(hex.EncodeToString(b[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// parseGUID parses the text form of a GUID into its on-disk form.
func parseGUID(s string) (guid, error) {
	var g guid
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("malformed GUID %q", s)
	}
	var b [16]byte
	if _, err := hex.Decode(b[:], []byte(s[0:8]+s[9:13]+s[14:18]+s[19:23]+s[24:36])); err != nil {
		return g, fmt.Errorf("malformed GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:4], binary.BigEndian.Uint32(b[0:4]))
	binary.LittleEndian.PutUint16(g[4:6], binary.BigEndian.Uint16(b[4:6]))
	binary.LittleEndian.PutUint16(g[6:8], binary.BigEndian.Uint16(b[6:8]))
	copy(g[8:], b[8:])
	return g, nil
}

// newGUID returns a random (version 4, RFC 9562) GUID.
func newGUID() (guid, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return guid{}, fmt.Errorf("random GUID: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	// b is in text (big-endian) order; store it in on-disk order.
	var g guid
	binary.LittleEndian.PutUint32(g[0:4], binary.BigEndian.Uint32(b[0:4]))
	binary.LittleEndian.PutUint16(g[4:6], binary.BigEndian.Uint16(b[4:6]))
	binary.LittleEndian.PutUint16(g[6:8], binary.BigEndian.Uint16(b[6:8]))
	copy(g[8:], b[8:])
	return g, nil
}

// gptTypeNames names the partition type GUIDs an image is likely to carry
// (UEFI spec 2.10 table 5-7, the Discoverable Partitions Specification,
// and the names sgdisk uses).
var gptTypeNames = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot partition",
	"024DEE41-33E7-11D3-9D69-0008C781F39F": "MBR partition scheme",
	LinuxFilesystemGUID:                    "Linux filesystem",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM64)",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux /home",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
	"83BD6B9D-7F41-11DC-BE0B-001560B84F0F": "FreeBSD boot",
	"516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD disklabel",
	"516E7CB5-6ECF-11D6-8FF8-00022D09712B": "FreeBSD swap",
	"516E7CB6-6ECF-11D6-8FF8-00022D09712B": "FreeBSD UFS",
	"516E7CBA-6ECF-11D6-8FF8-00022D09712B": "FreeBSD ZFS",
	"6A898CC3-1DD2-11B2-99A6-080020736631": "Solaris /usr & Apple ZFS",
	"48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS/HFS+",
	"7C3457EF-0000-11AA-AA11-00306543ECAC": "Apple APFS",
}

// mbrTypeNames names common MBR partition type bytes.
var mbrTypeNames = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16",
	0x07: "HPFS/NTFS/exFAT", 0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)",
	0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Extended (LBA)", 0x27: "Hidden NTFS WinRE",
	0x82: "Linux swap", 0x83: "Linux", 0x85: "Linux extended", 0x8e: "Linux LVM",
	0xa5: "FreeBSD", 0xa6: "OpenBSD", 0xa9: "NetBSD", 0xee: "GPT protective",
	0xef: "EFI (FAT-12/16/32)", 0xfd: "Linux raid autodetect",
}
