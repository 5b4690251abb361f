package imaging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// guardTarget is an in-memory Target that records every operation that
// reaches it and the context each zeroing got.
type guardTarget struct {
	mu   sync.Mutex
	b    []byte
	ops  []string
	ctxs []context.Context
}

func newGuardTarget(size int, fill byte) *guardTarget {
	return &guardTarget{b: bytes.Repeat([]byte{fill}, size)}
}

func (m *guardTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}

func (m *guardTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, fmt.Sprintf("write %d+%d", off, len(p)))
	return copy(m.b[off:], p), nil
}

func (m *guardTarget) ZeroRange(ctx context.Context, off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, fmt.Sprintf("zero %d+%d", off, n))
	m.ctxs = append(m.ctxs, ctx)
	clear(m.b[off : off+n])
	return nil
}

func (m *guardTarget) Size() int64       { return int64(len(m.b)) }
func (m *guardTarget) SectorSize() int64 { return 512 }
func (m *guardTarget) Sync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, "sync")
	return nil
}

type ctxKey struct{}

// TestGuardClearUsesBeginContext: the destructive clear of the old tables
// that the first WriteAt triggers runs under the context the transaction
// began with (WriteAt has none of its own), and a cancelled one stops it
// with nothing written.
func TestGuardClearUsesBeginContext(t *testing.T) {
	const size = 8 << 20
	dst := newGuardTarget(size, 0xAB)
	ctx := context.WithValue(t.Context(), ctxKey{}, "deployment")
	g := Begin(ctx, dst)
	if _, err := g.WriteAt([]byte("data"), 3<<20); err != nil {
		t.Fatal(err)
	}
	if len(dst.ctxs) == 0 {
		t.Fatal("the first write cleared nothing")
	}
	for i, c := range dst.ctxs {
		if c.Value(ctxKey{}) != "deployment" {
			t.Errorf("zeroing %d of the clear ran under another context than Begin's", i)
		}
	}
	if !AllZero(dst.b[:HeadSize]) || !AllZero(dst.b[size-HeadSize:]) {
		t.Error("the old tables' regions were not cleared")
	}

	cctx, cancel := context.WithCancel(t.Context())
	cancel()
	dst = newGuardTarget(size, 0xAB)
	g = Begin(cctx, &ctxTarget{dst})
	if _, err := g.WriteAt([]byte("data"), 3<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("write under a cancelled transaction: %v", err)
	}
	if len(dst.ops) != 0 {
		t.Errorf("a cancelled transaction wrote: %v", dst.ops)
	}
}

// ctxTarget honours the context of ZeroRange, as blockdev.Device does.
type ctxTarget struct{ *guardTarget }

func (c *ctxTarget) ZeroRange(ctx context.Context, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.guardTarget.ZeroRange(ctx, off, n)
}

// TestGuardHoldsImageEnd: once the image's end is known (Hold), its last
// MiB, the first MiB and the disk's last MiB reach the target only in
// Commit, in order: tails, flush, head, flush; reads see them before.
func TestGuardHoldsImageEnd(t *testing.T) {
	const size, img = 16 << 20, 9<<20 + 4096
	dst := newGuardTarget(size, 0xAB)
	g := Begin(t.Context(), dst)
	g.Hold(img-HeadSize, HeadSize)
	data := make([]byte, img)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = imageByte(rng)
	}
	for off := 0; off < img; off += 1 << 20 {
		end := min(off+1<<20, img)
		if _, err := g.WriteAt(data[off:end], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if dst.anyTouchedWrite(0, HeadSize) || dst.anyTouchedWrite(img-HeadSize, HeadSize) || dst.anyTouchedWrite(size-HeadSize, HeadSize) {
		t.Fatal("a held region reached the target before Commit")
	}
	got := make([]byte, img)
	g.ReadAt(got, 0)
	if !bytes.Equal(got, data) {
		t.Fatal("reads do not see the held bytes")
	}
	dst.ops = nil
	if err := g.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.b[:img], data) {
		t.Fatal("the target differs from the image after Commit")
	}
	want := []string{"sync", fmt.Sprintf("write %d+%d", img-HeadSize, HeadSize), fmt.Sprintf("zero %d+%d", size-HeadSize, HeadSize), "sync", fmt.Sprintf("write 0+%d", HeadSize), "sync"}
	if fmt.Sprint(dst.ops) != fmt.Sprint(want) {
		t.Errorf("commit ops %v\nwant %v", dst.ops, want)
	}
}

// anyTouchedWrite reports whether a write (not the clear's zeroing) put
// image bytes into [off, off+n): imageByte never makes 0 nor 0xAB, the old
// contents.
func (m *guardTarget) anyTouchedWrite(off, n int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.b[off : off+n] {
		if c != 0 && c != 0xAB {
			return true
		}
	}
	return false
}

