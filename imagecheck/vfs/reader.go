// Package vfs reads the filesystems of an untrusted disk image, read-only
// and bounded: a Reader in front of the image counts, caches and limits
// every read (so a hostile filesystem cannot make byoi read forever, and an
// image read through HTTP Range requests is read in few, larger pieces);
// a Driver per filesystem type (ext4, xfs, FAT) answers lookups of one path
// component, directory listings and file reads; a Tree mounts drivers at
// paths and resolves paths across them, following symbolic links with a
// depth limit as Linux does.
//
// Drivers take no context: the Reader below them checks its context on
// every read, so a cancelled or expired context stops any walk at its next
// read.
package vfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrBudget is returned by a Reader once its byte budget is spent.
var ErrBudget = errors.New("read budget exhausted")

// Limits bound a Reader.
type Limits struct {
	// MaxBytes is the most bytes read from the source (0: 512 MiB).
	MaxBytes int64
	// CacheBlocks is the number of 64 KiB blocks cached (0: 256, 16 MiB).
	CacheBlocks int
	// ReadAhead is the number of blocks fetched on a cache miss (0: 4,
	// 256 KiB): the small reads of filesystem metadata become few larger
	// reads of the source.
	ReadAhead int
}

const (
	blockSize = 64 << 10
	// directRead is the request size from which reads bypass the cache
	// (file contents).
	directRead = 256 << 10
)

// Reader is a bounded, caching io.ReaderAt over an image.
type Reader struct {
	ctx  context.Context
	src  io.ReaderAt
	size int64
	lim  Limits

	mu     sync.Mutex
	bytes  int64 // read from src
	reads  int   // ReadAt calls on src
	blocks map[int64]*cblock
	lru    cblock // sentinel of the LRU list (most recent after it)
}

type cblock struct {
	idx        int64
	data       []byte
	prev, next *cblock
}

// NewReader returns a Reader of size bytes of src. Every read fails once
// ctx is done or the budget is spent.
func NewReader(ctx context.Context, src io.ReaderAt, size int64, lim Limits) *Reader {
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = 512 << 20
	}
	if lim.CacheBlocks <= 0 {
		lim.CacheBlocks = 256
	}
	if lim.ReadAhead <= 0 {
		lim.ReadAhead = 4
	}
	r := &Reader{ctx: ctx, src: src, size: size, lim: lim, blocks: map[int64]*cblock{}}
	r.lru.prev, r.lru.next = &r.lru, &r.lru
	return r
}

// Size is the size of the image.
func (r *Reader) Size() int64 { return r.size }

// Stats returns how many reads were made of the source and how many bytes
// they read.
func (r *Reader) Stats() (reads int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads, r.bytes
}

// fetch reads len(p) bytes at off from the source, within the budget.
func (r *Reader) fetch(p []byte, off int64) error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	if r.bytes+int64(len(p)) > r.lim.MaxBytes {
		return fmt.Errorf("%w (%d KiB)", ErrBudget, r.lim.MaxBytes>>10)
	}
	r.reads++
	r.bytes += int64(len(p))
	n, err := r.src.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

// ReadAt implements io.ReaderAt. Reads past the end of the image are
// short, with io.EOF.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > r.size-off {
		p = p[:r.size-off]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(p) >= directRead {
		if err := r.fetch(p, off); err != nil {
			return 0, err
		}
	} else {
		for done := 0; done < len(p); {
			o := off + int64(done)
			b, err := r.block(o / blockSize)
			if err != nil {
				return done, err
			}
			done += copy(p[done:], b.data[o%blockSize:])
		}
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// block returns cached block i, reading it (and the next ReadAhead-1
// missing ones) on a miss.
func (r *Reader) block(i int64) (*cblock, error) {
	if b, ok := r.blocks[i]; ok {
		r.unlink(b)
		r.pushFront(b)
		return b, nil
	}
	n := int64(1)
	for n < int64(r.lim.ReadAhead) && (i+n)*blockSize < r.size {
		if _, ok := r.blocks[i+n]; ok {
			break
		}
		n++
	}
	start := i * blockSize
	end := min((i+n)*blockSize, r.size)
	buf := make([]byte, end-start)
	if err := r.fetch(buf, start); err != nil {
		return nil, err
	}
	var first *cblock
	for k := int64(0); k < n; k++ {
		lo := k * blockSize
		if lo >= int64(len(buf)) {
			break
		}
		b := &cblock{idx: i + k, data: buf[lo:min(lo+blockSize, int64(len(buf)))]}
		if k == 0 {
			first = b
		}
		r.blocks[b.idx] = b
		r.pushFront(b)
	}
	for len(r.blocks) > r.lim.CacheBlocks {
		old := r.lru.prev
		if old == first {
			break
		}
		r.unlink(old)
		delete(r.blocks, old.idx)
	}
	return first, nil
}

func (r *Reader) unlink(b *cblock) { b.prev.next, b.next.prev = b.next, b.prev }

func (r *Reader) pushFront(b *cblock) {
	b.next, b.prev = r.lru.next, &r.lru
	r.lru.next.prev = b
	r.lru.next = b
}
