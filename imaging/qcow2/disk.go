package qcow2

import (
	"errors"
	"fmt"
	"io"

	"github.com/byoi/byoi/imaging/internal/blockcache"
	qcowreader "github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// OpenDisk opens the virtual disk of a qcow2 image of size bytes in
// src that Check accepted (info): never a backing file (the nil opener
// refuses), our decompressors registered first (zstd), read through whole,
// aligned clusters (VirtualDisk). close releases it; src stays open.
func OpenDisk(src io.ReaderAt, size int64, info *Info) (io.ReaderAt, func() error, error) {
	RegisterDecompressors()
	// go-qcow2reader's Close closes its ReaderAt when it is an io.Closer:
	// a SectionReader keeps src open.
	img, err := qcowreader.Open(io.NewSectionReader(src, 0, size), nil)
	if err != nil {
		return nil, nil, &Error{Reason: "cannot be opened", Err: err}
	}
	return VirtualDisk(img, info), img.Close, nil
}

// VirtualDisk reads the virtual disk of an opened qcow2 image (img,
// from go-qcow2reader's qcowreader.Open after Check accepted the image)
// through whole, aligned clusters: see alignedReader.
func VirtualDisk(img io.ReaderAt, info *Info) io.ReaderAt {
	block := max(info.ClusterSize, 64<<10)
	return &alignedReader{r: img, size: info.VirtualSize, block: block, cache: blockcache.Cache{Max: alignedCacheBlocks}}
}

// alignedCacheBlocks bounds alignedReader's cache: at most 8 blocks of at
// most 2 MiB (the largest qcow2 cluster).
const alignedCacheBlocks = 8

// alignedReader serves reads of any size and offset from whole, aligned
// blocks of r. go-qcow2reader decompresses a compressed cluster from its
// start: a read starting inside one makes it discard the head through a
// small Read, which imaging's decompressors (registered process-wide)
// support only on the converter's own source. Reading whole clusters is
// always right. A few blocks are cached: the partition and FAT readers
// make many small reads in the same places.
type alignedReader struct {
	r           io.ReaderAt
	size, block int64
	cache       blockcache.Cache
}

func (a *alignedReader) ReadAt(p []byte, off int64) (int, error) {
	return blockcache.ReadBlocks(p, off, a.size, a.block, a.get)
}

// get returns the block at off (a multiple of a.block).
func (a *alignedReader) get(off int64) ([]byte, error) {
	if b, ok := a.cache.Lookup(off); ok {
		return b, nil
	}
	buf := a.cache.Take()
	n := min(a.block, a.size-off)
	if int64(len(buf)) < n {
		buf = make([]byte, a.block)
	}
	buf = buf[:n]
	if m, err := a.r.ReadAt(buf, off); m != len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read the virtual disk at %d: %w", off, err)
	}
	a.cache.Add(off, buf)
	return buf, nil
}
