package ova

import (
	"hash"
	"io"
	"sync"
	"sync/atomic"
)

// hashTee is an io.Reader that feeds every byte read through it to a set
// of hashes, each in its own goroutine, so hashing runs beside the reader
// instead of in its way. Bytes are copied into a few chunk buffers the
// hashes share; a chunk goes back to the pool when every hash is done with
// it, so at most chunks*chunkSize bytes are held (allocated as needed). close must be called: it
// hashes what is left and waits until every hash has seen every byte.
type hashTee struct {
	r         io.Reader
	hashes    []hash.Hash
	cur       *teeChunk
	pool      chan *teeChunk // chunks free for reuse
	chunks    int            // chunks allocated so far, at most cap(pool)
	chunkSize int
	work      []chan *teeChunk
	wg        sync.WaitGroup
	closed    bool
}

type teeChunk struct {
	b    []byte
	refs atomic.Int32
}

func newHashTee(r io.Reader, hashes []hash.Hash, chunkSize, chunks int) *hashTee {
	t := &hashTee{r: r, hashes: hashes, chunkSize: chunkSize}
	if len(hashes) == 0 {
		return t
	}
	t.pool = make(chan *teeChunk, chunks)
	for _, h := range hashes {
		ch := make(chan *teeChunk, chunks) // never blocks: chunks is the most in flight
		t.work = append(t.work, ch)
		t.wg.Go(func() {
			for c := range ch {
				h.Write(c.b) // hash.Hash never returns an error
				if c.refs.Add(-1) == 0 {
					c.b = c.b[:0]
					t.pool <- c
				}
			}
		})
	}
	return t
}

func (t *hashTee) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 && len(t.hashes) > 0 {
		t.feed(p[:n])
	}
	return n, err
}

func (t *hashTee) feed(p []byte) {
	for len(p) > 0 {
		if t.cur == nil {
			select {
			case t.cur = <-t.pool:
			default:
				if t.chunks < cap(t.pool) {
					t.chunks++
					t.cur = &teeChunk{b: make([]byte, 0, t.chunkSize)}
				} else {
					t.cur = <-t.pool
				}
			}
		}
		c := t.cur
		k := copy(c.b[len(c.b):cap(c.b)], p)
		c.b = c.b[:len(c.b)+k]
		p = p[k:]
		if len(c.b) == cap(c.b) {
			t.send()
		}
	}
}

func (t *hashTee) send() {
	c := t.cur
	t.cur = nil
	c.refs.Store(int32(len(t.work)))
	for _, ch := range t.work {
		ch <- c
	}
}

// close hashes the bytes still buffered and waits for the hashes.
func (t *hashTee) close() {
	if t.closed || len(t.hashes) == 0 {
		t.closed = true
		return
	}
	t.closed = true
	if t.cur != nil && len(t.cur.b) > 0 {
		t.send()
	}
	for _, ch := range t.work {
		close(ch)
	}
	t.wg.Wait()
}
