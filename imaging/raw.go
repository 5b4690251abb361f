package imaging

import (
	"context"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// RawOptions tune WriteRaw.
type RawOptions struct {
	// DeclaredSize is the image size announced by the source
	// (Content-Length); -1 (or 0) when unknown. A stream that ends at
	// another size is an error.
	DeclaredSize int64
	// TargetName names the target in a SizeError, e.g. "/dev/sda".
	TargetName string
	// Hash, when set, is fed every byte of the image in order.
	Hash hash.Hash
	// Check, when set, is called with the head (the first min(HeadSize,
	// image size) bytes) before anything is written; an error aborts with
	// nothing written and is returned unchanged.
	Check func(head []byte) error
	// Start, when set, is called once every check that can be made before
	// writing passed, just before the first write: the writer's phase
	// moves from checking to writing (a Guard clears the old tables then:
	// Guard.Start). An error aborts with nothing written.
	Start func() error
	// Ended, when set, is called once the stream ended and every byte of
	// it was written (Hash complete), with the image's size, before the
	// target is flushed: the writer's phase moves from streaming to
	// flushing, and the caller checks what it can only know now (the
	// checksum; how far the image's own table reaches). An error aborts
	// and is returned unchanged.
	Ended func(size int64) error
	// BufferSize is the size of one pipeline buffer (default 4 MiB).
	BufferSize int
	// Buffers is how many buffers the pipeline holds at most (default 6):
	// with the head, 25 MiB by default.
	Buffers int
	// Progress, when set, receives the bytes done and DeclaredSize, at
	// most every 100 ms while the image streams and once when it ended.
	Progress Progress
	// Logger receives debug and error logs (nil: discard).
	Logger *slog.Logger
}

// RawResult describes a written raw image.
type RawResult struct {
	// Written is the image size in bytes: [0, Written) of the target
	// holds the image.
	Written int64
	// Table is the image's partition table: "gpt" or "mbr".
	Table string
}

// progressEvery limits how often Progress is called.
const progressEvery = 100 * time.Millisecond

// zeroRun is the granularity at which all-zero data is zeroed with
// ZeroRange (hole punch, BLKZEROOUT) rather than written.
const zeroRun = 256 << 10

// WriteRaw streams a raw disk image from src onto dst in one pass, from
// its first byte to its last, and flushes it.
//
// The first HeadSize bytes are read and checked first: the image must hold
// a partition table, fit the target (DeclaredSize) and pass opts.Check;
// otherwise nothing is written. Then the image streams to dst, reading,
// hashing and writing in parallel; runs of zeros are zeroed (ZeroRange),
// not written. The writer reports its phases: opts.Start before the first
// write, opts.Ended with the image's size once the stream ended; then dst
// is flushed.
//
// WriteRaw only writes: it neither clears the target's old partition
// tables, nor holds the image's own back, nor wipes anything after a
// failure. A deployment writes through an imaging.Guard, which does all
// three (Begin, Commit, Abort). Its errors: a *SizeError, a *WriteError for
// the target's errors, src's and Ended's errors unchanged, or the
// context's error; after one, [0, Written) may hold part of the image.
//
// A Read of src blocked when ctx is cancelled is abandoned, not waited
// for: close src to release it.
func WriteRaw(ctx context.Context, src io.Reader, dst Target, opts RawOptions) (RawResult, error) {
	if opts.BufferSize <= 0 {
		opts.BufferSize = 4 << 20
	}
	if opts.Buffers <= 0 {
		opts.Buffers = 6
	}
	if opts.DeclaredSize <= 0 {
		opts.DeclaredSize = -1
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var res RawResult
	if err := ctx.Err(); err != nil {
		return res, err
	}

	// The head: read and checked before anything is written.
	head := make([]byte, HeadSize)
	n, short, err := ReadFull(src, head) // short: the whole image fits in the head
	if err != nil {
		return res, err
	}
	head = head[:n]
	if _, err := CheckFormat(string(FormatRaw), head); err != nil {
		return res, err
	}
	res.Table, _ = HasPartitionTable(head)
	size := dst.Size()
	if opts.DeclaredSize > size {
		return res, &SizeError{ImageSize: opts.DeclaredSize, TargetName: opts.TargetName, TargetSize: size}
	}
	if int64(len(head)) > size {
		return res, &SizeError{ImageSize: int64(len(head)), TargetName: opts.TargetName, TargetSize: size}
	}
	if opts.Check != nil {
		if err := opts.Check(head); err != nil {
			return res, err
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	log.Debug("writing raw image", "table", res.Table, "declared_size", opts.DeclaredSize, "target_size", size)
	start := time.Now()

	w := &rawWriter{dst: dst, opts: opts, log: log}
	if opts.Start != nil {
		if err := opts.Start(); err != nil {
			return res, err
		}
	}
	if opts.Hash != nil {
		opts.Hash.Write(head) // hash.Hash never returns an error
	}
	if err := w.write(ctx, head, 0); err != nil {
		return res, &WriteError{Format: "raw", Err: err}
	}
	total := int64(len(head))
	res.Written = total
	if !short {
		total, err = w.stream(ctx, src, total)
		res.Written = w.written.Load()
		if err != nil {
			return res, err
		}
	}
	// A truncated download must never count as a success.
	if opts.DeclaredSize > 0 && total < opts.DeclaredSize {
		return res, fmt.Errorf("image ended after %d of %d bytes: %w", total, opts.DeclaredSize, io.ErrUnexpectedEOF)
	}
	if opts.DeclaredSize > 0 && total > opts.DeclaredSize {
		return res, fmt.Errorf("image is %d bytes, more than the %d bytes announced", total, opts.DeclaredSize)
	}
	if opts.Progress != nil {
		opts.Progress(total, opts.DeclaredSize)
	}
	if opts.Ended != nil {
		if err := opts.Ended(total); err != nil {
			return res, err
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := dst.Sync(); err != nil {
		return res, &WriteError{Format: "raw", Err: err}
	}
	el := time.Since(start)
	log.Info("raw image written", "bytes", total, "table", res.Table, "seconds", el.Seconds(),
		"mb_per_s", float64(total)/1e6/max(el.Seconds(), 1e-9))
	return res, nil
}

// rawWriter is the state of one WriteRaw after the head was checked.
type rawWriter struct {
	dst  Target
	opts RawOptions
	log  *slog.Logger
	// written is how far the image was written.
	written atomic.Int64
}

// chunk is one pipeline buffer holding image bytes at off.
type chunk struct {
	buf  []byte
	n    int
	off  int64
	refs atomic.Int32 // users left: hasher and writer
}

// stream reads src (positioned at off) to its end in a reader goroutine
// and hands each buffer, in order, to a hasher and a writer goroutine
// working in parallel. A buffer goes back to the pool when both are done
// with it, so at most opts.Buffers buffers exist. It returns the image
// size.
func (w *rawWriter) stream(ctx context.Context, src io.Reader, off int64) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(err error) { cancel(err) } // the first cause wins

	pool := make(chan *chunk, w.opts.Buffers)
	for range w.opts.Buffers {
		pool <- &chunk{buf: make([]byte, w.opts.BufferSize)}
	}
	users := int32(1)
	if w.opts.Hash != nil {
		users = 2
	}
	release := func(c *chunk) {
		if c.refs.Add(-1) == 0 {
			pool <- c // never blocks: the pool holds every chunk
		}
	}
	hashCh := make(chan *chunk, w.opts.Buffers)
	writeCh := make(chan *chunk, w.opts.Buffers)
	size := w.dst.Size()
	var total atomic.Int64 // set by the reader when src ended

	// The reader is not waited for: it may be blocked in src.Read after a
	// failure. It touches nothing but its pool buffers and the channels.
	go func() {
		defer close(writeCh)
		defer close(hashCh)
		pos := off
		for {
			var c *chunk
			select {
			case c = <-pool:
			case <-ctx.Done():
				return
			}
			n, eof, err := ReadFull(src, c.buf)
			if err != nil {
				fail(err) // src's error, unchanged
				return
			}
			if pos+int64(n) > size {
				fail(&SizeError{ImageSize: pos + int64(n), TargetName: w.opts.TargetName, TargetSize: size})
				return
			}
			if n > 0 {
				c.n, c.off = n, pos
				c.refs.Store(users)
				pos += int64(n)
				if users == 2 {
					hashCh <- c // buffered for every chunk: never blocks
				}
				writeCh <- c
			}
			if eof {
				total.Store(pos)
				return
			}
		}
	}()

	var wg sync.WaitGroup
	if w.opts.Hash != nil {
		wg.Go(func() {
			for {
				select {
				case c, ok := <-hashCh:
					if !ok {
						return
					}
					w.opts.Hash.Write(c.buf[:c.n])
					release(c)
				case <-ctx.Done():
					return
				}
			}
		})
	}
	wg.Go(func() {
		var last time.Time
		for {
			select {
			case c, ok := <-writeCh:
				if !ok {
					return
				}
				if err := w.write(ctx, c.buf[:c.n], c.off); err != nil {
					fail(&WriteError{Format: "raw", Err: err})
					return
				}
				end := c.off + int64(c.n)
				w.written.Store(end)
				release(c) // c may be reused from here on
				if w.opts.Progress != nil && time.Since(last) >= progressEvery {
					last = time.Now()
					w.opts.Progress(end, w.opts.DeclaredSize)
				}
			case <-ctx.Done():
				return
			}
		}
	})
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	return total.Load(), nil
}

// write puts p at off, zeroing (hole punch, BLKZEROOUT) rather than
// writing runs of zeros: faster on thin storage and files, and the
// previous data there is still gone.
func (w *rawWriter) write(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		// Find the extent of the run starting at p[0], in zeroRun steps.
		n := min(len(p), zeroRun)
		zero := AllZero(p[:n])
		for n < len(p) {
			k := min(len(p)-n, zeroRun)
			if AllZero(p[n:n+k]) != zero {
				break
			}
			n += k
		}
		if zero {
			if err := w.dst.ZeroRange(ctx, off, int64(n)); err != nil {
				return fmt.Errorf("zero %d bytes at %d: %w", n, off, err)
			}
		} else if _, err := w.dst.WriteAt(p[:n], off); err != nil {
			return fmt.Errorf("write at %d: %w", off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// ReadFull fills buf from r like io.ReadFull, but tells a clean end (r
// returned io.EOF: eof) from an error. io.ReadFull turns an early io.EOF
// into io.ErrUnexpectedEOF, which is also what a truncated HTTP body
// returns: the two must not be confused, a truncated download is an error
// (the format writers' rule: the declared size decides). 100 empty reads
// in a row are io.ErrNoProgress.
func ReadFull(r io.Reader, buf []byte) (n int, eof bool, err error) {
	empty := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		switch {
		case err == io.EOF:
			return n, true, nil
		case err != nil:
			return n, false, err
		case k == 0:
			if empty++; empty >= 100 {
				return n, false, io.ErrNoProgress
			}
		default:
			empty = 0
		}
	}
	return n, false, nil
}
