package qcow2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/imaging"
	qcowreader "github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// ConvertOptions tune Convert.
type ConvertOptions struct {
	// Workers converting chunks in parallel (default: 2 per CPU, 4..8).
	Workers int
	// ChunkSize is the unit of work, rounded up to a multiple of the
	// cluster size and of 64 KiB (default 4 MiB). Memory is about
	// Workers * ChunkSize.
	ChunkSize int64
	// KeepOut is a range of dst the conversion must not write: the staged
	// image itself when it lives on dst's tail (Staged.Region). A virtual
	// disk reaching into it is refused before anything is written.
	KeepOut Range
	// Start, when set, is called once the image was opened, just before
	// the first write: the conversion's phase moves from checking to
	// writing (a Guard clears the old tables then: Guard.Start). An error
	// aborts with nothing written.
	Start func() error
	// Progress gets the virtual bytes done and the virtual size. Calls are
	// serialised.
	Progress imaging.Progress
	Logger   *slog.Logger
}

// Range is [Off, Off+N) of a target; N = 0 is no range.
type Range struct{ Off, N int64 }

// zeroBlock is the granularity at which data that reads as zeros is
// zeroed on the target instead of written (64 KiB: a multiple of every
// sector size, large enough that BLKZEROOUT / hole punching pays off).
const zeroBlock = 64 << 10

var zeros [zeroBlock]byte

// Convert writes the virtual disk of the qcow2 image src (srcSize
// bytes), which Check accepted (info, from Check over the same
// srcSize bytes: anything else is refused), onto dst, and flushes it:
// every byte of [0, virtual size) of dst ends equal to the image, ranges
// that read as zeros are zeroed with dst.ZeroRange (never left with old
// data). Nothing outside [0, virtual size) is written.
//
// Convert only writes: it neither clears the old partition tables,
// nor holds the image's own back, nor wipes after a failure; a deployment
// writes through an imaging.Guard, which does. Conversion errors are
// *WriteError{Format: "qcow2"}; a corrupt image found while converting
// also matches ErrRefused; after one, [0, virtual size) may hold part of
// the image.
func Convert(ctx context.Context, src io.ReaderAt, srcSize int64, info *Info, dst imaging.Target, opts ConvertOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if info == nil || info.checked == 0 || info.checked != srcSize {
		return errors.New("convert qcow2: the image was not accepted by Check at this size")
	}
	if info.VirtualSize > dst.Size() {
		return &imaging.SizeError{ImageSize: info.VirtualSize, TargetSize: dst.Size()}
	}
	if k := opts.KeepOut; k.N > 0 && k.Off < info.VirtualSize && info.VirtualSize > 0 {
		return fmt.Errorf("convert qcow2: staged image at %d overlaps the virtual disk (%d bytes)", k.Off, info.VirtualSize)
	}
	RegisterDecompressors()
	q := &source{r: src, size: srcSize, clusterSize: info.ClusterSize}
	img, err := qcowreader.Open(q, nil) // nil: never open a backing file (Check refused them)
	if err != nil {
		return &Error{Reason: "cannot be opened", Err: err}
	}
	if err := img.Readable(); err != nil {
		return &Error{Reason: "cannot be read", Err: err}
	}

	workers := opts.Workers
	if workers <= 0 {
		workers = min(max(2*runtime.GOMAXPROCS(0), 4), 8)
	}
	chunk := opts.ChunkSize
	if chunk <= 0 {
		chunk = 4 << 20
	}
	unit := max(info.ClusterSize, zeroBlock)
	chunk = (chunk + unit - 1) / unit * unit
	vsize := info.VirtualSize
	log.Info("converting qcow2", "virtual_size", vsize, "cluster_size", info.ClusterSize,
		"compression", info.Compression, "workers", workers, "chunk", chunk)
	start := time.Now()

	fail := func(err error) error {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return fmt.Errorf("convert qcow2: %w", err)
		}
		return &imaging.WriteError{Format: "qcow2", Err: err}
	}
	if opts.Start != nil {
		if err := opts.Start(); err != nil {
			return err
		}
	}
	c := &converter{
		ctx: ctx, img: img, dst: dst, vsize: vsize, chunk: chunk,
		progress: opts.Progress,
	}
	c.run(workers)
	if c.err != nil {
		return fail(c.err)
	}
	if err := dst.Sync(); err != nil {
		return fail(fmt.Errorf("sync: %w", err))
	}
	el := time.Since(start)
	log.Info("qcow2 converted", "virtual_size", vsize, "written", c.written.Load(),
		"zeroed", c.zeroed.Load(), "elapsed", el.Round(time.Millisecond))
	return nil
}

// converter runs the workers of one Convert.
type converter struct {
	ctx   context.Context
	img   *qcowreader.Qcow2
	dst   imaging.Target
	vsize int64
	chunk int64

	next    atomic.Int64 // next chunk index
	stop    atomic.Bool
	written atomic.Int64
	zeroed  atomic.Int64

	mu       sync.Mutex
	err      error
	done     int64
	progress imaging.Progress
}

func (c *converter) setErr(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.stop.Store(true)
}

