package blockdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/byoi/byoi/internal/testutil"
)

// openTarget returns a disk of size bytes with sector size ss: a regular
// file, or (loop) a loop device backed by one. It returns the backing file.
func openTarget(t *testing.T, loop bool, size int64, ss int) (*Device, string) {
	t.Helper()
	file := testutil.SparseFile(t, size)
	path := file
	opts := OpenOptions{SectorSize: int64(ss)}
	if loop {
		path = testutil.LoopDevice(t, file, ss)
		opts = OpenOptions{}
	}
	d, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, file
}

// TestDeviceOps runs the same checks on a regular file and on a loop
// device, with 512- and 4096-byte sectors.
func TestDeviceOps(t *testing.T) {
	ctx := context.Background()
	const size = 4 << 20
	for _, loop := range []bool{false, true} {
		for _, ss := range []int{512, 4096} {
			t.Run(fmt.Sprintf("loop=%v/sector=%d", loop, ss), func(t *testing.T) {
				d, file := openTarget(t, loop, size, ss)
				if d.IsBlockDevice() != loop {
					t.Errorf("IsBlockDevice %v", d.IsBlockDevice())
				}
				if d.Size() != size || d.SectorSize() != int64(ss) {
					t.Errorf("size %d sector %d, want %d %d", d.Size(), d.SectorSize(), size, ss)
				}
				if loop {
					// sysfs is the independent judge of the physical size.
					sysPBS := readIntOr("/sys/block/"+filepath.Base(d.Path())+"/queue/physical_block_size", -1)
					if d.PhysicalSectorSize() != sysPBS {
						t.Errorf("physical sector %d, sysfs says %d", d.PhysicalSectorSize(), sysPBS)
					}
				}
				if d.PhysicalSectorSize() < d.SectorSize() {
					t.Errorf("physical sector %d < logical %d", d.PhysicalSectorSize(), d.SectorSize())
				}

				fill := bytes.Repeat([]byte{0xAA}, size)
				if _, err := d.WriteAt(fill, 0); err != nil {
					t.Fatal(err)
				}
				if err := d.Sync(); err != nil {
					t.Fatal(err)
				}
				off, n := int64(1000), int64(3*ss+17) // unaligned at both ends
				if err := d.ZeroRange(ctx, off, n); err != nil {
					t.Fatal(err)
				}
				if err := d.Sync(); err != nil {
					t.Fatal(err)
				}
				want := bytes.Clone(fill)
				clear(want[off : off+n])
				got := make([]byte, size)
				if _, err := d.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				checkBytes(t, "device", got, want)
				onFile, err := os.ReadFile(file) // the backing file judges what reached "disk"
				if err != nil {
					t.Fatal(err)
				}
				checkBytes(t, "backing file", onFile, want)

				if err := d.Discard(ctx, int64(ss), int64(4*ss)); err != nil {
					t.Errorf("Discard: %v", err)
				}
				if err := d.Discard(ctx, 1, int64(ss)); err == nil {
					t.Error("unaligned Discard accepted")
				}
				if err := d.Discard(ctx, 0, size+int64(ss)); !errors.Is(err, ErrPastEnd) {
					t.Errorf("Discard past end: %v", err)
				}
				if err := d.FlushBuffers(); err != nil {
					t.Errorf("FlushBuffers: %v", err)
				}
				if err := d.RereadPartitions(ctx); err != nil {
					t.Errorf("RereadPartitions on an unused disk: %v", err)
				}

				if err := d.Lock(); err != nil {
					t.Fatalf("Lock: %v", err)
				}
				other, err := Open(d.Path(), OpenOptions{ReadOnly: true, SectorSize: int64(ss)})
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
				err = other.Lock()
				if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "locked by another byoi process") ||
					!strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
					t.Errorf("second Lock: %v", err)
				}
				if err := d.Unlock(); err != nil {
					t.Fatal(err)
				}
				if err := other.Lock(); err != nil {
					t.Errorf("Lock after Unlock: %v", err)
				}
			})
		}
	}
}

func checkBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: byte %d is %#x, want %#x", what, i, got[i], want[i])
		}
	}
}

// TestOpenHeldExclusively: a block device another program opened O_EXCL
// is refused with a clear message.
func TestOpenHeldExclusively(t *testing.T) {
	dev := testutil.LoopDevice(t, testutil.SparseFile(t, 4<<20), 0)
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	d, err := Open(dev, OpenOptions{})
	if err == nil {
		d.Close()
		t.Fatal("Open of a device held O_EXCL succeeded")
	}
	if !errors.Is(err, ErrInUse) || !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "opened exclusively by another program") {
		t.Errorf("Open: %v", err)
	}
	t.Logf("Open: %v", err)
}

