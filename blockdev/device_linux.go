package blockdev

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func (d *Device) openBlock(opts OpenOptions) error {
	// O_EXCL on a block device claims it: the open fails with EBUSY while
	// it (or one of its partitions) is mounted, is a dm/md member, or is
	// open O_EXCL by another program, and nobody can claim it meanwhile.
	flag := os.O_RDWR | unix.O_EXCL | unix.O_CLOEXEC
	if opts.ReadOnly {
		flag = os.O_RDONLY | unix.O_CLOEXEC
	}
	f, err := os.OpenFile(d.path, flag, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			why := "mounted, held by device-mapper/md, or opened exclusively by another program"
			if r, rerr := (System{}).InUseByPath(d.path); rerr == nil && r != "" {
				why = r
			}
			return fmt.Errorf("open disk %s: %w (%s): %w", d.path, ErrInUse, why, err)
		}
		return fmt.Errorf("open disk: %w", err)
	}
	d.f = f
	var size uint64
	if err := ioctlPtr(f, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		f.Close()
		return fmt.Errorf("BLKGETSIZE64 %s: %w", d.path, err)
	}
	var ssz, psz int32
	if err := ioctlPtr(f, unix.BLKSSZGET, unsafe.Pointer(&ssz)); err != nil {
		f.Close()
		return fmt.Errorf("BLKSSZGET %s: %w", d.path, err)
	}
	if err := ioctlPtr(f, unix.BLKPBSZGET, unsafe.Pointer(&psz)); err != nil {
		f.Close()
		return fmt.Errorf("BLKPBSZGET %s: %w", d.path, err)
	}
	if ssz <= 0 {
		f.Close()
		return fmt.Errorf("BLKSSZGET %s: bad sector size %d", d.path, ssz)
	}
	if psz < ssz {
		psz = ssz
	}
	d.size = int64(size)
	d.sectorSize = int64(ssz)
	d.physSize = int64(psz)
	return nil
}

// ioctlPtr issues an ioctl on f's descriptor. RawConn.Control keeps f alive
// (and its descriptor open) for the duration of the call.
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

// ioctlChunk bounds one BLKZEROOUT/BLKDISCARD call so a cancelled context
// is noticed between chunks.
const ioctlChunk = 1 << 30

// writeBehind starts the writeback of a range just written, without waiting
// for it (sync_file_range SYNC_FILE_RANGE_WRITE). The kernel otherwise keeps
// up to dirty_ratio of RAM (gigabytes on a server) dirty until the final
// fsync, which then writes it all while nothing else runs; started early,
// the disk writes while the next chunks are downloaded or decompressed.
// It is a hint: errors are left to the final fsync, which reports them.
func (d *Device) writeBehind(off, n int64) {
	if d.onWriteBehind != nil {
		d.onWriteBehind(off, n)
	}
	rc, err := d.f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}

func (d *Device) punchHole(off, n int64) error {
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
	return ferr
}

// rangeIoctl runs a BLKZEROOUT/BLKDISCARD-style ioctl ({start, length} in
// bytes) over [off, off+n) in chunks.
func (d *Device) rangeIoctl(ctx context.Context, req uint, off, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(n, ioctlChunk)
		r := [2]uint64{uint64(off), uint64(c)}
		if err := ioctlPtr(d.f, req, unsafe.Pointer(&r)); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

func (d *Device) zeroRange(ctx context.Context, off, n int64) error {
	if !d.isBlock {
		if err := d.punchHole(off, n); err == nil {
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
	if err := d.rangeIoctl(ctx, unix.BLKZEROOUT, start, end-start); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return d.writeZeros(ctx, start, end-start)
	}
	return nil
}

func (d *Device) discard(ctx context.Context, off, n int64) error {
	if !d.isBlock {
		if err := d.punchHole(off, n); err != nil {
			return fmt.Errorf("discard %s: punch hole: %w", d.path, err)
		}
		return nil
	}
	if err := d.rangeIoctl(ctx, unix.BLKDISCARD, off, n); err != nil {
		return fmt.Errorf("BLKDISCARD %s: %w", d.path, err)
	}
	return nil
}

func (d *Device) flushBuffers() error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("BLKFLSBUF %s: %w", d.path, err)
	}
	var errno error
	if err := rc.Control(func(fd uintptr) {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKFLSBUF, 0); e != 0 {
			errno = e
		}
	}); err != nil {
		return fmt.Errorf("BLKFLSBUF %s: %w", d.path, err)
	}
	if errno != nil {
		return fmt.Errorf("BLKFLSBUF %s: %w", d.path, errno)
	}
	return nil
}

// rereadBackoff are the waits between BLKRRPART attempts that got EBUSY:
// udev opens the disk right after a write to probe it, which makes the
// kernel refuse for a moment; a mounted partition makes it refuse for good.
var rereadBackoff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}

func (d *Device) rereadPartitions(ctx context.Context) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("BLKRRPART %s: %w", d.path, err)
	}
	for i := 0; ; i++ {
		var errno error
		if err := rc.Control(func(fd uintptr) {
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKRRPART, 0); e != 0 {
				errno = e
			}
		}); err != nil {
			return fmt.Errorf("BLKRRPART %s: %w", d.path, err)
		}
		if errno == nil {
			return nil
		}
		if !errors.Is(errno, unix.EBUSY) {
			return fmt.Errorf("BLKRRPART %s: %w", d.path, errno)
		}
		if i == len(rereadBackoff) {
			return fmt.Errorf("%s: %w: %w", d.path, ErrRereadDeferred, errno)
		}
		t := time.NewTimer(rereadBackoff[i])
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("BLKRRPART %s: %w", d.path, ctx.Err())
		case <-t.C:
		}
	}
}

func (d *Device) flock(how int) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if !errors.Is(ferr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

func (d *Device) lock() error {
	err := d.flock(unix.LOCK_EX | unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("disk %s is locked by another byoi process%s: %w", d.path, d.lockHolder(), ErrLocked)
	}
	return fmt.Errorf("lock %s: %w", d.path, err)
}

func (d *Device) unlock() error {
	if err := d.flock(unix.LOCK_UN); err != nil {
		return fmt.Errorf("unlock %s: %w", d.path, err)
	}
	return nil
}

// lockHolder finds who holds the flock on the device node in /proc/locks
// (proc(5): "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF",
// major and minor in hex) and returns " (pid N, comm)", or "".
func (d *Device) lockHolder() string {
	st, err := d.f.Stat()
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(sys.Dev), unix.Minor(sys.Dev), sys.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		// Blocked waiters are shown as "1: -> FLOCK ..."; skip them.
		if len(fl) < 6 || fl[1] != "FLOCK" || fl[5] != want {
			continue
		}
		pid, err := strconv.Atoi(fl[4])
		if err != nil {
			continue
		}
		comm := strings.TrimSpace(readString("/proc/" + fl[4] + "/comm"))
		if comm == "" {
			return fmt.Sprintf(" (pid %d)", pid)
		}
		return fmt.Sprintf(" (pid %d, %s)", pid, comm)
	}
	return ""
}
