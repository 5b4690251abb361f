package ova

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/byoi/byoi/imaging"
)

// ewTarget is a minimal in-memory Target recording what was written.
type ewTarget struct {
	b      []byte
	writes []int // sizes of the writes
}

func (m *ewTarget) ReadAt(p []byte, off int64) (int, error) { return copy(p, m.b[off:]), nil }
func (m *ewTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, io.ErrShortWrite
	}
	m.writes = append(m.writes, len(p))
	return copy(m.b[off:], p), nil
}
func (m *ewTarget) Size() int64       { return int64(len(m.b)) }
func (m *ewTarget) SectorSize() int64 { return 512 }
func (m *ewTarget) Sync() error       { return nil }
func (m *ewTarget) ZeroRange(_ context.Context, off, n int64) error {
	clear(m.b[off : off+n])
	return nil
}

// TestExtentWriterAnyOrder: extents in any order, some of zeros, some
// missing, land exactly; every other byte of the virtual disk is zeroed;
// nothing past it is touched; the head is not written before writeHead
// (the image's last MiB is the Guard's to hold: TestGuardHoldsImageEnd).
func TestExtentWriterAnyOrder(t *testing.T) {
	const grain = 64 << 10
	for _, size := range []int64{3 << 20, 5<<20 + 3*512, 700 << 10, imaging.HeadSize + 512} {
		for seed := range uint64(6) {
			t.Run(fmt.Sprintf("%d/%d", size, seed), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, uint64(size)))
				want := make([]byte, size)
				type ext struct{ off, n int64 }
				var exts []ext
				for off := int64(0); off < size; off += grain {
					n := min(grain, size-off)
					switch rng.IntN(4) {
					case 0: // missing: reads as zeros
						continue
					case 1: // present, all zeros
					default:
						for i := off; i < off+n; i++ {
							want[i] = byte(rng.Uint32())
						}
					}
					exts = append(exts, ext{off, n})
				}
				if seed%2 == 1 {
					rng.Shuffle(len(exts), func(i, j int) { exts[i], exts[j] = exts[j], exts[i] })
				}
				dst := &ewTarget{b: bytes.Repeat([]byte{0xFF}, int(size+3<<20))}
				w := newExtentWriter(t.Context(), dst, size, "ova")
				for _, e := range exts {
					if err := w.put(e.off, bytes.Clone(want[e.off:e.off+e.n])); err != nil {
						t.Fatal(err)
					}
				}
				if err := w.finish(); err != nil {
					t.Fatal(err)
				}
				headEnd := min(imaging.HeadSize, size)
				if !bytes.Equal(dst.b[:headEnd], bytes.Repeat([]byte{0xFF}, int(headEnd))) {
					t.Fatal("head touched before writeHead")
				}
				if err := w.writeHead(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dst.b[:size], want) {
					t.Fatal("virtual disk differs")
				}
				if rest := dst.b[size:]; !bytes.Equal(rest, bytes.Repeat([]byte{0xFF}, len(rest))) {
					t.Fatal("target touched past the virtual disk")
				}
				for _, n := range dst.writes[:max(len(dst.writes)-1, 0)] {
					if n > extentBuf {
						t.Fatalf("write of %d bytes, more than %d", n, extentBuf)
					}
				}
			})
		}
	}
}

// TestExtentWriterRefusesOutside: an extent past the virtual disk is an
// error, not a write.
func TestExtentWriterRefusesOutside(t *testing.T) {
	dst := &ewTarget{b: make([]byte, 4<<20)}
	w := newExtentWriter(t.Context(), dst, 3<<20, "ova")
	if err := w.put(3<<20-512, make([]byte, 1024)); err == nil {
		t.Fatal("extent past the end accepted")
	}
	if err := w.put(-512, make([]byte, 512)); err == nil {
		t.Fatal("extent before the start accepted")
	}
}