// TestLoopMountedPartition: a loop device whose partition is mounted is in
// use (naming the mount point), cannot be opened for writing, and a
// partition table re-read is deferred to the next boot.
func TestLoopMountedPartition(t *testing.T) {
	sfdisk := testutil.RequireCommand(t, "sfdisk", "mkfs.ext4", "mount", "umount")
	file := testutil.SparseFile(t, 32<<20)
	cmd := exec.Command(sfdisk, "--quiet", file)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, type=L\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	dev := testutil.LoopDevice(t, file, 0)
	part := dev + "p1"
	if !waitFor(part) {
		// A kernel built without partition parsers (no CONFIG_EFI_PARTITION)
		// does not scan the table: partx adds the partition with BLKPG.
		testutil.RequireCommand(t, "partx")
		testutil.Run(t, "partx", "--add", dev)
		if !waitFor(part) {
			t.Fatalf("%s did not appear", part)
		}
	}
	testutil.Run(t, "mkfs.ext4", "-q", "-F", part)
	mnt := t.TempDir()
	if _, errOut, err := testutil.RunErr("mount", part, mnt); err != nil {
		testutil.Unavailable(t, "mount %s: %v: %s", part, err, errOut)
	}
	t.Cleanup(func() {
		if _, errOut, err := testutil.RunErr("umount", mnt); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, errOut)
		}
	})

	s := System{}
	for p, want := range map[string]string{
		dev:  "partition " + filepath.Base(part) + " is mounted at " + mnt,
		part: "it is partition " + filepath.Base(part) + " of disk " + filepath.Base(dev) + ", not a whole disk",
	} {
		reason, err := s.InUseByPath(p)
		if err != nil {
			t.Fatal(err)
		}
		if reason != want {
			t.Errorf("InUseByPath(%s) = %q, want %q", p, reason, want)
		}
	}
	disks, err := s.Disks(ScanOptions{IncludeLoop: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.Path == dev && !d.InUse {
			t.Errorf("Disks: %s not in use", dev)
		}
	}

	d, err := Open(dev, OpenOptions{})
	if err == nil {
		d.Close()
		t.Fatal("Open of a disk with a mounted partition succeeded")
	}
	if !errors.Is(err, ErrInUse) || !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), mnt) {
		t.Errorf("Open: %v", err)
	}
	t.Logf("Open: %v", err)

	ro, err := Open(dev, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	err = ro.RereadPartitions(context.Background())
	if !errors.Is(err, ErrRereadDeferred) {
		t.Errorf("RereadPartitions with a mounted partition: %v", err)
	}
	t.Logf("RereadPartitions: %v", err)
}

// TestLockRegularFile needs no root: two opens of one file, one lock.
func TestLockRegularFile(t *testing.T) {
	p := testutil.SparseFile(t, 1<<20)
	a, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := a.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(); err != nil {
		t.Errorf("lock after the holder closed: %v", err)
	}
}

