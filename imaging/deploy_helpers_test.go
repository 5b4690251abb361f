package imaging_test

import (
	"context"
	"errors"
	"io"

	"github.com/byoi/byoi/imaging"
)

// qcow2Deploy converts a staged qcow2 as a deployment does (agent.Deployer):
// CheckQcow2 once, then ConvertQcow2 with its verdict through a Guard over
// dst (the image's last MiB held, a stage on dst's tail kept out), Commit
// after a success, Abort after a failure. A refusal leaves dst untouched;
// ConvertQcow2's error comes back unchanged when the abort succeeded.
func qcow2Deploy(ctx context.Context, src io.ReaderAt, size int64, dst imaging.Target, opts imaging.ConvertOptions) error {
	info, err := imaging.CheckQcow2(src, size, "", dst.Size())
	if err != nil {
		return err
	}
	g := imaging.Begin(ctx, dst)
	g.Hold(info.VirtualSize-imaging.HeadSize, imaging.HeadSize)
	if s, ok := src.(imaging.Staged); ok {
		opts.KeepOut = s.Region()
	}
	opts.Start = func() error { return g.Start(ctx) }
	if err := imaging.ConvertQcow2(ctx, src, size, info, g, opts); err != nil {
		if werr := g.Abort(ctx); werr != nil {
			return errors.Join(err, werr)
		}
		return err
	}
	return g.Commit(ctx)
}
