// Package initramfs lists the files of a Linux initramfs as the kernel
// unpacks it (Documentation/driver-api/early-userspace/buffer-format.rst):
// uncompressed cpio archives ("newc", an early microcode archive in front),
// then a compressed one (gzip, zstd, xz, lz4 legacy, bzip2, lzma), each
// possibly followed by NUL padding and another archive. Only names, modes
// and sizes are kept; file data is skipped. The bytes are untrusted: the
// decompressed bytes, the entries and the name lengths are bounded, and
// the decoders' memory is (zstd window, xz and lzma dictionaries).
package initramfs

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Limits bound a walk.
type Limits struct {
	// MaxBytes is the most bytes read and decompressed (0: 1 GiB).
	MaxBytes int64
	// MaxEntries is the most archive entries (0: 1<<20).
	MaxEntries int
}

// Entry is a file of the archive.
type Entry struct {
	// Name is the path without a leading "./" or "/".
	Name string
	Mode uint32
	Size int64
}

// Info tells how the initramfs is made.
type Info struct {
	// Segments are the archives in order: "cpio" for an uncompressed one,
	// else the compression of a compressed one.
	Segments []string
	Entries  int
	// Stopped is true when the walk ended because fn asked it to.
	Stopped bool
}

// ErrUnsupported is returned for a segment in a format not read here
// (lzo).
var ErrUnsupported = errors.New("unsupported initramfs compression")

const maxName = 4096

// Walk reads the initramfs from r and calls fn for every entry until fn
// returns true. The error tells what could not be read; Info is filled as
// far as the walk went.
func Walk(r io.Reader, lim Limits, fn func(Entry) bool) (*Info, error) {
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = 1 << 30
	}
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = 1 << 20
	}
	w := &walker{lim: lim, fn: fn, info: &Info{}}
	br := bufio.NewReaderSize(&counter{r: r, w: w}, 64<<10)
	err := w.segments(br, true)
	return w.info, err
}

type walker struct {
	lim   Limits
	fn    func(Entry) bool
	info  *Info
	bytes int64 // read and decompressed
	stop  bool
}

var errBudget = errors.New("initramfs: over the size limit")

// counter counts the bytes read through it against the budget.
type counter struct {
	r io.Reader
	w *walker
}

func (c *counter) Read(p []byte) (int, error) {
	if c.w.bytes >= c.w.lim.MaxBytes {
		return 0, fmt.Errorf("%w of %d MiB", errBudget, c.w.lim.MaxBytes>>20)
	}
	if rem := c.w.lim.MaxBytes - c.w.bytes; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := c.r.Read(p)
	c.w.bytes += int64(n)
	return n, err
}

// segments reads archives from br until its end. outer is true for the
// file itself (where a compressed segment may appear), false inside a
// decompressed stream.
func (w *walker) segments(br *bufio.Reader, outer bool) error {
	for !w.stop {
		// NUL padding between archives.
		for {
			b, err := br.Peek(1)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if b[0] != 0 {
				break
			}
			br.Discard(1)
		}
		magic, _ := br.Peek(6)
		if bytes.HasPrefix(magic, []byte("07070")) {
			if outer || len(w.info.Segments) == 0 {
				w.info.Segments = append(w.info.Segments, "cpio")
			}
			if err := w.cpio(br); err != nil {
				return err
			}
			continue
		}
		if !outer {
			return fmt.Errorf("initramfs: data that is no cpio archive (%x) in a decompressed segment", magic)
		}
		name, dec, err := decoder(br, magic)
		if err != nil {
			return err
		}
		w.info.Segments = append(w.info.Segments, name)
		inner := bufio.NewReaderSize(&counter{r: dec, w: w}, 64<<10)
		err = w.segments(inner, false)
		if c, ok := dec.(io.Closer); ok {
			c.Close()
		}
		if err != nil {
			return fmt.Errorf("%s segment: %w", name, err)
		}
		// What follows a compressed segment is not read (the kernel goes
		// on; images built by mkinitramfs and dracut end here).
		return nil
	}
	return nil
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error { z.Decoder.Close(); return nil }

// decoder returns the decompressor of the segment starting with magic.
func decoder(br *bufio.Reader, magic []byte) (string, io.Reader, error) {
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && (magic[1] == 0x8b || magic[1] == 0x9e):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return "gzip", nil, fmt.Errorf("gzip: %w", err)
		}
		zr.Multistream(false)
		return "gzip", zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		// One goroutine (on 2 cores, more were slower on a Debian generic
		// initramfs), and no checksum: only names are wanted, a damaged
		// archive still fails in cpio, and the check costs 12% of the walk.
		zd, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(32<<20), zstd.WithDecoderMaxMemory(1<<62), zstd.IgnoreChecksum(true))
		if err != nil {
			return "zstd", nil, fmt.Errorf("zstd: %w", err)
		}
		return "zstd", zstdCloser{zd}, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		if err := checkXZ(br); err != nil {
			return "xz", nil, err
		}
		xr, err := xz.ReaderConfig{SingleStream: true}.NewReader(br)
		if err != nil {
			return "xz", nil, fmt.Errorf("xz: %w", err)
		}
		return "xz", xr, nil
	case bytes.HasPrefix(magic, []byte{0x02, 0x21, 0x4c, 0x18}):
		return "lz4", lz4.NewReader(br), nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return "bzip2", bzip2.NewReader(br), nil
	case bytes.HasPrefix(magic, []byte{0x5d, 0, 0}):
		h, err := br.Peek(13)
		if err != nil {
			return "lzma", nil, fmt.Errorf("lzma: %w", err)
		}
		if d := binary.LittleEndian.Uint32(h[1:]); d > maxDict {
			return "lzma", nil, fmt.Errorf("lzma: dictionary of %d MiB, over %d MiB", d>>20, maxDict>>20)
		}
		lr, err := lzma.NewReader(br)
		if err != nil {
			return "lzma", nil, fmt.Errorf("lzma: %w", err)
		}
		return "lzma", lr, nil
	case bytes.HasPrefix(magic, []byte{0x89, 'L', 'Z', 'O'}):
		return "lzo", nil, fmt.Errorf("%w: lzo", ErrUnsupported)
	}
	return "", nil, fmt.Errorf("initramfs: unknown data (%x): neither cpio nor a compression the kernel reads", magic)
}

