package agent

import (
	"errors"
	"fmt"
	"io"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/qcow2"
)

// readQcow2Head reads the first MiB of the virtual disk of a staged qcow2
// that qcow2.Check already accepted, so its partition table and
// sector size are checked before the disk is touched. It reads whole
// clusters (qcow2.OpenDisk): a compressed cluster larger than the
// head (2 MiB clusters) must be decompressed whole.
func readQcow2Head(src io.ReaderAt, size int64, info *qcow2.Info) ([]byte, error) {
	vd, closeVD, err := qcow2.OpenDisk(src, size, info)
	if err != nil {
		return nil, err
	}
	defer closeVD()
	head := make([]byte, min(int64(imaging.HeadSize), info.VirtualSize))
	if _, err := vd.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read qcow2 head: %w", err)
	}
	return head, nil
}
