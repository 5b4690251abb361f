package configdrive

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	diskfile "github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// ISO9660 layout facts (ECMA-119): 2 KiB logical blocks, 16 blocks of system
// area, then the primary volume descriptor whose "volume space size" (both-
// endian uint32 at byte 80, little-endian half first) counts the blocks of the
// whole volume.
const (
	isoBlock          = 2048
	isoPVDOffset      = 16 * isoBlock
	isoVolumeSizeOff  = isoPVDOffset + 80
	isoOverheadBlocks = 64 // system area, descriptors, three directories, path tables: generous upper bound
)

// fixedTime is the timestamp given to every file and directory (1980-01-01,
// the FAT epoch), so the content does not depend on when it was built.
var fixedTime = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// buildISO writes files into an ISO9660 image with Rock Ridge, labelled
// config-2, using go-diskfs.
//
// go-diskfs v1.9.4 facts this relies on (read from its source):
//   - the label is FinalizeOptions.VolumeIdentifier (the PVD's volume id);
//   - Rock Ridge must be on: without it names are 8.3 (META_DAT.JSO;1) and
//     cloud-init finds nothing. Joliet stays off: v1.9.4 writes broken
//     subdirectory entries with it;
//   - Finalize stages the tree in a workspace directory on disk and writes the
//     image through backend.File; it takes no context. Both live in a private
//     0700 temporary directory removed before returning, since user data is a
//     secret;
//   - Finalize stamps the volume descriptors with time.Now and Rock Ridge
//     records the files' ctime, so two builds differ in timestamps only.
//
// kdomanski/iso9660 v0.4.0 was not used: its writer has no Rock Ridge.
func buildISO(ctx context.Context, files []file) (img []byte, err error) {
	var need int64 = isoOverheadBlocks * isoBlock
	for _, f := range files {
		need += roundUp(int64(len(f.data)), isoBlock)
	}
	if need > MaxSize {
		return nil, tooLarge(need)
	}

	tmp, err := os.MkdirTemp("", "byoi-configdrive-")
	if err != nil {
		return nil, fmt.Errorf("configdrive: temporary directory: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			img, err = nil, fmt.Errorf("configdrive: remove temporary directory: %w", rerr)
		}
	}()

	// The tree's root is a subdirectory so that its mode (recorded by Rock
	// Ridge) is 0755, not the 0700 of the private temporary directory.
	tree := filepath.Join(tmp, "tree")
	if err := stageTree(tree, files); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	out, err := os.Create(filepath.Join(tmp, "config-2.iso"))
	if err != nil {
		return nil, fmt.Errorf("configdrive: create image file: %w", err)
	}
	defer out.Close() // closed explicitly below; this covers error paths

	fsys, err := iso9660.Create(diskfile.New(out, false), 0, 0, isoBlock, tree)
	if err != nil {
		return nil, fmt.Errorf("configdrive: create iso9660: %w", err)
	}
	if err := fsys.Finalize(iso9660.FinalizeOptions{
		RockRidge:        true,
		VolumeIdentifier: Label,
	}); err != nil {
		return nil, fmt.Errorf("configdrive: write iso9660: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	img, err = readISO(out)
	if err != nil {
		return nil, err
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("configdrive: close image file: %w", err)
	}
	if int64(len(img)) > MaxSize {
		return nil, tooLarge(int64(len(img)))
	}
	return img, nil
}

// stageTree writes files under dir with directories 0755 and files 0644,
// all stamped with fixedTime.
func stageTree(dir string, files []file) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("configdrive: stage tree: %w", err)
	}
	dirs := map[string]bool{}
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("configdrive: stage tree: %w", err)
		}
		for d := filepath.Dir(p); d != dir && len(d) > len(dir); d = filepath.Dir(d) {
			dirs[d] = true
		}
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return fmt.Errorf("configdrive: stage tree: %w", err)
		}
		if err := os.Chtimes(p, fixedTime, fixedTime); err != nil {
			return fmt.Errorf("configdrive: stage tree: %w", err)
		}
	}
	dirs[dir] = true
	for d := range dirs {
		if err := os.Chtimes(d, fixedTime, fixedTime); err != nil {
			return fmt.Errorf("configdrive: stage tree: %w", err)
		}
	}
	return nil
}

// readISO reads the finished image, exactly the volume space size the PVD
// declares (go-diskfs pads the last file to a whole block itself).
func readISO(f *os.File) ([]byte, error) {
	var b [4]byte
	if _, err := f.ReadAt(b[:], isoVolumeSizeOff); err != nil {
		return nil, fmt.Errorf("configdrive: read back iso9660 volume size: %w", err)
	}
	size := int64(binary.LittleEndian.Uint32(b[:])) * isoBlock
	if size < isoPVDOffset+2*isoBlock || size > 2*MaxSize {
		return nil, fmt.Errorf("configdrive: iso9660 writer produced a volume of %d bytes", size)
	}
	img := make([]byte, size)
	// A file shorter than the declared size (a last block never written)
	// reads as zeros: io.EOF is not an error here.
	if _, err := f.ReadAt(img, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("configdrive: read back iso9660 image: %w", err)
	}
	return img, nil
}

// roundUp rounds n up to a multiple of m.
func roundUp(n, m int64) int64 {
	return (n + m - 1) / m * m
}
