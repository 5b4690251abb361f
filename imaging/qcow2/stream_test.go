package qcow2_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

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

// stageRest is what a deployment does after a NotStreamableError: stage the
// replay and the rest of the stream (hashing the rest only: the replay was
// hashed), Check, Convert.
func stageRest(t *testing.T, ns *qcow2.NotStreamableError, rest io.Reader, h io.Writer, dst imaging.Target) {
	t.Helper()
	staged, err := qcow2.Stage(context.Background(), io.MultiReader(bytes.NewReader(ns.Replay), io.TeeReader(rest, h)), qcow2.StageOptions{DeclaredSize: -1, MemoryReserve: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer staged.Close()
	if err := deploy(context.Background(), staged, staged.Size(), dst, qcow2.ConvertOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestStreamTablesLast: an image whose L1 and L2 tables follow its data.
// Within the look-behind's bound it streams (the data kept until its table
// arrives); beyond the hold limit Stream falls back before writing anything,
// saying so, and staging the replay plus the rest converts it.
func TestStreamTablesLast(t *testing.T) {
	raw := imagingtest.Disk(t, 8<<20, 5)
	img, err := testimage.Qcow2Layout(raw, 16, testimage.TablesLast)
	if err != nil {
		t.Fatal(err)
	}
	info, err := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.L1Offset < int64(len(img))/2 {
		t.Fatalf("L1 table at %d of %d: not a tables-last layout", info.L1Offset, len(img))
	}
	t.Run("look-behind", func(t *testing.T) {
		dst := imagingtest.NewMemTarget(int64(len(raw))+2<<20, 0xEE)
		res, err := streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.LookBehindPeak < info.L1Offset/2 {
			t.Fatalf("look-behind peak %d for tables at %d", res.LookBehindPeak, info.L1Offset)
		}
		if !bytes.Equal(dst.B[:len(raw)], raw) {
			t.Fatal("streamed disk differs")
		}
	})
	t.Run("fallback", func(t *testing.T) {
		dst := imagingtest.NewMemTarget(int64(len(raw))+2<<20, 0xEE)
		h := sha256.New()
		src := bytes.NewReader(img)
		_, err := streamDeploy(context.Background(), src, int64(len(img)), dst, qcow2.StreamOptions{
			Hash: h, HoldLimit: 1 << 20, LookBehindLimit: 1 << 20})
		var ns *qcow2.NotStreamableError
		if !errors.As(err, &ns) {
			t.Fatalf("err = %v, want a NotStreamableError", err)
		}
		if ns.Reason != "tables after data" || ns.Offset <= 0 || ns.Offset > 1<<20 {
			t.Fatalf("fallback: %v", err)
		}
		if got := ns.Error(); got != fmt.Sprintf("qcow2: tables after data at offset %d: staging", ns.Offset) {
			t.Fatalf("message %q", got)
		}
		if dst.Writes != 0 || dst.Zeroings != 0 || !bytes.Equal(ns.Replay, img[:len(ns.Replay)]) {
			t.Fatalf("fallback after %d writes, %d zeroings; replay of %d bytes", dst.Writes, dst.Zeroings, len(ns.Replay))
		}
		stageRest(t, ns, src, h, dst)
		if !bytes.Equal(dst.B[:len(raw)], raw) {
			t.Fatal("staged disk differs")
		}
		if fmt.Sprintf("%x", h.Sum(nil)) != fmt.Sprintf("%x", sha256.Sum256(img)) {
			t.Fatal("the hash over the replay and the rest differs from the image's")
		}
	})
}

// TestStreamWrongChecksum: a checksum that does not match (Ended fails)
// leaves no partition table anywhere: not the old disk's, not the image's
// (held by the Guard, never written), and the data written is wiped from
// the table regions.
func TestStreamWrongChecksum(t *testing.T) {
	raw := imagingtest.Disk(t, 8<<20, 7)
	img, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	old := imagingtest.Disk(t, 12<<20, 8) // an old system with its GPT
	dst := imagingtest.NewMemTarget(int64(len(old)), 0)
	copy(dst.B, old)
	bad := errors.New("checksum mismatch")
	_, err = streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{
		Ended: func(int64) error { return bad }})
	if !errors.Is(err, bad) {
		t.Fatalf("err = %v, want the checksum's", err)
	}
	if dst.Writes == 0 {
		t.Fatal("nothing streamed before the checksum: the test proves nothing")
	}
	for _, r := range [][2]int64{{0, imaging.HeadSize}, {int64(len(raw)) - imaging.HeadSize, imaging.HeadSize}, {dst.Size() - imaging.HeadSize, imaging.HeadSize}} {
		if !imaging.AllZero(dst.B[r[0] : r[0]+r[1]]) {
			t.Fatalf("table region at %d not zero after a wrong checksum", r[0])
		}
	}
	if _, ok := imaging.HasPartitionTable(dst.B[:imaging.HeadSize]); ok {
		t.Fatal("a partition table is visible")
	}
}

// TestStreamHeadRefusal: Head's refusal comes back unchanged with nothing
// written, and Head sees the virtual disk's first MiB.
func TestStreamHeadRefusal(t *testing.T) {
	raw := imagingtest.Disk(t, 8<<20, 9)
	img, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	dst := imagingtest.NewMemTarget(int64(len(raw))+2<<20, 0xEE)
	no := errors.New("boot mode refused")
	var seen []byte
	_, err = streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{
		Head: func(h []byte, _ *qcow2.Info) error { seen = bytes.Clone(h); return no }})
	if !errors.Is(err, no) {
		t.Fatalf("err = %v", err)
	}
	if !bytes.Equal(seen, raw[:imaging.HeadSize]) {
		t.Fatal("Head did not get the virtual disk's first MiB")
	}
	if dst.Writes != 0 || dst.Zeroings != 0 {
		t.Fatalf("%d writes, %d zeroings before the head was accepted", dst.Writes, dst.Zeroings)
	}
}

// TestStreamRefusals: the header's refusals come before anything is
// written, as Check's do; a truncated stream is an error.
func TestStreamRefusals(t *testing.T) {
	raw := imagingtest.Disk(t, 4<<20, 11)
	img, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	poke := func(f func(b []byte)) []byte { b := bytes.Clone(img); f(b); return b }
	be := binary.BigEndian
	for _, c := range []struct {
		name string
		img  []byte
		size int64
	}{
		{"backing file", poke(func(b []byte) { be.PutUint64(b[8:], 512); be.PutUint32(b[16:], 4) }), 0},
		{"encrypted", poke(func(b []byte) { be.PutUint32(b[32:], 1) }), 0},
		{"L1 beyond the file", poke(func(b []byte) { be.PutUint64(b[40:], uint64(len(img))+1<<16) }), 0},
		{"huge L1", poke(func(b []byte) { be.PutUint32(b[36:], 1<<30) }), 0},
		{"cluster bits", poke(func(b []byte) { be.PutUint32(b[20:], 30) }), 0},
		{"external data file", poke(func(b []byte) { be.PutUint64(b[72:], 1<<2) }), 0},
		{"truncated", img[:len(img)-4096], int64(len(img))},
		{"L2 entry past the end", poke(func(b []byte) {
			info, _ := qcow2.ParseHeader(b)
			l2 := be.Uint64(b[info.L1Offset:]) & 0x00fffffffffffe00
			be.PutUint64(b[l2+8:], uint64(len(img))<<4) // an uncompressed cluster far away
		}), 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			size := c.size
			if size == 0 {
				size = int64(len(c.img))
			}
			dst := imagingtest.NewMemTarget(16<<20, 0xEE)
			_, err := streamDeploy(context.Background(), bytes.NewReader(c.img), size, dst, qcow2.StreamOptions{})
			if err == nil {
				t.Fatal("accepted")
			}
			if c.name == "truncated" {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.Is(err, qcow2.ErrRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			if _, cerr := qcow2.Check(bytes.NewReader(c.img), int64(len(c.img)), "", 16<<20); cerr == nil {
				t.Fatalf("Check accepts what Stream refused (%v)", err)
			}
			if dst.Writes != 0 {
				t.Fatalf("%d writes before the refusal", dst.Writes)
			}
		})
	}
}

// TestStreamMemoryBounded: streaming a qcow2 of 192 MiB virtual (about 140
// MiB of file) onto a file keeps the heap far below the image: nothing
// buffers the whole image (the bound is the hold limit, the look-behind
// and the writers' clusters, whatever the image's size).
func TestStreamMemoryBounded(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	dir := t.TempDir()
	const vsize = 192 << 20
	raw := dir + "/src.raw"
	mixedRaw(t, raw, vsize, 77)
	imgPath := dir + "/img.qcow2"
	testutil.Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, imgPath)
	f, err := os.Open(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	dst, _ := imagingtest.FileTarget(t, vsize+4<<20, 0, false)
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	base := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }()
	go func() {
		defer close(done)
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	res, err := streamDeploy(context.Background(), f, st.Size(), dst, qcow2.StreamOptions{Hash: sha256.New()})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	grew := int64(peak.Load()) - int64(base)
	t.Logf("%d-byte image streamed (look-behind peak %d): heap grew by %.1f MiB at most", st.Size(), res.LookBehindPeak, float64(grew)/(1<<20))
	if grew > 48<<20 || grew > st.Size()/2 {
		t.Errorf("the heap grew by %d bytes streaming a %d-byte image", grew, st.Size())
	}
	ref := dir + "/ref.raw"
	testutil.Run(t, "qemu-img", "convert", "-q", "-O", "raw", imgPath, ref)
	sameBytes(t, dst, ref, vsize)
}
