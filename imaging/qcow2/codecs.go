package qcow2

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/klauspost/compress/zstd"
	qcowreader "github.com/lima-vm/go-qcow2reader/image/qcow2"
	qlog "github.com/lima-vm/go-qcow2reader/log"

	"github.com/byoi/byoi/imaging/internal/inflate"
)

// Why our own decompressors: go-qcow2reader hands a decompressor an
// io.SectionReader over the compressed cluster and then calls Read once
// with the (cluster sized) output. Its default zlib path reads the section
// through small buffered reads and may return a short read, so the cluster
// is decompressed again; it has no zstd decompressor at all. Ours read the
// compressed bytes with one ReadAt, decompress the whole cluster with a
// pooled decoder, and return it in one Read.

// maxCluster is the largest cluster size CheckHeader accepts.
const maxCluster = 1 << maxClusterBits

var registerOnce sync.Once

// RegisterDecompressors registers byoi's zlib (raw deflate) and zstd
// decompressors with go-qcow2reader. qcowreader.SetDecompressor is process-wide
// and not synchronised: call this once at start-up (cmd/), before any
// conversion; Convert calls it too, guarded by a sync.Once.
func RegisterDecompressors() {
	registerOnce.Do(func() {
		qcowreader.SetDecompressor(qcowreader.CompressionTypeZlib, func(r io.Reader) (io.ReadCloser, error) {
			return newClusterReader(r, decodeDeflate)
		})
		qcowreader.SetDecompressor(qcowreader.CompressionTypeZstd, func(r io.Reader) (io.ReadCloser, error) {
			return newClusterReader(r, decodeZstd)
		})
	})
}

// RouteWarnings sends go-qcow2reader's warnings (a package-level hook)
// to l at warn level; nil discards them. Call it once from cmd/.
func RouteWarnings(l *slog.Logger) {
	if l == nil {
		qlog.SetWarnFunc(func(string) {})
		return
	}
	qlog.SetWarnFunc(func(s string) { l.Warn("qcow2 reader", "warning", s) })
}

// decodeFunc decompresses src into dst, filling it completely.
type decodeFunc func(dst, src []byte) error

// decodeDeflate: qcow2 "zlib" clusters are raw deflate (no zlib header).
// The stream may be followed by the next cluster's bytes: deflate knows
// where it ends, and we stop once dst is full. inflate.Decode decodes
// straight into dst (the whole cluster is the window), with
// compress/flate's verdicts.
func decodeDeflate(dst, src []byte) error {
	if _, err := inflate.Decode(dst, src); err != nil {
		return fmt.Errorf("deflate: %w", err)
	}
	return nil
}

// zstdDecoder serves every DecodeAll call: a Decoder is safe for concurrent
// DecodeAll up to its concurrency, each with its own block decoder.
var zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(16),
		// A cluster is at most 2 MiB: anything bigger is hostile.
		zstd.WithDecoderMaxMemory(maxCluster),
		zstd.WithDecoderMaxWindow(8<<20),
		// Decode into dst's capacity and never allocate a bigger one.
		zstd.WithDecodeAllCapLimit(true),
	)
})

// decodeZstd: the zstd frame may be followed by other bytes (the next
// compressed cluster, padding to the sector): DecodeAll decodes the first
// frame into dst and fails on what follows, which we ignore once dst is
// full (qemu's qcow2_zstd_decompress ignores trailing bytes too).
func decodeZstd(dst, src []byte) error {
	d, err := zstdDecoder()
	if err != nil {
		return err
	}
	out, err := d.DecodeAll(src, dst[:0])
	if len(out) >= len(dst) && len(out) > 0 && &out[0] == &dst[0] {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("cluster decompressed to %d bytes, want %d", len(out), len(dst))
	}
	return fmt.Errorf("zstd: %w", err)
}

var compressedPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}
var clusterPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func getBuf(p *sync.Pool, n int) *[]byte {
	b := p.Get().(*[]byte)
	if cap(*b) < n {
		*b = make([]byte, n)
	}
	*b = (*b)[:n]
	return b
}

// clusterReader decompresses one compressed cluster on its first Read.
type clusterReader struct {
	src    *io.SectionReader
	decode decodeFunc
	out    *[]byte // pooled, when the first Read was smaller than the cluster
	pos    int
	err    error
	done   bool
}

func newClusterReader(r io.Reader, decode decodeFunc) (io.ReadCloser, error) {
	sr, ok := r.(*io.SectionReader)
	if !ok {
		return nil, fmt.Errorf("qcow2 decompressor: unexpected reader %T", r)
	}
	return &clusterReader{src: sr, decode: decode}, nil
}

// compressed reads the compressed bytes of the cluster with one ReadAt.
// go-qcow2reader sizes the section cluster size + 512 * additional sectors;
// the spec says the data ends at the end of sector (offset/512 +
// additional + 1). With our source we know the cluster size and the
// file size, so we read exactly that (less at the end of the file).
func (c *clusterReader) compressed() (*[]byte, int64, error) {
	ra, off, n := c.src.Outer()
	size := n
	cs := int64(0)
	if q, ok := ra.(*source); ok {
		cs = q.clusterSize
		add := (n - cs) / 512
		if add < 0 || n > cs+maxCluster*2 {
			return nil, 0, fmt.Errorf("compressed cluster at %#x: invalid size %d", off, n)
		}
		size = (add+1)*512 - off%512
		if off >= q.size {
			return nil, 0, &Error{Reason: fmt.Sprintf("compressed cluster at %#x lies past the end of the file (%d bytes)", off, q.size)}
		}
		if end := off + size; end > q.size {
			if end-q.size >= 512 {
				return nil, 0, &Error{Reason: fmt.Sprintf("compressed cluster at %#x (%d bytes) runs past the end of the file (%d bytes)", off, size, q.size)}
			}
			size = q.size - off // last sector not padded in the file
		}
	}
	if size < 0 || size > maxCluster*3 {
		return nil, 0, fmt.Errorf("compressed cluster at %#x: invalid size %d", off, size)
	}
	buf := getBuf(&compressedPool, int(size))
	m, err := ra.ReadAt(*buf, off)
	if m < len(*buf) {
		if cs != 0 || (err != nil && !errors.Is(err, io.EOF)) {
			compressedPool.Put(buf)
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, 0, fmt.Errorf("read compressed cluster at %#x: %w", off, err)
		}
		*buf = (*buf)[:m] // foreign ReaderAt: the section may run past EOF
	}
	return buf, cs, nil
}

func (c *clusterReader) Read(p []byte) (int, error) {
	if !c.done {
		c.done = true
		comp, cs, err := c.compressed()
		if err != nil {
			c.err = err
			return 0, err
		}
		defer compressedPool.Put(comp)
		if cs == 0 {
			// Not our source: the cluster size is unknown, so fill
			// what go-qcow2reader asks for (a reader starting mid-cluster
			// is not supported on this path).
			cs = int64(len(p))
		}
		if int64(len(p)) >= cs {
			// The common case: one Read of the whole cluster.
			if err := c.decode(p[:cs], *comp); err != nil {
				c.err = err
				return 0, err
			}
			c.err = io.EOF
			return int(cs), nil
		}
		c.out = getBuf(&clusterPool, int(cs))
		if err := c.decode(*c.out, *comp); err != nil {
			c.err = err
			return 0, err
		}
	}
	if c.out == nil || c.pos >= len(*c.out) {
		if c.err == nil {
			c.err = io.EOF
		}
		return 0, c.err
	}
	n := copy(p, (*c.out)[c.pos:])
	c.pos += n
	return n, nil
}

func (c *clusterReader) Close() error {
	if c.out != nil {
		clusterPool.Put(c.out)
		c.out = nil
	}
	return nil
}
