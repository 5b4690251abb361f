package imaging

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// Why a Guard: a deployment writes the disk in many steps (the image, the
// backup GPT moved to the end, the ConfigDrive partition, the protective
// MBR). Whatever point a crash (kill -9, power loss) stops it at, the disk
// must show either nothing at all or the complete new system: never the
// old system with new data inside, never a partial new one. Partition
// tables live in a few places only: the first MiB (MBR, primary GPT), the
// last MiB of the disk (backup GPT), and the last MiB of the image region
// (the image's own backup GPT before it is moved). The Guard keeps every
// write to those regions in memory, lets everything else through, and
// invalidates the old tables on the disk before the first byte reaches it;
// Commit then writes the held regions last: the tails, flushed, then the
// first MiB, flushed. Until the first MiB is written no tool finds a table
// at its primary location; between the tails and the head the disk holds
// the complete new system, readable from its backup GPT.

// Guard is a Target that holds the writes to its guarded regions in memory
// until Commit. Reads see the held bytes. It is safe for concurrent use by
// the parallel writers (qcow2 conversion).
type Guard struct {
	t Target

	mu        sync.Mutex
	regions   []*guardRegion // sorted by offset, not overlapping
	cleared   bool           // ClearTables ran on t
	clearErr  error
	touched   bool // something was written or zeroed on t
	committed bool
}

type guardRegion struct {
	off int64
	buf []byte
}

func (r *guardRegion) end() int64 { return r.off + int64(len(r.buf)) }

// NewGuard guards the first and the last MiB of t. Held regions start as
// zeros: the old tables are gone from the Guard's view from the start.
func NewGuard(t Target) *Guard {
	g := &Guard{t: t}
	size := t.Size()
	g.Hold(0, min(HeadSize, size))
	g.Hold(size-HeadSize, HeadSize)
	return g
}

// Target returns the guarded target.
func (g *Guard) Target() Target { return g.t }

// Hold guards [off, off+n) too (clipped to the target), for the image's own
// backup GPT region once the image's size is known. The region must not
// have been written through the Guard yet: it starts as zeros.
func (g *Guard) Hold(off, n int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	off = max(off, 0)
	end := min(off+n, g.t.Size())
	if end <= off {
		return
	}
	// Grow [off, end) over every region it overlaps or touches, then
	// replace those by one region holding their bytes.
	for changed := true; changed; {
		changed = false
		for _, r := range g.regions {
			if r.end() >= off && r.off <= end && (r.off < off || r.end() > end) {
				off, end = min(off, r.off), max(end, r.end())
				changed = true
			}
		}
	}
	nr := &guardRegion{off: off, buf: make([]byte, end-off)}
	out := []*guardRegion{nr}
	for _, r := range g.regions {
		if r.end() >= off && r.off <= end {
			copy(nr.buf[r.off-off:], r.buf)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].off < out[j].off })
	g.regions = out
}

// Size is the target's size.
func (g *Guard) Size() int64 { return g.t.Size() }

// SectorSize is the target's logical sector size.
func (g *Guard) SectorSize() int64 { return g.t.SectorSize() }

// Path is the target's path when it has one.
func (g *Guard) Path() string {
	if p, ok := g.t.(interface{ Path() string }); ok {
		return p.Path()
	}
	return ""
}

// Touched reports whether anything reached the target itself.
func (g *Guard) Touched() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.touched
}

// clear invalidates the old tables on the target, once, before the first
// byte goes to it.
func (g *Guard) clear(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.cleared {
		g.cleared = true
		g.touched = true
		g.clearErr = ClearTables(ctx, g.t)
	}
	return g.clearErr
}

// split calls held for the parts of [off, off+n) inside held regions and
// pass for the others, in order.
func (g *Guard) split(off, n int64, held func(r *guardRegion, at, k int64), pass func(at, k int64) error) error {
	g.mu.Lock()
	regions := g.regions
	committed := g.committed
	g.mu.Unlock()
	if committed {
		return pass(off, n)
	}
	end := off + n
	at := off
	for _, r := range regions {
		if r.end() <= at || r.off >= end {
			continue
		}
		if r.off > at {
			if err := pass(at, r.off-at); err != nil {
				return err
			}
			at = r.off
		}
		k := min(end, r.end()) - at
		g.mu.Lock()
		held(r, at, k)
		g.mu.Unlock()
		at += k
	}
	if at < end {
		return pass(at, end-at)
	}
	return nil
}