func (c *converter) run(workers int) {
	nchunks := (c.vsize + c.chunk - 1) / c.chunk
	workers = int(min(int64(workers), nchunks))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, c.chunk)
			known := make([]bool, c.chunk/zeroBlock)
			for !c.stop.Load() {
				i := c.next.Add(1) - 1
				if i >= nchunks {
					return
				}
				if err := c.ctx.Err(); err != nil {
					c.setErr(err)
					return
				}
				off := i * c.chunk
				end := min(off+c.chunk, c.vsize)
				if err := c.convertChunk(off, end, buf, known); err != nil {
					c.setErr(err)
					return
				}
				if c.progress != nil {
					c.mu.Lock()
					c.done += end - off
					c.progress(c.done, c.vsize)
					c.mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
}

// readError makes an error from go-qcow2reader a refusal of the image,
// unless reading the staged bytes themselves failed (an I/O error).
func readError(err error, off int64) error {
	var qe *Error
	var se *sourceError
	switch {
	case errors.As(err, &qe):
		return err
	case errors.As(err, &se):
		return fmt.Errorf("read staged image for guest offset %d: %w", off, err)
	}
	return &Error{Reason: fmt.Sprintf("corrupt data at guest offset %d", off), Err: err}
}

// sourceError is a failed read of the staged image (not its content).
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// convertChunk converts [start, end) of the virtual disk: start is aligned
// to the chunk size (a multiple of the cluster size and of zeroBlock).
func (c *converter) convertChunk(start, end int64, buf []byte, known []bool) error {
	buf = buf[:end-start]
	nb := (len(buf) + zeroBlock - 1) / zeroBlock
	known = known[:nb]
	clear(known)
	for pos := start; pos < end; {
		ext, err := c.img.Extent(pos, end-pos)
		if err != nil {
			return readError(err, pos)
		}
		extEnd := min(ext.Start+ext.Length, end)
		if ext.Start != pos || extEnd <= pos {
			return readError(fmt.Errorf("extent [%d,+%d) does not continue at %d", ext.Start, ext.Length, pos), pos)
		}
		a, b := int(pos-start), int(extEnd-start)
		if ext.Zero {
			// Whole zeroBlocks are marked, partial ones cleared.
			for i := a / zeroBlock; i*zeroBlock < b; i++ {
				bs, be := i*zeroBlock, min((i+1)*zeroBlock, len(buf))
				if bs >= a && be <= b {
					known[i] = true
				} else {
					clear(buf[max(bs, a):min(be, b)])
				}
			}
		} else {
			n, err := c.img.ReadAt(buf[a:b], pos)
			if n != b-a || (err != nil && !errors.Is(err, io.EOF)) {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return readError(err, pos)
			}
		}
		pos = extEnd
	}
	// Emit runs of data and of zeros, block by block.
	runStart, runZero := 0, false
	for i := 0; i <= nb; i++ {
		var z bool
		if i < nb {
			bs, be := i*zeroBlock, min((i+1)*zeroBlock, len(buf))
			z = known[i] || bytes.Equal(buf[bs:be], zeros[:be-bs])
			if i == 0 {
				runZero = z
				continue
			}
			if z == runZero {
				continue
			}
		}
		rs, re := runStart*zeroBlock, min(i*zeroBlock, len(buf))
		if err := c.emit(start+int64(rs), buf[rs:re], runZero); err != nil {
			return err
		}
		runStart, runZero = i, z
	}
	return nil
}

// emit writes data (or zeroes its range) at off.
func (c *converter) emit(off int64, data []byte, zero bool) error {
	if zero {
		if err := c.dst.ZeroRange(c.ctx, off, int64(len(data))); err != nil {
			return fmt.Errorf("zero %d bytes at %d: %w", len(data), off, err)
		}
		c.zeroed.Add(int64(len(data)))
		return nil
	}
	if _, err := c.dst.WriteAt(data, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(data), off, err)
	}
	c.written.Add(int64(len(data)))
	return nil
}

// source is what go-qcow2reader reads the image through: reads past
// the staged size are errors (never zeros, never a panic), and the backing
// file fields of the header always read as zeros, so even a header changed
// after Check cannot make go-qcow2reader open a local file. It has no
// Name method, so relative backing names cannot be resolved either.
type source struct {
	r           io.ReaderAt
	size        int64
	clusterSize int64
}

// Header bytes 8..19: backing_file_offset and backing_file_size.
const backingStart, backingEnd = 8, 20

func (q *source) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= q.size {
		return 0, &Error{Reason: fmt.Sprintf("read of %d bytes at %#x lies past the end of the file (%d bytes)", len(p), off, q.size)}
	}
	want := len(p)
	if int64(want) > q.size-off {
		p = p[:q.size-off]
	}
	n, err := q.r.ReadAt(p, off)
	if off < backingEnd {
		for i := max(backingStart-off, 0); i < int64(n) && off+i < backingEnd; i++ {
			p[i] = 0
		}
	}
	if n == want {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return n, &Error{Reason: fmt.Sprintf("read of %d bytes at %#x runs past the end of the file (%d bytes)", want, off, q.size)}
	}
	return n, &sourceError{err}
}
