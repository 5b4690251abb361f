// Package decompress undoes the compression a raw image may arrive in
// (gzip, xz, zstd, bzip2) as it streams, with the decoders' memory bounded
// and a compression inside the compression refused: Stream gives the
// decompressed bytes of a stream whose head the caller has read.
package decompress

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/byoi/byoi/imaging"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Memory bounds of the stream decompressors. A compressed raw image of a
// few GiB must stream through a rescue system's RAM: the decoders' windows
// are what they hold.
const (
	// maxZstdWindow refuses zstd frames with a larger window (zstd
	// levels 1-19 use at most 8 MiB; --long=26 64 MiB; --long=27 and
	// --ultra -22 more).
	maxZstdWindow = 64 << 20
	// maxXzDict refuses xz blocks with a larger LZMA2 dictionary (xz -9
	// uses 64 MiB; the format allows 4 GiB, which the decoder would
	// allocate).
	maxXzDict = 64 << 20
	// peekSize is how much of the decompressed stream is looked at for a
	// nested compression.
	peekSize = 4096
)

// ErrRefused is matched (errors.Is) by every *Error.
var ErrRefused = errors.New("compressed image refused")

// Error is a compressed image byoi cannot decompress: corrupt
// or truncated data, a compression inside the compression, or a stream
// beyond the decoders' memory bounds. A truncated stream also matches
// io.ErrUnexpectedEOF.
type Error struct {
	// Format is the compression: gzip, zstd, xz or bzip2.
	Format imaging.Format
	Reason string
	Err    error
}

func (e *Error) Error() string {
	reason := e.Reason
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	return string(e.Format) + " image refused: " + reason
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *Error) Is(target error) bool { return target == ErrRefused }

func (e *Error) Unwrap() error { return e.Err }

// Compressed reports whether f is a compression Stream undoes.
func Compressed(f imaging.Format) bool {
	switch f {
	case imaging.FormatGzip, imaging.FormatZstd, imaging.FormatXz, imaging.FormatBzip2:
		return true
	}
	return false
}

// Stream undoes the compression of a raw image as it streams.
// head is what was already read from the stream (at least its first 8
// bytes, unless the stream is shorter; HeadSize is typical), r the rest.
// The compression is chosen by Sniff(head): gzip (multi-member, RFC 1952),
// zstd (multi-frame, RFC 8878; window at most 64 MiB), xz (multi-stream,
// xz file format 1.2; LZMA2 dictionary at most 64 MiB) or bzip2
// (concatenated streams too). When head is none of these, the stream is
// returned unchanged and the format is "".
//
// The start of the decompressed stream is read before returning: a
// compression inside the compression (an image.gz.xz) is refused there,
// as is a stream whose first bytes do not decompress; nothing was written
// yet. The returned reader never ends early without an error: a truncated
// stream is a *Error matching io.ErrUnexpectedEOF, corrupt data
// a *Error, and r's own errors come unchanged. It buffers
// nothing beyond the decoders' windows: the size of the image is the
// business of the writer it feeds (WriteRaw refuses a stream past the
// disk). Close releases the decoder.
func Stream(head []byte, r io.Reader) (io.ReadCloser, imaging.Format, error) {
	f := imaging.Sniff(head)
	src := &source{r: io.MultiReader(bytes.NewReader(head), r)}
	if !Compressed(f) {
		return io.NopCloser(src.r), "", nil
	}
	var dec io.Reader
	closeDec := func() {}
	var err error
	switch f {
	case imaging.FormatGzip:
		var zr *gzip.Reader
		zr, err = gzip.NewReader(src)
		if err == nil {
			zr.Multistream(true)
			dec = zr
		}
	case imaging.FormatZstd:
		var zd *zstd.Decoder
		zd, err = zstd.NewReader(src,
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderConcurrency(2),
			zstd.WithDecoderMaxWindow(maxZstdWindow),
			zstd.WithDecoderMaxMemory(1<<62), // the stream's size is the writer's business
		)
		if err == nil {
			dec, closeDec = zd, zd.Close
		}
	case imaging.FormatXz:
		dec, err = xz.ReaderConfig{}.NewReader(&xzGuard{r: src, maxDict: maxXzDict, need: 12})
	case imaging.FormatBzip2:
		dec = bzip2.NewReader(src)
	}
	if err != nil {
		return nil, f, src.wrap(f, err)
	}
	d := &reader{f: f, src: src, dec: dec, close: closeDec}
	peek := make([]byte, peekSize)
	n, err := io.ReadFull(d, peek)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil // a short image: the writer judges it
	}
	if err != nil {
		d.Close()
		return nil, f, err
	}
	if inner := imaging.Sniff(peek[:n]); Compressed(inner) {
		d.Close()
		return nil, f, &Error{Format: f, Reason: fmt.Sprintf("it holds %s data: a compression inside the compression is not a disk image", inner)}
	}
	d.peek = peek[:n]
	return d, f, nil
}

// source remembers the source's own error, to tell it from the
// decoder's.
type source struct {
	r   io.Reader
	err error // the first error other than io.EOF
	eof bool
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	switch {
	case err == io.EOF:
		s.eof = true
	case err != nil && s.err == nil:
		s.err = err
	}
	return n, err
}