// waitFor waits up to a second for a device node to appear.
func waitFor(path string) bool {
	for i := 0; i < 20; i++ {
		if _, err := os.Stat(path); err == nil {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// TestLoopBackingFileInUse: the file behind a mounted loop device is in use
// (writing it would corrupt the mounted filesystem), and so is a second
// loop device over the same file; the same file unmounted is free.
func TestLoopBackingFileInUse(t *testing.T) {
	testutil.RequireCommand(t, "mkfs.ext4", "mount", "umount")
	file := testutil.SparseFile(t, 32<<20)
	testutil.Run(t, "mkfs.ext4", "-q", "-F", file)
	s := System{}
	if reason, err := s.InUseByPath(file); err != nil || reason != "" {
		t.Fatalf("unattached file: %q, %v", reason, err)
	}
	dev := testutil.LoopDevice(t, file, 0)
	if reason, err := s.InUseByPath(file); err != nil || reason != "" {
		t.Fatalf("file behind an unmounted loop device: %q, %v", reason, err)
	}
	mnt := t.TempDir()
	if _, errOut, err := testutil.RunErr("mount", dev, mnt); err != nil {
		testutil.Unavailable(t, "mount %s: %v: %s", dev, err, errOut)
	}
	t.Cleanup(func() {
		if _, errOut, err := testutil.RunErr("umount", mnt); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, errOut)
		}
	})
	name := filepath.Base(dev)
	reason, err := s.InUseByPath(file)
	if err != nil || !strings.Contains(reason, "its file backs "+name) || !strings.Contains(reason, mnt) {
		t.Errorf("file behind a mounted loop device: %q, %v", reason, err)
	}
	// A second loop device over the same file shares its bytes.
	dev2 := testutil.LoopDevice(t, file, 0)
	reason, err = s.InUseByPath(dev2)
	if err != nil || !strings.Contains(reason, "its file backs "+name) {
		t.Errorf("second loop device over the file: %q, %v", reason, err)
	}
	// A copy of the file (another inode) is free.
	cp := testutil.SparseFile(t, 1<<20)
	if reason, err := s.InUseByPath(cp); err != nil || reason != "" {
		t.Errorf("another file: %q, %v", reason, err)
	}
}

// TestWriteBehindSmallWrites: cluster-sized writes (a qcow2 conversion's,
// from parallel writers) start the writeback of the range they span each
// time writeBehindMin of them were written, so the final fsync does not
// write them all at once; a large write starts its own at once.
func TestWriteBehindSmallWrites(t *testing.T) {
	d, _ := openTarget(t, false, 64<<20, 512)
	var mu sync.Mutex
	var spans [][2]int64
	var covered int64
	d.onWriteBehind = func(off, n int64) {
		mu.Lock()
		defer mu.Unlock()
		spans = append(spans, [2]int64{off, n})
		covered += n
	}
	const cluster = 64 << 10
	buf := bytes.Repeat([]byte{0xa5}, cluster)
	// 4 writers, 64 clusters each, interleaved over [8 MiB, 24 MiB).
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 64 {
				off := int64(8<<20) + int64(i*4+w)*cluster
				if _, err := d.WriteAt(buf, off); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	mu.Lock()
	got := len(spans)
	for _, s := range spans {
		if s[0] < 8<<20 || s[0]+s[1] > 24<<20 || s[1] < writeBehindMin {
			t.Errorf("writeback span [%d, +%d) outside the writes [8 MiB, 24 MiB) or smaller than %d", s[0], s[1], writeBehindMin)
		}
	}
	mu.Unlock()
	if want := 16 << 20 / writeBehindMin; got != want {
		t.Fatalf("16 MiB of 64 KiB writes started %d writebacks, want %d", got, want)
	}
	// A write of writeBehindMin or more starts its own writeback at once.
	big := bytes.Repeat([]byte{0x5a}, writeBehindMin)
	if _, err := d.WriteAt(big, 40<<20); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	last := spans[len(spans)-1]
	mu.Unlock()
	if last != [2]int64{40 << 20, writeBehindMin} {
		t.Fatalf("a 1 MiB write at 40 MiB started writeback %v", last)
	}
	// The data is there.
	got2 := make([]byte, cluster)
	if _, err := d.ReadAt(got2, 8<<20+5*cluster); err != nil || !bytes.Equal(got2, buf) {
		t.Fatalf("read back: %v", err)
	}
}

// The flush-behind: every flushEvery bytes written (from parallel writers)
// start one background fsync at a time; Close waits for it before the
// file is closed.
func TestFlushBehind(t *testing.T) {
	d, _ := openTarget(t, false, 64<<20, 512)
	d.flushEvery = 1 << 20
	var flushes, running, overlap atomic.Int32
	release := make(chan struct{})
	first := make(chan struct{}, 1)
	d.fsync = func() error {
		if running.Add(1) > 1 {
			overlap.Add(1)
		}
		defer running.Add(-1)
		if flushes.Add(1) == 1 {
			first <- struct{}{}
			<-release // the first flush is slow: the writers go on meanwhile
		}
		return d.f.Sync()
	}
	const cluster = 64 << 10
	buf := bytes.Repeat([]byte{0xa5}, cluster)
	write := func(from, n int) {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := from + w; i < from+n; i += 4 {
					if _, err := d.WriteAt(buf, int64(i)*cluster); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
	}
	write(0, 16) // 1 MiB: one flush starts
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("1 MiB written with flushEvery 1 MiB started no background flush")
	}
	write(16, 64) // 4 MiB more while it hangs: no second one at once
	if n := flushes.Load(); n != 1 {
		t.Fatalf("%d flushes started while the first one ran, want 1 (one at a time)", n)
	}
	close(release)
	// The next MiB after it ended starts another.
	deadline := time.Now().Add(5 * time.Second)
	for d.busyFlushing() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	write(80, 16)
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := flushes.Load(); n < 3 { // first, a later background one, Sync's own
		t.Fatalf("%d flushes, want the first, a later background one and Sync's", n)
	}
	if overlap.Load() != 0 {
		t.Fatal("two flushes ran at once")
	}
	// Close waits for a flush that is still running.
	hold := make(chan struct{})
	started := make(chan struct{})
	d.fsync = func() error { close(started); <-hold; return nil }
	write(96, 16)
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no background flush started")
	}
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a background flush held the file", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(hold)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// A background flush's error reaches Sync even when Sync's own fsync
// succeeds: the kernel reports a writeback error to one fsync only.
func TestFlushBehindErrorReachesSync(t *testing.T) {
	d, _ := openTarget(t, false, 8<<20, 512)
	d.flushEvery = 1 << 20
	eio := errors.New("input/output error (injected)")
	calls := 0
	d.fsync = func() error {
		calls++
		if calls == 1 {
			return eio
		}
		return nil
	}
	if _, err := d.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	err := d.Sync()
	if !errors.Is(err, eio) {
		t.Fatalf("Sync after a failed background flush: %v, want the injected error", err)
	}
	if calls != 2 {
		t.Fatalf("%d fsyncs, want the background one and Sync's own", calls)
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("a second Sync reports the background error again: %v", err)
	}
}

// busyFlushing tells whether a background flush is running .
func (d *Device) busyFlushing() bool {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	return d.flushing
}
