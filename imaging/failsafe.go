package imaging

import (
	"context"
	"fmt"

	"github.com/byoi/byoi/partition"
)

// HeadSize is the part of an image held back and written last: it holds the
// MBR and the primary GPT (header and entries fit in 1 MiB for 512 and 4096
// byte sectors). Until it is written the target has no partition table, so
// a failure at any point leaves nothing that looks bootable.
const HeadSize = 1 << 20

// ClearTables invalidates the previous system's partition tables before an
// image is written: it zeroes the first and the last MiB of the target (its
// MBR, primary and backup GPT, and the signatures blkid would still find
// there) and every other place a GPT header there names as its backup
// (partition.HeaderLocations: the backup of a disk that grew without
// moving it). After it no tool (sfdisk, blkid, sgdisk's backup recovery, a
// scan of those locations) finds the old tables.
func ClearTables(ctx context.Context, t Target) error {
	size := t.Size()
	locs := partition.HeaderLocations(t, size) // read before anything is zeroed
	head := min(int64(HeadSize), size)
	if err := t.ZeroRange(ctx, 0, head); err != nil {
		return fmt.Errorf("clear old partition table: %w", err)
	}
	tail := max(size-HeadSize, head)
	if size > head {
		if err := t.ZeroRange(ctx, tail, size-tail); err != nil {
			return fmt.Errorf("clear old backup partition table: %w", err)
		}
	}
	for _, off := range locs {
		if off < head || off >= tail {
			continue
		}
		at := off / 4096 * 4096
		if err := t.ZeroRange(ctx, at, min(4096, size-at)); err != nil {
			return fmt.Errorf("clear old backup partition table at %d: %w", at, err)
		}
	}
	return nil
}

// WipeAfterFailure leaves the target with no partition table after a failed
// write: it zeroes the head (in case it was written), the last MiB of the
// image region (where the image's own backup GPT was written) and the last
// MiB of the target. imageEnd is how far the image region reached (0 if
// unknown). It returns the first error but tries every range.
func WipeAfterFailure(ctx context.Context, t Target, imageEnd int64) error {
	// A cancelled job must still be able to wipe: ignore ctx cancellation.
	ctx = context.WithoutCancel(ctx)
	size := t.Size()
	var first error
	zero := func(off, n int64) {
		off = max(off, 0)
		n = min(n, size-off)
		if n <= 0 {
			return
		}
		if err := t.ZeroRange(ctx, off, n); err != nil && first == nil {
			first = fmt.Errorf("wipe after failure at %d: %w", off, err)
		}
	}
	zero(0, HeadSize)
	if imageEnd > 0 {
		zero(imageEnd-HeadSize, HeadSize)
	}
	zero(size-HeadSize, HeadSize)
	if err := t.Sync(); err != nil && first == nil {
		first = fmt.Errorf("wipe after failure: %w", err)
	}
	return first
}
