package partition

import (
	"context"
	"fmt"
)

// CheckRoom tells, from an image's head alone and before anything is
// written, whether a partition of size bytes (the ConfigDrive) will fit
// once the image is on a disk of diskSize bytes with sectorSize-byte
// sectors: it runs the very code of the deployment (RelocateBackupGPT, then
// AddPartition) on a sparse in-memory disk that holds only head. So the
// answer is the one the deployment would get, not a second opinion. It
// returns nil when the head does not hold enough to decide (a GPT whose
// primary header is damaged, or whose entry array lies past head): the
// deployment then decides once the image is written.
func CheckRoom(ctx context.Context, head []byte, diskSize, sectorSize, size int64) error {
	v, err := Examine(head)
	if err != nil {
		return err
	}
	if v.Table == "gpt" {
		if v.Damaged || v.gpt == nil {
			return nil
		}
		h := v.gpt
		if h.entryLBA >= 1<<40 || int64(h.entryLBA)*v.SectorSize+int64(h.arrayBytes()) > int64(len(head)) {
			return nil
		}
		if v.SectorSize != sectorSize {
			return &SectorSizeError{ImageSectorSize: v.SectorSize, DiskSectorSize: sectorSize}
		}
	}
	d := newSparseDisk(diskSize, sectorSize)
	if _, err := d.WriteAt(head[:min(int64(len(head)), diskSize)], 0); err != nil {
		return err
	}
	v.RepairHead(d.page(0), uint64(diskSize/sectorSize))
	if err := RelocateBackupGPT(ctx, d); err != nil {
		return err
	}
	if _, err := AddPartition(ctx, d, "config-2", size); err != nil {
		return err
	}
	return nil
}

// sparseDisk is an in-memory disk of any size whose unwritten bytes read
// as zeros, in 64 KiB pages.
type sparseDisk struct {
	size, ss int64
	pages    map[int64][]byte
}

const sparsePage = 64 << 10

func newSparseDisk(size, ss int64) *sparseDisk {
	return &sparseDisk{size: size, ss: ss, pages: map[int64][]byte{}}
}

func (d *sparseDisk) Size() int64       { return d.size }
func (d *sparseDisk) SectorSize() int64 { return d.ss }

// page returns the page at index i, creating it.
func (d *sparseDisk) page(i int64) []byte {
	p, ok := d.pages[i]
	if !ok {
		p = make([]byte, sparsePage)
		d.pages[i] = p
	}
	return p
}

func (d *sparseDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("sparse disk: read of %d bytes at %d outside %d", len(p), off, d.size)
	}
	n := 0
	for n < len(p) {
		at := off + int64(n)
		i, o := at/sparsePage, at%sparsePage
		k := min(int64(len(p)-n), sparsePage-o)
		if pg, ok := d.pages[i]; ok {
			copy(p[n:n+int(k)], pg[o:o+k])
		} else {
			clear(p[n : n+int(k)])
		}
		n += int(k)
	}
	return n, nil
}

func (d *sparseDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("sparse disk: write of %d bytes at %d outside %d", len(p), off, d.size)
	}
	if len(d.pages) > 1024 { // 64 MiB: far more than tables need
		return 0, fmt.Errorf("sparse disk: too much written")
	}
	n := 0
	for n < len(p) {
		at := off + int64(n)
		i, o := at/sparsePage, at%sparsePage
		k := min(int64(len(p)-n), sparsePage-o)
		copy(d.page(i)[o:o+k], p[n:n+int(k)])
		n += int(k)
	}
	return n, nil
}
