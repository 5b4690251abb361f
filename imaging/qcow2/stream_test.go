package qcow2_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// streamDeploy streams img onto dst as a deployment does: through a Guard
// (the image's last MiB held once the header told the virtual size),
// Commit after a success, Abort after a failure. Ended, when set, plays
// the checksum.
func streamDeploy(ctx context.Context, src io.Reader, size int64, dst imaging.Target, opts qcow2.StreamOptions) (*qcow2.StreamResult, error) {
	g := imaging.Begin(ctx, dst)
	opts.DeclaredSize = size
	head := opts.Head
	opts.Head = func(h []byte, info *qcow2.Info) error {
		g.Hold(info.VirtualSize-imaging.HeadSize, imaging.HeadSize)
		if head != nil {
			return head(h, info)
		}
		return nil
	}
	opts.Start = func() error { return g.Start(ctx) }
	res, err := qcow2.Stream(ctx, src, g, opts)
	if err != nil {
		if werr := g.Abort(ctx); werr != nil {
			return res, errors.Join(err, werr)
		}
		return res, err
	}
	return res, g.Commit(ctx)
}

// TestStreamQcow2Matrix: every layout qemu-img makes (v2, v3, 512 B to 2
// MiB clusters, zlib, zstd, uncompressed, zero clusters and holes written
// by qemu-io, odd sizes) streams to the bytes qemu-img convert -O raw
// makes, over old data, or falls back (extended L2) with nothing written.
func TestStreamQcow2Matrix(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	for _, c := range qcowCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			imgPath, ref := makeQcow2(t, dir, c)
			img, err := os.ReadFile(imgPath)
			if err != nil {
				t.Fatal(err)
			}
			tsize := (c.size + 3<<20) / 4096 * 4096
			dst := imagingtest.NewMemTarget(tsize, 0xEE)
			h := sha256.New()
			res, err := streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{
				Hash: h, Workers: 3, Logger: testutil.Logger(t)})
			var ns *qcow2.NotStreamableError
			if errors.As(err, &ns) {
				if !bytes.Contains([]byte(c.opts), []byte("extended_l2")) {
					t.Fatalf("not streamed: %v", err)
				}
				if !bytes.Equal(ns.Replay, img[:len(ns.Replay)]) || dst.Writes != 0 || dst.Zeroings != 0 {
					t.Fatalf("fallback: replay of %d bytes, %d writes, %d zeroings", len(ns.Replay), dst.Writes, dst.Zeroings)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Read != int64(len(img)) || fmt.Sprintf("%x", h.Sum(nil)) != fmt.Sprintf("%x", sha256.Sum256(img)) {
				t.Fatalf("read %d of %d bytes, hash differs", res.Read, len(img))
			}
			sameBytes(t, bytes.NewReader(dst.B[:c.size]), ref, c.size)
			for i, b := range dst.B[c.size:] {
				if b != 0xEE && int64(i)+c.size < tsize-imaging.HeadSize {
					t.Fatalf("byte %d past the virtual disk written", c.size+int64(i))
				}
			}
			t.Logf("%s: written %d, zeroed %d, look-behind peak %d", c.name, res.Written, res.Zeroed, res.LookBehindPeak)
		})
	}
}

// TestStreamTestimage: the pure-Go writer's layout (tables first) streams
// to the raw image.
func TestStreamTestimage(t *testing.T) {
	raw := imagingtest.Disk(t, 8<<20, 3)
	for _, cb := range []uint{9, 12, 16, 21} {
		img, err := testimage.Qcow2(raw, cb)
		if err != nil {
			t.Fatal(err)
		}
		dst := imagingtest.NewMemTarget(int64(len(raw))+2<<20, 0xEE)
		if _, err := streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{}); err != nil {
			t.Fatalf("cluster bits %d: %v", cb, err)
		}
		if !bytes.Equal(dst.B[:len(raw)], raw) {
			t.Fatalf("cluster bits %d: streamed disk differs", cb)
		}
	}
}
