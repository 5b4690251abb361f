// Package partition reads and repairs GPT and MBR partition tables at the
// byte level: it detects the table and its sector size, moves the backup GPT
// to the end of a disk that is larger than the image written on it, fixes
// the protective MBR, adds the config-2 ConfigDrive partition and finds
// partitions by filesystem label.
//
// It works on a Disk (io.ReaderAt and io.WriterAt plus a size and a logical
// sector size), never on device paths. Every byte it parses comes from an
// untrusted customer image: nothing here panics on input, and every size
// read from a header is bounded before anything is allocated from it.
//
// The GPT code is our own rather than go-diskfs's: the relocation copies
// the partition entry array verbatim (unknown type GUIDs, attribute bits,
// names, entry sizes and counts other than 128), where go-diskfs re-encodes
// the entries it understands.
package partition

import (
	"errors"
	"fmt"
	"io"
)

// Disk is what the package reads and writes: a whole disk or a file
// standing in for one. blockdev.Device satisfies it.
type Disk interface {
	io.ReaderAt
	io.WriterAt
	// Size is the size of the disk in bytes.
	Size() int64
	// SectorSize is the logical sector size in bytes (512 or 4096).
	SectorSize() int64
}

// Syncer is implemented by Disks that can flush written data to stable
// storage. When the Disk implements it, writes are flushed between the
// steps of a crash-safe update.
type Syncer interface {
	Sync() error
}

// Table is a partition table as read from a disk.
type Table struct {
	// Type is "gpt" or "mbr".
	Type string
	// SectorSize is the logical sector size the table was read with.
	SectorSize int64
	// DiskGUID is the GPT disk GUID (empty for MBR).
	DiskGUID string
	// DiskSignature is the MBR disk signature (bytes 440..443 of LBA 0).
	DiskSignature uint32
	// Partitions lists the used entries in table order. GPT partitions are
	// numbered by their entry index + 1 (like sgdisk); MBR primary
	// partitions 1..4 and logical partitions from 5 (like the kernel).
	Partitions []Partition
	// FirstUsable and LastUsable are the GPT usable LBA range (0 for MBR).
	FirstUsable, LastUsable uint64
	// AlternateLBA is where the header that was read says the other
	// header is. EntryLBA is where its entry array starts.
	AlternateLBA, EntryLBA uint64
	// EntryCount and EntrySize describe the GPT entry array.
	EntryCount, EntrySize uint32
	// FromBackup is true when the primary GPT header was damaged and the
	// table was read from the backup at the end of the disk.
	FromBackup bool
	// HybridMBR is true when the GPT's MBR holds partitions besides the
	// protective 0xEE one.
	HybridMBR bool
	// Problems lists what is wrong with the table without preventing it
	// from being read: a missing or stale backup header (a truncated
	// image, or a backup not moved to the end of a larger disk), a damaged
	// primary header, overlapping partitions.
	Problems []string
}

// Partition is one partition. Start and Size are in bytes.
type Partition struct {
	Number int
	Start  int64
	Size   int64
	// TypeGUID is the GPT partition type GUID (upper case), TypeName its
	// well-known name, or for MBR the name of MBRType.
	TypeGUID string
	TypeName string
	// Name is the GPT partition name.
	Name string
	// GUID is the GPT unique partition GUID.
	GUID string
	// Attributes are the GPT attribute bits.
	Attributes uint64
	// MBRType is the MBR partition type byte.
	MBRType byte
	// Bootable is the MBR active flag (0x80), or GPT attribute bit 2
	// (legacy BIOS bootable).
	Bootable bool
}

// ErrNoTable is returned when a disk holds neither a GPT nor an MBR.
var ErrNoTable = errors.New("no partition table found")

// SectorSizeError is returned when a GPT image was made for another logical
// sector size than the disk's: its header sits at LBA 1 of the other size,
// and no byte-level fix makes its partitions line up.
type SectorSizeError struct {
	ImageSectorSize int64
	DiskSectorSize  int64
}

func (e *SectorSizeError) Error() string {
	return fmt.Sprintf("image made for %d-byte sectors, the disk has %d-byte sectors", e.ImageSectorSize, e.DiskSectorSize)
}

// RelocateError is returned by RelocateBackupGPT, with the cause.
type RelocateError struct {
	Err error
}

func (e *RelocateError) Error() string {
	return "relocate the backup GPT: " + e.Err.Error()
}

func (e *RelocateError) Unwrap() error { return e.Err }

// validSectorSize accepts the logical sector sizes disks have.
func validSectorSize(ss int64) bool {
	return ss == 512 || ss == 1024 || ss == 2048 || ss == 4096
}

// geometry checks the disk's sector size and returns it with the number of
// whole sectors.
func geometry(d Disk) (ss int64, sectors uint64, err error) {
	ss = d.SectorSize()
	if !validSectorSize(ss) {
		return 0, 0, fmt.Errorf("disk sector size %d is not supported (512, 1024, 2048 or 4096)", ss)
	}
	size := d.Size()
	if size < 2*ss {
		return 0, 0, fmt.Errorf("disk of %d bytes is too small for a partition table", size)
	}
	return ss, uint64(size / ss), nil
}

// readFull reads exactly len(p) bytes at off.
func readFull(d io.ReaderAt, p []byte, off int64) error {
	n, err := d.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at offset %d: %w", len(p), off, err)
}

// writeFull writes p at off and reports short writes.
func writeFull(d io.WriterAt, p []byte, off int64) error {
	n, err := d.WriteAt(p, off)
	if err != nil {
		return fmt.Errorf("write %d bytes at offset %d: %w", len(p), off, err)
	}
	if n != len(p) {
		return fmt.Errorf("write %d bytes at offset %d: %w", len(p), off, io.ErrShortWrite)
	}
	return nil
}

// flush flushes d when it can be flushed.
func flush(d Disk) error {
	if s, ok := d.(Syncer); ok {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	return nil
}
