package ova

import (
	"bytes"
	"context"
	"fmt"

	"github.com/byoi/byoi/imaging"
)

// extentWriter puts the extents of a virtual disk of size bytes on a
// Target, in the order they come (not necessarily the disk's order), so
// that every byte of [0, size) ends up either written or zeroed: nothing of
// the previous system survives in the image region.
//
// The first HeadSize bytes (MBR and primary GPT) are kept in memory and
// written only by writeHead: the writer checks the partition table there
// once the grains that make it are known, before it is written (when the
// grains come in disk order, before anything is written). That is the
// format's validation, not crash safety, which is the Guard's.
//
// Zeroing follows a watermark: everything below zeroedTo (outside the
// head) is written or zeroed. An extent starting past the watermark
// first zeroes the gap; one starting below it (out of order) lands on
// bytes already zeroed; finish zeroes the rest. Extents must not overlap
// (the VMDK reader refuses grains seen twice). Adjacent extents are
// coalesced into writes of up to extentBuf bytes, and extents of zeros are
// zeroed with ZeroRange (hole punch, BLKZEROOUT), not written.
type extentWriter struct {
	ctx    context.Context
	dst    imaging.Target
	size   int64
	format string // for WriteError: "ova"

	head     []byte // [0, len(head))
	zeroedTo int64

	// The one pending operation: a run of data in buf at bufOff, or a run
	// of zeros [zOff, zOff+zLen).
	buf    []byte
	bufOff int64
	zOff   int64
	zLen   int64

	written, zeroed int64
}

// extentZeroBlock is the granularity at which data of zeros is zeroed
// rather than written: a multiple of every sector size, large enough for
// ZeroRange to pay off.
const extentZeroBlock = 64 << 10

var extentZeros [extentZeroBlock]byte

// extentAllZero reports whether b (at most extentZeroBlock bytes) holds
// only zeros; bytes.Equal is vectorised.
func extentAllZero(b []byte) bool { return bytes.Equal(b, extentZeros[:len(b)]) }

// extentBuf is the largest coalesced write: large enough that the target
// starts its writeback at once (blockdev writes behind from 1 MiB).
const extentBuf = 1 << 20

func newExtentWriter(ctx context.Context, dst imaging.Target, size int64, format string) *extentWriter {
	headEnd := min(int64(imaging.HeadSize), size)
	return &extentWriter{
		ctx: ctx, dst: dst, size: size, format: format,
		head:     make([]byte, headEnd),
		zeroedTo: headEnd,
		buf:      make([]byte, 0, min(extentBuf, size)),
	}
}

// held reports whether [off, off+n) lies entirely in the head: putting it
// does no I/O.
func (w *extentWriter) held(off, n int64) bool {
	return off+n <= int64(len(w.head))
}

// put places data at off of the virtual disk. data is not kept.
func (w *extentWriter) put(off int64, data []byte) error {
	end := off + int64(len(data))
	if off < 0 || end > w.size {
		return fmt.Errorf("extent [%d, %d) outside the virtual disk of %d bytes", off, end, w.size)
	}
	if h := int64(len(w.head)); off < h {
		n := min(end, h) - off
		copy(w.head[off:], data[:n])
		off, data = off+n, data[n:]
	}
	if off >= end {
		return nil
	}
	if off > w.zeroedTo {
		if err := w.zero(w.zeroedTo, off-w.zeroedTo); err != nil {
			return err
		}
	}
	w.zeroedTo = max(w.zeroedTo, end)
	for len(data) > 0 {
		// Runs of zeros in zeroBlock steps are zeroed, the rest written.
		n := min(len(data), extentZeroBlock)
		if extentAllZero(data[:n]) {
			if err := w.zero(off, int64(n)); err != nil {
				return err
			}
		} else if err := w.write(off, data[:n]); err != nil {
			return err
		}
		off, data = off+int64(n), data[n:]
	}
	return nil
}

// zero queues zeroing [off, off+n).
func (w *extentWriter) zero(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if len(w.buf) > 0 {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if w.zLen > 0 && w.zOff+w.zLen == off {
		w.zLen += n
		return nil
	}
	if err := w.flush(); err != nil {
		return err
	}
	w.zOff, w.zLen = off, n
	return nil
}

// write queues writing p at off.
func (w *extentWriter) write(off int64, p []byte) error {
	if w.zLen > 0 || (len(w.buf) > 0 && w.bufOff+int64(len(w.buf)) != off) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	for len(p) > 0 {
		if len(w.buf) == 0 {
			w.bufOff = off
		}
		n := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+n]
		off, p = off+int64(n), p[n:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush performs the pending operation.
func (w *extentWriter) flush() error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if w.zLen > 0 {
		off, n := w.zOff, w.zLen
		w.zLen = 0
		if err := w.dst.ZeroRange(w.ctx, off, n); err != nil {
			return &imaging.WriteError{Format: w.format, Err: fmt.Errorf("zero %d bytes at %d: %w", n, off, err)}
		}
		w.zeroed += n
	}
	if len(w.buf) > 0 {
		off, p := w.bufOff, w.buf
		w.buf = w.buf[:0]
		if _, err := w.dst.WriteAt(p, off); err != nil {
			return &imaging.WriteError{Format: w.format, Err: fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)}
		}
		w.written += int64(len(p))
	}
	return nil
}

// finish zeroes what no extent covered and flushes: the whole virtual disk
// but the head is then on the target (not yet synced).
func (w *extentWriter) finish() error {
	if w.zeroedTo < w.size {
		if err := w.zero(w.zeroedTo, w.size-w.zeroedTo); err != nil {
			return err
		}
		w.zeroedTo = w.size
	}
	return w.flush()
}

// writeHead writes the first MiB (MBR, primary GPT), once it was checked.
func (w *extentWriter) writeHead() error {
	if _, err := w.dst.WriteAt(w.head, 0); err != nil {
		return &imaging.WriteError{Format: w.format, Err: fmt.Errorf("write partition table: %w", err)}
	}
	w.written += int64(len(w.head))
	return nil
}
