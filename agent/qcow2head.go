package agent

import (
	"errors"
	"fmt"
	"io"

	"github.com/byoi/byoi/imaging"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// readQcow2Head reads the first MiB of the virtual disk of a staged qcow2
// that imaging.CheckQcow2 already accepted (no backing file: the opener
// passed to qcow2.Open refuses to open anything), so the sector size and
// the partition table can be checked before the disk is touched. It reads
// through imaging.Qcow2VirtualDisk, whole clusters at a time: a compressed
// cluster larger than the head (2 MiB clusters) must be decompressed whole.
func readQcow2Head(src io.ReaderAt, size int64, info *imaging.Qcow2Info) ([]byte, error) {
	// go-qcow2reader's Close closes its ReaderAt when it is an io.Closer:
	// hand it a SectionReader so the staged image stays open.
	img, err := qcow2.Open(io.NewSectionReader(src, 0, size), nil)
	if err != nil {
		return nil, fmt.Errorf("open qcow2: %w", err)
	}
	defer img.Close()
	head := make([]byte, min(int64(imaging.HeadSize), info.VirtualSize))
	if _, err := imaging.Qcow2VirtualDisk(img, info).ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read qcow2 head: %w", err)
	}
	return head, nil
}
