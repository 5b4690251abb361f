package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func (d *Device) openBlock(opts OpenOptions) error {
	flag := os.O_RDWR | unix.O_EXCL | unix.O_CLOEXEC
	if opts.ReadOnly {
		flag = os.O_RDONLY | unix.O_CLOEXEC
	}
	f, err := os.OpenFile(d.path, flag, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("open disk %s: in use by another program (O_EXCL): %w", d.path, err)
		}
		return fmt.Errorf("open disk: %w", err)
	}
	d.f = f
	var size uint64
	if err := ioctlPtr(f, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		f.Close()
		return fmt.Errorf("BLKGETSIZE64 %s: %w", d.path, err)
	}
	var ssz int32
	if err := ioctlPtr(f, unix.BLKSSZGET, unsafe.Pointer(&ssz)); err != nil {
		f.Close()
		return fmt.Errorf("BLKSSZGET %s: %w", d.path, err)
	}
	d.size = int64(size)
	d.sectorSize = int64(ssz)
	return nil
}

func ioctlPtr(f *os.File, req uint, p unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno error
	if err := rc.Control(func(fd uintptr) {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(p)); e != 0 {
			errno = e
		}
	}); err != nil {
		return err
	}
	return errno
}

func (d *Device) zeroRange(ctx context.Context, off, n int64) error {
	if !d.isBlock {
		rc, err := d.f.SyscallConn()
		if err != nil {
			return err
		}
		var ferr error
		if err := rc.Control(func(fd uintptr) {
			ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		}); err != nil {
			return err
		}
		if ferr == nil {
			return nil
		}
		return d.writeZeros(ctx, off, n)
	}
	// BLKZEROOUT wants sector-aligned ranges; write the unaligned edges.
	ss := d.sectorSize
	start := (off + ss - 1) / ss * ss
	end := (off + n) / ss * ss
	if end <= start {
		return d.writeZeros(ctx, off, n)
	}
	if err := d.writeZeros(ctx, off, start-off); err != nil {
		return err
	}
	if err := d.writeZeros(ctx, end, off+n-end); err != nil {
		return err
	}
	r := [2]uint64{uint64(start), uint64(end - start)}
	if err := ioctlPtr(d.f, unix.BLKZEROOUT, unsafe.Pointer(&r)); err != nil {
		return d.writeZeros(ctx, start, end-start)
	}
	return nil
}