const maxDict = 64 << 20

// checkXZ refuses an xz stream whose first block asks for a dictionary
// over maxDict (the decoder would allocate it). Later blocks are not
// checked here: the decompressed bytes stay bounded by the walk's budget.
func checkXZ(br *bufio.Reader) error {
	h, err := br.Peek(12 + 1)
	if err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	bh, err := br.Peek(12 + (int(h[12])+1)*4)
	if err != nil || h[12] == 0 {
		return nil // an empty stream, or let the decoder say
	}
	b := bh[12+1:]
	flags := b[0]
	b = b[1:]
	vli := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	if flags&0x40 != 0 {
		vli()
	}
	if flags&0x80 != 0 {
		vli()
	}
	for i := 0; i <= int(flags&3); i++ {
		id, ok1 := vli()
		sz, ok2 := vli()
		if !ok1 || !ok2 || uint64(len(b)) < sz {
			return nil
		}
		if id == 0x21 && sz == 1 { // LZMA2
			p := b[0]
			if p > 40 {
				return errors.New("xz: bad LZMA2 dictionary size")
			}
			d := uint64(2|p&1) << (p/2 + 11)
			if d > maxDict {
				return fmt.Errorf("xz: dictionary of %d MiB, over %d MiB", d>>20, maxDict>>20)
			}
		}
		b = b[sz:]
	}
	return nil
}

// cpio reads one newc archive up to its TRAILER!!! entry.
func (w *walker) cpio(br *bufio.Reader) error {
	hdr := make([]byte, 110)
	pos := int64(0) // within the archive, for the 4-byte alignment
	align := func() error {
		if pad := (4 - pos%4) % 4; pad > 0 {
			if _, err := br.Discard(int(pad)); err != nil {
				return fmt.Errorf("cpio: %w", noEOF(err))
			}
			pos += pad
		}
		return nil
	}
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			return fmt.Errorf("cpio header: %w", noEOF(err))
		}
		pos += 110
		if m := string(hdr[:6]); m != "070701" && m != "070702" {
			return fmt.Errorf("cpio: bad header magic %q", m)
		}
		field := func(i int) (uint64, error) {
			return strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
		}
		mode, err1 := field(1)
		size, err2 := field(6)
		nsize, err3 := field(11)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("cpio: bad header field: %w", err)
		}
		if nsize == 0 || nsize > maxName {
			return fmt.Errorf("cpio: name of %d bytes", nsize)
		}
		name := make([]byte, nsize)
		if _, err := io.ReadFull(br, name); err != nil {
			return fmt.Errorf("cpio name: %w", noEOF(err))
		}
		pos += int64(nsize)
		n := strings.TrimRight(string(name), "\x00")
		if err := align(); err != nil {
			return err
		}
		if n == "TRAILER!!!" {
			return nil
		}
		if w.info.Entries++; w.info.Entries > w.lim.MaxEntries {
			return fmt.Errorf("cpio: more than %d entries", w.lim.MaxEntries)
		}
		n = strings.TrimLeft(strings.TrimPrefix(n, "./"), "/")
		if n == "." {
			n = ""
		}
		if n != "" && w.fn(Entry{Name: n, Mode: uint32(mode), Size: int64(size)}) {
			w.stop, w.info.Stopped = true, true
			return nil
		}
		if _, err := br.Discard(int(size)); err != nil {
			return fmt.Errorf("cpio data of %s: %w", n, noEOF(err))
		}
		pos += int64(size)
		if err := align(); err != nil {
			return err
		}
	}
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
