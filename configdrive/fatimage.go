package configdrive

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// FATImage writes files (slash-separated paths, e.g. "EFI/BOOT/BOOTX64.EFI")
// into a small FAT12/FAT16 filesystem labelled label, with the ConfigDrive's
// writer (4096-byte sectors; see fat.go). byoi's demo image uses it for its
// EFI System Partition; it is not a general FAT formatter.
func FATImage(ctx context.Context, files map[string][]byte, label string) ([]byte, error) {
	if len(label) == 0 || len(label) > 11 || strings.EqualFold(label, Label) {
		return nil, fmt.Errorf("%w: a FAT label of 1 to 11 bytes other than %s", ErrInvalid, Label)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	fs := make([]file, 0, len(names))
	for _, n := range names {
		fs = append(fs, file{path: n, data: files[n]})
	}
	return buildFATLabel(ctx, fs, strings.ToUpper(label))
}