// imageByte is a random byte that is neither 0 nor 0xAB.
func imageByte(rng *rand.Rand) byte {
	if c := byte(rng.Uint32() | 1); c != 0xAB {
		return c
	}
	return 0x5B
}

// TestGuardHoldEnd: a sequential writer of unknown length (a compressed
// raw image) writes in pieces of every size: the last MiB written is never
// on the target before the image's end is held and committed, everything
// before it is, in order, and the result is the image; zeros go as
// zeroings.
func TestGuardHoldEnd(t *testing.T) {
	const size = 24 << 20
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			img := int(5<<20 + rng.IntN(8<<20))
			if seed == 0 {
				img = 700 << 10 // smaller than the head
			}
			data := make([]byte, img)
			for i := range data {
				data[i] = imageByte(rng)
			}
			// A zero run, written with ZeroRange.
			z0, z1 := img/3, img/3+300<<10
			clear(data[z0:z1])
			dst := newGuardTarget(size, 0xAB)
			g := Begin(t.Context(), dst)
			g.Hold(size-HeadSize, HeadSize) // Begin's own, again: harmless
			g.HoldEnd()
			for off := 0; off < img; {
				n := min(1+rng.IntN(3<<20), img-off)
				var err error
				if off >= z0 && off+n <= z1 {
					err = g.ZeroRange(t.Context(), int64(off), int64(n))
				} else {
					_, err = g.WriteAt(data[off:off+n], int64(off))
				}
				if err != nil {
					t.Fatal(err)
				}
				off += n
				// Nothing of the last MiB written, nor of the first MiB,
				// is on the target.
				lo := max(off-HeadSize, 0)
				if dst.anyTouchedWrite(int64(lo), int64(off-lo)) || dst.anyTouchedWrite(0, HeadSize) {
					t.Fatalf("after %d bytes: the last MiB written reached the target", off)
				}
				// Everything below it (past the head) did.
				if lo > HeadSize && !bytes.Equal(dst.b[HeadSize:lo], data[HeadSize:lo]) {
					t.Fatalf("after %d bytes: the bytes below the last MiB are not on the target", off)
				}
				got := make([]byte, off)
				g.ReadAt(got, 0)
				if !bytes.Equal(got, data[:off]) {
					t.Fatalf("after %d bytes: reads differ", off)
				}
			}
			g.Hold(int64(img)-HeadSize, HeadSize)
			if err := g.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst.b[:img], data) {
				t.Fatal("the target differs from the image")
			}
			if !AllZero(dst.b[size-HeadSize:]) {
				t.Fatal("the old backup area is not cleared")
			}
		})
	}
}

// TestGuardAbortWipes: Abort after a failure zeroes every region the
// Guard held (the first MiB, the image's and the disk's last MiB), and
// the MiB below HoldEnd's region, even after a Commit, and even with a
// cancelled context; an untouched target stays untouched.
func TestGuardAbortWipes(t *testing.T) {
	const size, img = 16 << 20, 9 << 20
	ones := bytes.Repeat([]byte{0x11}, 2<<20)
	for _, tc := range []string{"before-commit", "after-commit", "hold-end", "untouched"} {
		t.Run(tc, func(t *testing.T) {
			dst := newGuardTarget(size, 0xAB)
			g := Begin(t.Context(), dst)
			switch tc {
			case "hold-end":
				g.HoldEnd()
			case "untouched":
			default:
				g.Hold(img-HeadSize, HeadSize)
			}
			if tc != "untouched" {
				for off := int64(0); off < img; off += int64(len(ones)) {
					if _, err := g.WriteAt(ones[:min(int64(len(ones)), img-off)], off); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tc == "after-commit" {
				if err := g.Commit(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			if err := g.Abort(ctx); err != nil {
				t.Fatal(err)
			}
			if tc == "untouched" {
				if len(dst.ops) != 0 {
					t.Fatalf("untouched target written by Abort: %v", dst.ops)
				}
				return
			}
			wiped := [][2]int64{{0, HeadSize}, {img - HeadSize, HeadSize}, {size - HeadSize, HeadSize}}
			if tc == "hold-end" {
				// HoldEnd's region never left memory; the MiB below it
				// is the last one that reached the target.
				wiped[1] = [2]int64{img - 2*HeadSize, HeadSize}
			}
			for _, w := range wiped {
				if !AllZero(dst.b[w[0] : w[0]+w[1]]) {
					t.Errorf("[%d, +%d) not wiped", w[0], w[1])
				}
			}
			if dst.ops[len(dst.ops)-1] != "sync" {
				t.Error("the wipe was not flushed")
			}
		})
	}
}
