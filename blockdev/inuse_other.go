//go:build !linux

package blockdev

import "os"

// deviceNumber is Linux-only: elsewhere no node resolves to a sysfs disk.
func deviceNumber(os.FileInfo) (maj, min uint32, ok bool) { return 0, 0, false }
