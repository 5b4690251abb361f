package imaging

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/byoi/byoi/partition"
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
//
// The Guard is the only owner of that rule. The format writers (WriteRaw,
// qcow2.Convert, ova.Write) only write an image onto a Target and say what
// they wrote; they never clear tables, order their writes or wipe after a
// failure. Whoever drives a deployment (the agent's Deployer) begins one
// Guard, writes everything through it, and ends it exactly once: Commit,
// or Abort, which leaves the disk without a partition table — the single
// clean-up coreos-installer's install() has.

// HeadSize is the size of each region the Guard holds: the first MiB holds
// the MBR and the primary GPT (header and entries fit in 1 MiB for 512 and
// 4096 byte sectors), the last MiB the backup GPT.
const HeadSize = 1 << 20

// Guard is a Target that holds the writes to its guarded regions in memory
// until Commit. Reads see the held bytes. It is safe for concurrent use by
// the parallel writers (qcow2 conversion); HoldEnd is for one sequential
// writer.
type Guard struct {
	t Target
	// ctx is Begin's: the clear of the old tables that the first write to
	// t triggers runs under it (WriteAt has no context of its own), as a
	// database transaction runs under BeginTx's.
	ctx context.Context

	mu        sync.Mutex
	regions   []*guardRegion // sorted by offset, not overlapping
	spans     [][2]int64     // every region held so far: what Abort zeroes
	cleared   bool           // clearTables ran on t
	clearErr  error
	touched   bool // something was written or zeroed on t
	committed bool

	// HoldEnd's sliding region: the last HeadSize bytes written, in win
	// (spare is the other buffer, swapped on each slide). tmu serialises
	// the writes while it is active.
	tmu      sync.Mutex
	trailing bool
	win      *guardRegion
	spare    []byte
}

type guardRegion struct {
	off int64
	buf []byte
}

func (r *guardRegion) end() int64 { return r.off + int64(len(r.buf)) }

// Begin starts the transaction over t: it guards the first and the last
// MiB of t. Held regions start as zeros: the old tables are gone from the
// Guard's view from the start. Nothing is written to t before the first
// write or zeroing through the Guard; that one first clears the old tables
// (under ctx for a WriteAt).
func Begin(ctx context.Context, t Target) *Guard {
	g := &Guard{t: t, ctx: ctx}
	size := t.Size()
	g.Hold(0, min(HeadSize, size))
	g.Hold(size-HeadSize, HeadSize)
	return g
}

// Target returns the guarded target.
func (g *Guard) Target() Target { return g.t }

// Hold guards [off, off+n) too (clipped to the target), for the image's own
// backup GPT region once the image's size is known. Nothing of the region
// may have reached the target through the Guard yet: it starts as zeros,
// or as what the Guard already held there (HoldEnd's bytes included, which
// Hold ends).
func (g *Guard) Hold(off, n int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.foldTrail()
	g.hold(off, n)
}

// HoldEnd holds the last HeadSize bytes written through the Guard, for a
// sequential writer whose image end is not known in advance (a compressed
// raw image): each write past them lets the older ones through to the
// target. A Hold of the image's end, once it is known, or Commit makes them
// an ordinary held region.
func (g *Guard) HoldEnd() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.trailing = true
}

// hold adds [off, off+n) to the held regions (g.mu held).
func (g *Guard) hold(off, n int64) *guardRegion {
	off = max(off, 0)
	end := min(off+n, g.t.Size())
	if end <= off {
		return nil
	}
	g.spans = append(g.spans, [2]int64{off, end - off})
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
	return nr
}

