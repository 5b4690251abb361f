package partition

import (
	"errors"
	"fmt"
)

// DetectSectorSize looks at the first bytes of an image (at least 8 KiB to
// see a 4096-byte-sector GPT) and tells which partition table it holds:
// "gpt" with the logical sector size it was made for (its header "EFI
// PART" is at LBA 1, i.e. at byte 512 or 4096), "mbr" with 0, or "" with 0
// when there is none. When both offsets carry a signature, the one whose
// header checks out wins, 512 first. A protective MBR (type 0xEE) whose
// GPT header is gone gives "gpt" with 0: a GPT of unknown sector size.
func DetectSectorSize(head []byte) (table string, sectorSize int64) {
	v, err := Examine(head)
	var te *TableError
	switch {
	case err == nil:
		return v.Table, v.SectorSize
	case errors.As(err, &te):
		return te.Table, 0
	}
	return "", 0
}

// CheckSectorSize refuses a GPT image made for another logical sector size
// than the disk's. It looks only at the image's head, so it runs before
// anything is written. MBR images and images without a table pass (the
// former's partitions are in the disk's sectors by definition; the latter
// are refused elsewhere).
func CheckSectorSize(head []byte, diskSectorSize int64) error {
	if !validSectorSize(diskSectorSize) {
		return fmt.Errorf("disk sector size %d is not supported (512, 1024, 2048 or 4096)", diskSectorSize)
	}
	table, ss := DetectSectorSize(head)
	if table == "gpt" && ss != 0 && ss != diskSectorSize {
		return &SectorSizeError{ImageSectorSize: ss, DiskSectorSize: diskSectorSize}
	}
	return nil
}
