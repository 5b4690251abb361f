//go:build !linux

package blockdev

import (
	"context"
	"errors"
)

func (d *Device) openBlock(OpenOptions) error {
	return errors.New("block devices are supported on Linux only")
}

func (d *Device) zeroRange(ctx context.Context, off, n int64) error {
	return d.writeZeros(ctx, off, n)
}