// foldTrail ends HoldEnd: its bytes become an ordinary held region (g.mu
// held). They are the newest for their range: they win over what other
// regions held there.
func (g *Guard) foldTrail() {
	if !g.trailing {
		return
	}
	g.trailing = false
	w := g.win
	g.win, g.spare = nil, nil
	if w == nil || len(w.buf) == 0 {
		return
	}
	if r := g.hold(w.off, int64(len(w.buf))); r != nil {
		copy(r.buf[w.off-r.off:], w.buf)
	}
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

// Start tells the Guard that the image's writing starts (a writer's Start
// phase: every check that can be made before writing passed): the old
// tables are cleared now, once. The first write through the Guard does it
// too, for a writer that does not say.
func (g *Guard) Start(ctx context.Context) error { return g.clear(ctx) }

// clear invalidates the old tables on the target, once, before the first
// byte goes to it.
func (g *Guard) clear(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.cleared {
		g.cleared = true
		g.touched = true
		g.clearErr = clearTables(ctx, g.t)
	}
	return g.clearErr
}

// piece is a range on its way to the held regions or the target: data, or
// zeros when data is nil.
type piece struct {
	off, n int64
	data   []byte
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

// put sends one piece through the held regions to the target. A data
// piece that came out of HoldEnd's region (zeroRuns) has its runs of
// zeros zeroed rather than written.
func (g *Guard) put(ctx context.Context, p piece, zeroRuns bool) error {
	return g.split(p.off, p.n,
		func(r *guardRegion, at, k int64) {
			if p.data == nil {
				clear(r.buf[at-r.off : at-r.off+k])
			} else {
				copy(r.buf[at-r.off:at-r.off+k], p.data[at-p.off:])
			}
		},
		func(at, k int64) error {
			if p.data == nil {
				return g.t.ZeroRange(ctx, at, k)
			}
			b := p.data[at-p.off : at-p.off+k]
			if zeroRuns {
				return writeOrZero(ctx, g.t, b, at)
			}
			_, err := g.t.WriteAt(b, at)
			return err
		})
}

// apply writes data (nil: zeros) over [off, off+n). The first write, held
// or not, clears the old tables: once a writer starts, the old system is
// being replaced, and no failure may leave its table over new bytes.
func (g *Guard) apply(ctx context.Context, off, n int64, data []byte) error {
	if err := g.clear(ctx); err != nil {
		return err
	}
	g.mu.Lock()
	trailing := g.trailing
	g.mu.Unlock()
	if !trailing {
		return g.put(ctx, piece{off, n, data}, false)
	}
	g.tmu.Lock()
	defer g.tmu.Unlock()
	g.mu.Lock()
	if !g.trailing { // a Hold or Commit came in between
		g.mu.Unlock()
		return g.put(ctx, piece{off, n, data}, false)
	}
	out, evicted := g.slide(off, n, data)
	g.mu.Unlock()
	// The pieces are disjoint: their order does not matter. The evicted
	// bytes stay in the spare buffer until the next slide, which waits for
	// tmu.
	for _, p := range out {
		if err := g.put(ctx, p, false); err != nil {
			return err
		}
	}
	if evicted.n > 0 {
		return g.put(ctx, evicted, true)
	}
	return nil
}

// slide puts [off, off+n) into HoldEnd's region, moving the region up to
// end at off+n when the write goes past it (g.mu held). It returns the
// parts of the write outside the region and the region's bytes it let go.
func (g *Guard) slide(off, n int64, data []byte) (out []piece, evicted piece) {
	if g.win == nil {
		g.win = &guardRegion{off: 0, buf: make([]byte, 0, HeadSize)}
		g.spare = make([]byte, 0, HeadSize)
	}
	w := g.win
	wo, we := w.off, w.end()
	end := off + n
	// part returns [a, b) of the write as a piece.
	part := func(a, b int64) piece {
		p := piece{off: a, n: b - a}
		if data != nil {
			p.data = data[a-off : b-off]
		}
		return p
	}
	fill := func(dst []byte, dstOff, a, b int64) { // [a, b) of the write into dst
		if data == nil {
			clear(dst[a-dstOff : b-dstOff])
		} else {
			copy(dst[a-dstOff:b-dstOff], data[a-off:b-off])
		}
	}
	// The write below the region goes on.
	if off < wo {
		out = append(out, part(off, min(end, wo)))
	}
	// The write over the region updates it.
	if a, b := max(off, wo), min(end, we); a < b {
		fill(w.buf, wo, a, b)
	}
	if end <= we {
		return out, piece{}
	}
	// The region moves up to [nwo, end).
	nwo := max(end-HeadSize, 0)
	nb := g.spare[:end-nwo]
	clear(nb)
	if a := max(wo, nwo); a < we {
		copy(nb[a-nwo:], w.buf[a-wo:])
	}
	if a, b := max(off, we), end; a < b {
		if c := min(b, nwo); a < c {
			out = append(out, part(a, c)) // past the old region, below the new
		}
		if a = max(a, nwo); a < b {
			fill(nb, nwo, a, b)
		}
	}
	if off > we {
		// A gap between the old region and the write reads as zeros.
		if c := min(off, nwo); we < c {
			out = append(out, piece{off: we, n: c - we})
		}
	}
	if c := min(we, nwo); wo < c {
		evicted = piece{off: wo, n: c - wo, data: w.buf[:c-wo]}
	}
	g.spare = w.buf[:0]
	g.win = &guardRegion{off: nwo, buf: nb}
	return out, evicted
}

// WriteAt writes p at off: into memory where it falls in a held region, to
// the target elsewhere (the first write clears the old tables).
func (g *Guard) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > g.t.Size() {
		return 0, fmt.Errorf("guard: write of %d bytes at %d outside the %d-byte target", len(p), off, g.t.Size())
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := g.apply(g.ctx, off, int64(len(p)), p); err != nil {
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
	if n == 0 {
		return nil
	}
	return g.apply(ctx, off, n, nil)
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
	overlay := func(r *guardRegion) {
		lo, hi := max(off, r.off), min(end, r.end())
		if lo < hi {
			copy(p[lo-off:hi-off], r.buf[lo-r.off:hi-r.off])
		}
	}
	for _, r := range g.regions {
		overlay(r)
	}
	if g.trailing && g.win != nil {
		overlay(g.win)
	}
	return n, err
}

// Sync flushes what reached the target.
func (g *Guard) Sync() error { return g.t.Sync() }

// Commit writes the held regions to the target in crash-safe order: it
// flushes the target, writes every region but the first MiB (the backup
// GPT areas), flushes, writes the first MiB, flushes. After Commit the
// Guard passes everything through. A failed Commit is followed by Abort.
func (g *Guard) Commit(ctx context.Context) error {
	g.mu.Lock()
	g.foldTrail()
	g.mu.Unlock()
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

// Abort ends a failed transaction: the held regions are dropped, and when
// anything reached the target, every region the Guard held (the first MiB,
// the image's and the disk's last MiB, committed or not) and the MiB below
// HoldEnd's region are zeroed and flushed, so the target is left with no
// partition table. It runs even when ctx is cancelled (a cancelled job
// must still wipe), returns the first error but tries every range, and may
// be called after a Commit that failed or succeeded.
func (g *Guard) Abort(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	g.mu.Lock()
	spans := append([][2]int64(nil), g.spans...)
	if g.trailing && g.win != nil && len(g.win.buf) > 0 {
		spans = append(spans, [2]int64{g.win.off - HeadSize, HeadSize})
	}
	for _, r := range g.regions {
		clear(r.buf)
	}
	g.trailing, g.win, g.spare = false, nil, nil
	touched := g.touched
	g.mu.Unlock()
	if !touched {
		return nil
	}
	size := g.t.Size()
	var first error
	for _, s := range spans {
		off := max(s[0], 0)
		n := min(s[1], size-off)
		if n <= 0 {
			continue
		}
		if err := g.t.ZeroRange(ctx, off, n); err != nil && first == nil {
			first = fmt.Errorf("wipe after failure at %d: %w", off, err)
		}
	}
	if err := g.t.Sync(); err != nil && first == nil {
		first = fmt.Errorf("wipe after failure: %w", err)
	}
	return first
}

// writeOrZero writes b at off, zeroing the all-zero 64 KiB runs instead.
func writeOrZero(ctx context.Context, t Target, b []byte, off int64) error {
	const run = 64 << 10
	for len(b) > 0 {
		n := min(len(b), run)
		zero := AllZero(b[:n])
		for n < len(b) {
			k := min(len(b)-n, run)
			if AllZero(b[n:n+k]) != zero {
				break
			}
			n += k
		}
		if zero {
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

// clearTables invalidates the previous system's partition tables before an
// image is written: it zeroes the first and the last MiB of the target (its
// MBR, primary and backup GPT, and the signatures blkid would still find
// there) and every other place a GPT header there names as its backup
// (partition.HeaderLocations: the backup of a disk that grew without
// moving it). After it no tool (sfdisk, blkid, sgdisk's backup recovery, a
// scan of those locations) finds the old tables. Only the Guard calls it.
func clearTables(ctx context.Context, t Target) error {
	size := t.Size()
	locs := partition.HeaderLocations(t, size) // read before anything is zeroed
	head := min(int64(HeadSize), size)
	if err := t.ZeroRange(ctx, 0, head); err != nil {
		return fmt.Errorf("clear old partition table: %w", err)
	}
	tail := max(size-HeadSize, head)
	if size > head {
		if err := t.ZeroRange(ctx, tail, size-tail); err != nil {
			return fmt.Errorf("clear old backup partition table: %w", err)
		}
	}
	for _, off := range locs {
		if off < head || off >= tail {
			continue
		}
		at := off / 4096 * 4096
		if err := t.ZeroRange(ctx, at, min(4096, size-at)); err != nil {
			return fmt.Errorf("clear old backup partition table at %d: %w", at, err)
		}
	}
	return nil
}
