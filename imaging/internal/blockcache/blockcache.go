// Package blockcache is a small LRU cache of aligned blocks and a reader
// over such blocks, shared by the readers that serve many small reads from
// whole blocks: the HTTP range reader (fetch) and the qcow2 virtual disk.
package blockcache

import (
	"fmt"
	"io"
)

// Cache is a small LRU cache of aligned blocks, shared by the readers
// that serve many small reads from whole blocks (the inspect readers).
type Cache struct {
	Max    int
	blocks []cachedBlock // most recently used last
}

type cachedBlock struct {
	off int64
	b   []byte
}

// Lookup returns the block at off and marks it most recently used.
func (c *Cache) Lookup(off int64) ([]byte, bool) {
	for i, cb := range c.blocks {
		if cb.off == off {
			c.blocks = append(append(c.blocks[:i:i], c.blocks[i+1:]...), cb)
			return cb.b, true
		}
	}
	return nil, false
}

// Take makes room for one block: when the cache is full it drops the least
// recently used block and returns its buffer (full capacity) for reuse.
func (c *Cache) Take() []byte {
	if len(c.blocks) < c.Max {
		return nil
	}
	b := c.blocks[0].b
	c.blocks = c.blocks[1:]
	return b[:cap(b)]
}

// Add caches b as the block at off, dropping the least recently used block
// when the cache is full.
func (c *Cache) Add(off int64, b []byte) {
	c.Take()
	c.blocks = append(c.blocks, cachedBlock{off: off, b: b})
}

// ReadBlocks fills p from offset off of a size-byte object made of block-
// byte blocks, each got (whole, from its aligned offset) through get.
func ReadBlocks(p []byte, off, size, block int64, get func(off int64) ([]byte, error)) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		at := off + int64(n)
		if at >= size {
			return n, io.EOF
		}
		b, err := get(at / block * block)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], b[at%block:])
	}
	return n, nil
}