// WriteAt writes p at off: into memory where it falls in a held region, to
// the target elsewhere (after the old tables were cleared).
func (g *Guard) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > g.t.Size() {
		return 0, fmt.Errorf("guard: write of %d bytes at %d outside the %d-byte target", len(p), off, g.t.Size())
	}
	err := g.split(off, int64(len(p)),
		func(r *guardRegion, at, k int64) { copy(r.buf[at-r.off:at-r.off+k], p[at-off:]) },
		func(at, k int64) error {
			if err := g.clear(context.Background()); err != nil {
				return err
			}
			_, err := g.t.WriteAt(p[at-off:at-off+k], at)
			return err
		})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// ZeroRange zeroes [off, off+n): held bytes in memory, the rest on the
// target.
func (g *Guard) ZeroRange(ctx context.Context, off, n int64) error {
	if off < 0 || n < 0 || off+n > g.t.Size() {
		return fmt.Errorf("guard: zero %d bytes at %d outside the %d-byte target", n, off, g.t.Size())
	}
	return g.split(off, n,
		func(r *guardRegion, at, k int64) { clear(r.buf[at-r.off : at-r.off+k]) },
		func(at, k int64) error {
			if err := g.clear(ctx); err != nil {
				return err
			}
			return g.t.ZeroRange(ctx, at, k)
		})
}

// ReadAt reads from the target and overlays the held bytes.
func (g *Guard) ReadAt(p []byte, off int64) (int, error) {
	n, err := g.t.ReadAt(p, off)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.committed {
		return n, err
	}
	end := off + int64(len(p))
	for _, r := range g.regions {
		lo, hi := max(off, r.off), min(end, r.end())
		if lo < hi {
			copy(p[lo-off:hi-off], r.buf[lo-r.off:hi-r.off])
		}
	}
	return n, err
}

// Sync flushes what reached the target.
func (g *Guard) Sync() error { return g.t.Sync() }

// Commit writes the held regions to the target in crash-safe order: it
// flushes the target, writes every region but the first MiB (the backup
// GPT areas), flushes, writes the first MiB, flushes. After Commit the
// Guard passes everything through.
func (g *Guard) Commit(ctx context.Context) error {
	if err := g.clear(ctx); err != nil {
		return err
	}
	if err := g.t.Sync(); err != nil {
		return fmt.Errorf("sync before commit: %w", err)
	}
	g.mu.Lock()
	regions := g.regions
	g.mu.Unlock()
	var head *guardRegion
	for _, r := range regions {
		if r.off == 0 {
			head = r
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeOrZero(ctx, g.t, r.buf, r.off); err != nil {
			return fmt.Errorf("commit at %d: %w", r.off, err)
		}
	}
	if err := g.t.Sync(); err != nil {
		return fmt.Errorf("sync the backup tables: %w", err)
	}
	if head != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeOrZero(ctx, g.t, head.buf, 0); err != nil {
			return fmt.Errorf("commit the partition table: %w", err)
		}
		if err := g.t.Sync(); err != nil {
			return fmt.Errorf("sync the partition table: %w", err)
		}
	}
	g.mu.Lock()
	g.committed = true
	g.regions = nil
	g.mu.Unlock()
	return nil
}

// writeOrZero writes b at off, zeroing the all-zero 64 KiB runs instead.
func writeOrZero(ctx context.Context, t Target, b []byte, off int64) error {
	const run = 64 << 10
	for len(b) > 0 {
		n := min(len(b), run)
		if allZero(b[:n]) {
			if err := t.ZeroRange(ctx, off, int64(n)); err != nil {
				return err
			}
		} else if _, err := t.WriteAt(b[:n], off); err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// Discard drops the held regions after a failure: they never reach the
// target, which keeps no partition table.
func (g *Guard) Discard() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range g.regions {
		clear(r.buf)
	}
}
