// Package imaging is the core of writing an image: the Target it is written
// to, the Guard that makes a deployment one crash-safe transaction (the
// partition tables held in memory until the commit, a wipe after a failure),
// WriteRaw for raw images, format sniffing (Sniff, CheckFormat) and
// checksums. The format packages build on it: imaging/fetch downloads,
// imaging/decompress, imaging/qcow2, imaging/ova and imaging/vmdk read the
// formats. It never opens device paths: callers hand it a Target.
package imaging

import (
	"context"
	"io"
)

// Target is what images are written to: a whole disk, or a regular file
// standing in for one. blockdev.Device implements it.
type Target interface {
	io.ReaderAt
	io.WriterAt
	// Size is the usable size of the target in bytes.
	Size() int64
	// SectorSize is the logical sector size (512 or 4096).
	SectorSize() int64
	// ZeroRange makes [off, off+n) read as zeros: BLKZEROOUT on a block
	// device (falling back to writing zeros), hole punching on a file.
	ZeroRange(ctx context.Context, off, n int64) error
	// Sync flushes everything written to stable storage.
	Sync() error
}

// Progress receives the bytes done so far and the total (-1 when unknown).
// It is called from the goroutine doing the work and must be cheap.
type Progress func(done, total int64)
