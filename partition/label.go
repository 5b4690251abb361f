package partition

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// Filesystem label locations, relative to the start of the partition.
const (
	// ISO 9660 (ECMA-119 8.4): the primary volume descriptor is the 17th
	// 2048-byte sector; its type byte is 1, then "CD001", and the volume
	// identifier (32 bytes, space padded) is at byte 40 of it.
	isoPVDOffset = 0x8000
	isoVolIDOff  = 0x8028
	isoVolIDLen  = 32
	// FAT (Microsoft FAT specification, "BPB"): the volume label of the
	// extended boot record, 11 bytes, space padded, after the boot
	// signature 0x29 at 0x26 (FAT12/16) or 0x42 (FAT32).
	fatLabelLen      = 11
	fat16SigOff      = 0x26
	fat16LabelOff    = 0x2B
	fat32SigOff      = 0x42
	fat32LabelOff    = 0x47
	fatSectorsPerFAT = 0x16 // 0 on FAT32
)

// FindByLabel returns the partition whose filesystem (ISO 9660 or FAT) is
// labelled label, compared without regard to case as cloud-init does
// (it accepts "config-2" and "CONFIG-2"), so an image that already carries
// a ConfigDrive is reused. found is false when there is none.
func FindByLabel(d Disk, label string) (p Partition, found bool, err error) {
	t, err := Read(d)
	if err != nil {
		return Partition{}, false, err
	}
	for _, p := range t.Partitions {
		if isExtended(p.MBRType) && t.Type == "mbr" {
			continue
		}
		l, err := fsLabel(d, p)
		if err != nil {
			return Partition{}, false, err
		}
		if l != "" && strings.EqualFold(l, label) {
			return p, true, nil
		}
	}
	return Partition{}, false, nil
}

// fsLabel reads the ISO 9660 or FAT label of the filesystem in p, or "".
func fsLabel(d Disk, p Partition) (string, error) {
	if p.Start < 0 || p.Size <= 0 || p.Start >= d.Size() {
		return "", nil // a broken entry (Read reported it): no filesystem to look at
	}
	end := min(p.Start+p.Size, d.Size())
	if p.Start+isoPVDOffset+2048 <= end {
		pvd := make([]byte, 2048)
		if err := readFull(d, pvd, p.Start+isoPVDOffset); err != nil {
			return "", err
		}
		if pvd[0] == 1 && string(pvd[1:6]) == "CD001" {
			id := pvd[isoVolIDOff-isoPVDOffset : isoVolIDOff-isoPVDOffset+isoVolIDLen]
			return strings.TrimRight(string(id), " \x00"), nil
		}
	}
	if p.Start+512 > end {
		return "", nil
	}
	bs := make([]byte, 512)
	if err := readFull(d, bs, p.Start); err != nil {
		return "", err
	}
	if !hasBootSignature(bs) {
		return "", nil
	}
	switch binary.LittleEndian.Uint16(bs[0x0B:]) { // bytes per sector
	case 512, 1024, 2048, 4096:
	default:
		return "", nil
	}
	sigOff, labelOff := fat16SigOff, fat16LabelOff
	if binary.LittleEndian.Uint16(bs[fatSectorsPerFAT:]) == 0 {
		sigOff, labelOff = fat32SigOff, fat32LabelOff
	}
	if bs[sigOff] != 0x29 {
		return "", nil
	}
	if !bytes.HasPrefix(bs[labelOff+fatLabelLen:], []byte("FAT")) {
		return "", nil // the filesystem type string ("FAT16   ", "FAT32   ") follows the label
	}
	l := strings.TrimRight(string(bs[labelOff:labelOff+fatLabelLen]), " \x00")
	if l == "NO NAME" {
		return "", nil
	}
	return l, nil
}