// wrap turns a decoder's error into a *Error, unless it is the
// source's own.
func (s *source) wrap(f imaging.Format, err error) error {
	switch {
	case s.err != nil:
		return s.err
	case errors.Is(err, io.ErrUnexpectedEOF) || (s.eof && err == io.EOF):
		return &Error{Format: f, Reason: "truncated: the compressed stream ends early", Err: io.ErrUnexpectedEOF}
	}
	var ce *Error
	if errors.As(err, &ce) {
		return err
	}
	if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return &Error{Format: f, Reason: fmt.Sprintf("its window is larger than %d MiB", maxZstdWindow>>20), Err: err}
	}
	return &Error{Format: f, Reason: "corrupt compressed data", Err: err}
}

// reader is the decompressed stream. Close may come from another
// goroutine while a Read is blocked in the source (a streaming writer does
// not wait for its reader after a failure): the decoder is then closed
// when that Read returns, never under it.
type reader struct {
	f     imaging.Format
	src   *source
	dec   io.Reader
	peek  []byte
	close func()
	err   error // the reader's own: touched only by Read

	mu      sync.Mutex
	reading bool
	closed  bool
}

var errClosed = errors.New("read after close")

func (d *reader) Read(p []byte) (int, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return 0, errClosed
	}
	d.reading = true
	d.mu.Unlock()
	n, err := d.read(p)
	d.mu.Lock()
	d.reading = false
	if d.closed {
		c := d.close
		d.close = nil
		d.mu.Unlock()
		if c != nil {
			c()
		}
		return n, errClosed
	}
	d.mu.Unlock()
	return n, err
}

func (d *reader) read(p []byte) (int, error) {
	if len(d.peek) > 0 {
		n := copy(p, d.peek)
		d.peek = d.peek[n:]
		return n, nil
	}
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.dec.Read(p)
	if err == io.EOF {
		if !d.src.eof && d.src.err == nil {
			// The decoder stopped before the source ended: bytes
			// follow the compressed stream.
			var one [1]byte
			if k, _ := io.ReadFull(d.src, one[:]); k > 0 {
				d.err = &Error{Format: d.f, Reason: "data follows the end of the compressed stream"}
				return n, d.err
			}
		}
		if d.src.err != nil {
			d.err = d.src.err
			return n, d.err
		}
		d.err = io.EOF
		return n, io.EOF
	}
	if err != nil {
		d.err = d.src.wrap(d.f, err)
		return n, d.err
	}
	return n, nil
}

func (d *reader) Close() error {
	d.mu.Lock()
	d.closed = true
	if d.reading { // that Read closes the decoder when it returns
		d.mu.Unlock()
		return nil
	}
	c := d.close
	d.close = nil
	d.mu.Unlock()
	if c != nil {
		c()
	}
	return nil
}

// xzGuard passes an xz stream through unchanged while walking its
// container (xz file format 1.2.0: stream header, blocks, index, stream
// footer, stream padding) and its LZMA2 chunk headers, without
// decompressing. It refuses a block whose LZMA2 dictionary is larger than
// maxDict before the decoder sees that block's header: ulikunitz/xz
// allocates the dictionary a block header asks for, up to 4 GiB.
type xzGuard struct {
	r       io.Reader
	maxDict int64
	err     error

	st    int
	hdr   []byte // the header being collected
	need  int    // its full size
	skip  int64  // bytes to pass unparsed
	check int64  // the current stream's check size
	data  int64  // the current block's LZMA2 data size so far
	// index walk
	vliLeft int64 // vlis left in the index records
	vliPart bool  // inside a vli
	idxLen  int64
	vliCnt  bool // the count vli is being read
	count   uint64
	shift   uint
}

const (
	xzStreamHeader = iota // collecting the 12-byte stream header
	xzBlockOrIndex        // the next byte starts a block header or the index
	xzBlockHeader         // collecting a block header
	xzChunk               // the next byte is an LZMA2 control byte
	xzChunkHeader         // collecting an LZMA2 chunk header
	xzIndex               // walking the index
	xzIndexPad            // index padding and CRC32 (skip), then the footer
	xzFooter              // collecting the 12-byte stream footer
	xzStreamPad           // stream padding or the next stream
)

func (g *xzGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if werr := g.walk(p[:n]); werr != nil {
		g.err = &Error{Format: imaging.FormatXz, Reason: werr.Error()}
		return 0, g.err
	}
	return n, err
}

