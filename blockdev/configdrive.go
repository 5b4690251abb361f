package blockdev

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// configDriveLabel is the filesystem label cloud-init's ConfigDrive source
// looks for (cloudinit/sources/DataSourceConfigDrive.py: LABEL=config-2 or
// LABEL=CONFIG-2, so the match is case-insensitive).
const configDriveLabel = "config-2"

// probeSize is how much of each device FindConfigDriveLabels reads: it
// covers the ISO9660 primary volume descriptor (at 32 KiB) and the FAT and
// ext superblocks.
const probeSize = 64 << 10

// FindConfigDriveLabels returns the device paths (DevRoot/<name>) of the
// disks and partitions, other than disk exclude (a name like "sda" or a
// path like "/dev/sda") and its partitions, that carry a filesystem
// labelled config-2: cloud-init may read such a stale drive instead of the
// one byoi writes, so the agent warns about them. Each device is opened
// read-only and only its first 64 KiB are read; empty devices (size 0 in
// sysfs), nbd devices and devices that cannot be read are passed over. Labels recognised: ISO9660
// volume identifier, FAT12/16 and FAT32 volume label, ext2/3/4 volume name.
func (s System) FindConfigDriveLabels(exclude string) ([]string, error) {
	exclude = filepath.Base(exclude)
	names, err := s.blockNames()
	if err != nil {
		return nil, err
	}
	for _, disk := range names { // a partition excludes its whole disk
		if _, err := os.Stat(filepath.Join(s.sysRoot(), "block", disk, exclude, "partition")); err == nil {
			exclude = disk
		}
	}
	var found []string
	for _, disk := range names {
		// nbd devices without a server hang or spam the kernel log.
		if disk == exclude || strings.HasPrefix(disk, "nbd") {
			continue
		}
		devs := []string{disk}
		ents, err := listDir(filepath.Join(s.sysRoot(), "block", disk))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if _, err := os.Stat(filepath.Join(s.sysRoot(), "block", disk, e, "partition")); err == nil {
				devs = append(devs, e)
			}
		}
		for _, n := range devs {
			dir := filepath.Join(s.sysRoot(), "block", disk)
			if n != disk {
				dir = filepath.Join(dir, n)
			}
			if readIntOr(filepath.Join(dir, "size"), 0) == 0 {
				continue // empty drive, detached loop device
			}
			p := filepath.Join(s.devRoot(), n)
			if strings.EqualFold(fsLabelOf(p), configDriveLabel) {
				found = append(found, p)
			}
		}
	}
	return found, nil
}

// fsLabelOf returns the label of the filesystem on device p, or "".
func fsLabelOf(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, probeSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return FilesystemLabel(buf[:n])
}

// FilesystemLabel returns the label of the filesystem whose first bytes
// (64 KiB is enough) are b, or "" when none is recognised.
func FilesystemLabel(b []byte) string {
	// ISO9660 (ECMA-119 8.4): the primary volume descriptor is sector 16
	// (0x8000): type 1, "CD001", volume identifier at offset 40 (0x8028),
	// 32 a-characters padded with spaces.
	if len(b) >= 0x8048 && b[0x8000] == 1 && string(b[0x8001:0x8006]) == "CD001" {
		return trimLabel(b[0x8028:0x8048])
	}
	// ext2/3/4: superblock at 1024, s_magic 0xEF53 at +0x38, s_volume_name
	// (16 bytes, NUL padded) at +0x78.
	if len(b) >= 1024+0x88 && b[1024+0x38] == 0x53 && b[1024+0x39] == 0xEF {
		return trimLabel(b[1024+0x78 : 1024+0x88])
	}
	// FAT (Microsoft FAT specification, "BPB"): boot signature 0x55 0xAA
	// at 510. FAT32 has its extended boot signature 0x29 at 0x42 and the
	// 11-byte volume label at 0x47; FAT12/16 have them at 0x26 and 0x2b.
	if len(b) >= 512 && b[510] == 0x55 && b[511] == 0xAA {
		switch {
		case b[0x42] == 0x29 && bytes.HasPrefix(b[0x52:0x5a], []byte("FAT32")):
			return fatLabel(b[0x47:0x52])
		case b[0x26] == 0x29 && bytes.HasPrefix(b[0x36:0x3e], []byte("FAT")):
			return fatLabel(b[0x2b:0x36])
		}
	}
	return ""
}

func fatLabel(b []byte) string {
	l := trimLabel(b)
	if l == "NO NAME" {
		return ""
	}
	return l
}

func trimLabel(b []byte) string {
	return strings.TrimRight(string(b), " \x00")
}
