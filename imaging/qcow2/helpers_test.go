package qcow2_test

import (
	"context"
	"errors"
	"io"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/qcow2"
)

// deploy converts a staged qcow2 as a deployment does (agent.Deployer):
// Check once, then Convert with its verdict through a Guard over
// dst (the image's last MiB held, a stage on dst's tail kept out), Commit
// after a success, Abort after a failure. A refusal leaves dst untouched;
// Convert's error comes back unchanged when the abort succeeded.
func deploy(ctx context.Context, src io.ReaderAt, size int64, dst imaging.Target, opts qcow2.ConvertOptions) error {
	info, err := qcow2.Check(src, size, "", dst.Size())
	if err != nil {
		return err
	}
	g := imaging.Begin(ctx, dst)
	g.Hold(info.VirtualSize-imaging.HeadSize, imaging.HeadSize)
	if s, ok := src.(qcow2.Staged); ok {
		opts.KeepOut = s.Region()
	}
	opts.Start = func() error { return g.Start(ctx) }
	if err := qcow2.Convert(ctx, src, size, info, g, opts); err != nil {
		if werr := g.Abort(ctx); werr != nil {
			return errors.Join(err, werr)
		}
		return err
	}
	return g.Commit(ctx)
}