// walk advances the state machine over b.
func (g *xzGuard) walk(b []byte) error {
	for len(b) > 0 {
		if g.skip > 0 {
			k := min(g.skip, int64(len(b)))
			g.skip -= k
			b = b[k:]
			continue
		}
		switch g.st {
		case xzStreamHeader, xzBlockHeader, xzChunkHeader, xzFooter:
			k := min(g.need-len(g.hdr), len(b))
			g.hdr = append(g.hdr, b[:k]...)
			b = b[k:]
			if len(g.hdr) == g.need {
				if err := g.header(); err != nil {
					return err
				}
			}
		case xzBlockOrIndex:
			c := b[0]
			b = b[1:]
			if c == 0 {
				g.st, g.idxLen, g.vliCnt, g.vliPart, g.count, g.shift = xzIndex, 1, true, false, 0, 0
				continue
			}
			g.st, g.hdr, g.need = xzBlockHeader, append(g.hdr[:0], c), (int(c)+1)*4
		case xzChunk:
			c := b[0]
			b = b[1:]
			g.data++
			switch {
			case c == 0:
				// End of the block's data: padding to 4 bytes, the check.
				g.skip = (4-g.data%4)%4 + g.check
				g.st = xzBlockOrIndex
			case c == 1 || c == 2:
				g.st, g.hdr, g.need = xzChunkHeader, append(g.hdr[:0], c), 3
			case c >= 0x80:
				need := 5
				if c >= 0xC0 {
					need = 6
				}
				g.st, g.hdr, g.need = xzChunkHeader, append(g.hdr[:0], c), need
			default:
				return fmt.Errorf("corrupt LZMA2 data (control byte %#x)", c)
			}
		case xzIndex:
			c := b[0]
			b = b[1:]
			g.idxLen++
			if g.shift > 63 {
				return errors.New("corrupt xz index")
			}
			g.count |= uint64(c&0x7F) << g.shift
			g.shift += 7
			if c&0x80 != 0 {
				continue
			}
			if g.vliCnt {
				if g.count > 1<<40 {
					return errors.New("corrupt xz index")
				}
				g.vliCnt, g.vliLeft = false, int64(g.count)*2
			} else {
				g.vliLeft--
			}
			g.count, g.shift = 0, 0
			if g.vliLeft == 0 && !g.vliCnt {
				g.st = xzIndexPad
				g.skip = (4-g.idxLen%4)%4 + 4
			}
		case xzIndexPad:
			g.st, g.hdr, g.need = xzFooter, g.hdr[:0], 12
		case xzStreamPad:
			if b[0] == 0 {
				b = b[1:]
				continue
			}
			g.st, g.hdr, g.need = xzStreamHeader, g.hdr[:0], 12
		}
	}
	return nil
}

// header handles a complete collected header.
func (g *xzGuard) header() error {
	h := g.hdr
	switch g.st {
	case xzStreamHeader:
		if string(h[:6]) != "\xfd7zXZ\x00" {
			return errors.New("not an xz stream")
		}
		g.check = xzCheckSize(h[7] & 0x0F)
		g.st = xzBlockOrIndex
	case xzBlockHeader:
		if err := g.blockHeader(h); err != nil {
			return err
		}
		g.st, g.data = xzChunk, 0
	case xzChunkHeader:
		c := h[0]
		g.data += int64(len(h) - 1)
		if c == 1 || c == 2 {
			g.skip = int64(binary.BigEndian.Uint16(h[1:3])) + 1
		} else {
			g.skip = int64(binary.BigEndian.Uint16(h[3:5])) + 1
		}
		g.data += g.skip
		g.st = xzChunk
	case xzFooter:
		if string(h[10:12]) != "YZ" {
			return errors.New("corrupt xz stream footer")
		}
		g.st = xzStreamPad
	}
	g.hdr = g.hdr[:0]
	return nil
}

// blockHeader checks the filter flags of a block header: an LZMA2
// dictionary must be at most maxDict.
func (g *xzGuard) blockHeader(h []byte) error {
	flags := h[1]
	p := h[2 : len(h)-4] // without the CRC32
	vli := func() (uint64, bool) {
		var v uint64
		for i := 0; i < 9 && i < len(p); i++ {
			v |= uint64(p[i]&0x7F) << (7 * i)
			if p[i]&0x80 == 0 {
				p = p[i+1:]
				return v, true
			}
		}
		return 0, false
	}
	if flags&0x40 != 0 {
		if _, ok := vli(); !ok {
			return errors.New("corrupt xz block header")
		}
	}
	if flags&0x80 != 0 {
		if _, ok := vli(); !ok {
			return errors.New("corrupt xz block header")
		}
	}
	for range int(flags&3) + 1 {
		id, ok1 := vli()
		size, ok2 := vli()
		if !ok1 || !ok2 || size > uint64(len(p)) {
			return errors.New("corrupt xz block header")
		}
		props := p[:size]
		p = p[size:]
		if id == 0x21 { // LZMA2
			if len(props) != 1 || props[0] > 40 {
				return errors.New("corrupt LZMA2 filter properties")
			}
			d := props[0]
			dict := int64(0xFFFFFFFF)
			if d < 40 {
				dict = int64(2|d&1) << (d/2 + 11)
			}
			if dict > g.maxDict {
				return fmt.Errorf("its dictionary of %d MiB is larger than %d MiB", dict>>20, g.maxDict>>20)
			}
		}
	}
	return nil
}

// xzCheckSize is the size of a block's check for a check type (xz file
// format 1.2.0, section 2.1.1.2).
func xzCheckSize(t byte) int64 {
	if t == 0 {
		return 0
	}
	return 4 << ((t - 1) / 3)
}
