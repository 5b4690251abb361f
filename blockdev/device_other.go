//go:build !linux

package blockdev

import (
	"context"
	"errors"
)

var errNotLinux = errors.New("block devices are supported on Linux only")

func (d *Device) openBlock(OpenOptions) error { return errNotLinux }

func (d *Device) zeroRange(ctx context.Context, off, n int64) error {
	return d.writeZeros(ctx, off, n)
}

// discard on a regular file without hole punching has nothing to do:
// discarded contents are unspecified.
func (d *Device) discard(context.Context, int64, int64) error { return nil }

func (d *Device) writeBehind(int64, int64) {}

func (d *Device) flushBuffers() error { return errNotLinux }

func (d *Device) rereadPartitions(context.Context) error { return errNotLinux }

func (d *Device) lock() error { return errNotLinux }

func (d *Device) unlock() error { return errNotLinux }
