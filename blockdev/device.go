// Package blockdev opens disks (block devices, or regular files standing in
// for them), issues the Linux block ioctls, inventories disks from sysfs and
// refuses disks the running system uses.
package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Device is an opened disk: a block device or a regular file. It implements
// imaging.Target.
type Device struct {
	f          *os.File
	path       string
	size       int64
	sectorSize int64
	isBlock    bool
}

// OpenOptions tune Open.
type OpenOptions struct {
	// SectorSize overrides the logical sector size of a regular file
	// (default 512). Block devices always report their own.
	SectorSize int64
	// ReadOnly opens the device without write access.
	ReadOnly bool
}

// Open opens path as a disk. A block device is opened O_EXCL so nobody else
// (a mount, another byoi) can hold it meanwhile.
func Open(path string, opts OpenOptions) (*Device, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open disk: %w", err)
	}
	d := &Device{path: path}
	switch {
	case st.Mode().IsRegular():
		d.sectorSize = 512
		if opts.SectorSize != 0 {
			if opts.SectorSize != 512 && opts.SectorSize != 4096 {
				return nil, fmt.Errorf("open disk %s: sector size %d is not 512 or 4096", path, opts.SectorSize)
			}
			d.sectorSize = opts.SectorSize
		}
		flag := os.O_RDWR
		if opts.ReadOnly {
			flag = os.O_RDONLY
		}
		if d.f, err = os.OpenFile(path, flag, 0); err != nil {
			return nil, fmt.Errorf("open disk: %w", err)
		}
		d.size = st.Size()
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.isBlock = true
		if err := d.openBlock(opts); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("open disk %s: not a block device or regular file", path)
	}
	return d, nil
}

// Path is the path the device was opened with.
func (d *Device) Path() string { return d.path }

// Size is the size in bytes.
func (d *Device) Size() int64 { return d.size }

// SectorSize is the logical sector size in bytes.
func (d *Device) SectorSize() int64 { return d.sectorSize }

// IsBlockDevice tells whether this is a real block device (not a file).
func (d *Device) IsBlockDevice() bool { return d.isBlock }

// File returns the underlying file (for locking and ioctls).
func (d *Device) File() *os.File { return d.f }

// ReadAt implements io.ReaderAt.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt. Writes past the end of the disk fail.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write of %d bytes at %d: %w", len(p), off, ErrPastEnd)
	}
	return d.f.WriteAt(p, off)
}

// ErrPastEnd is returned for writes beyond the end of the disk.
var ErrPastEnd = errors.New("past the end of the disk")

// Sync flushes written data to stable storage (fsync, and the block
// device's buffer cache).
func (d *Device) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", d.path, err)
	}
	return nil
}

// Close closes the device and reports the error of close.
func (d *Device) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", d.path, err)
	}
	return nil
}

// ZeroRange makes [off, off+n) read as zeros.
func (d *Device) ZeroRange(ctx context.Context, off, n int64) error {
	if n <= 0 {
		return nil
	}
	if off < 0 || off+n > d.size {
		return fmt.Errorf("zero %d bytes at %d: %w", n, off, ErrPastEnd)
	}
	return d.zeroRange(ctx, off, n)
}

// writeZeros is the portable fallback of ZeroRange.
func (d *Device) writeZeros(ctx context.Context, off, n int64) error {
	buf := make([]byte, min(n, 4<<20))
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(n, int64(len(buf)))
		if _, err := d.f.WriteAt(buf[:c], off); err != nil {
			return fmt.Errorf("write zeros at %d: %w", off, err)
		}
		off += c
		n -= c
	}
	return nil
}
