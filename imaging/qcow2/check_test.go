package qcow2_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testutil"
)

var be = binary.BigEndian

// baseImage is a qemu-img-made zlib-compressed v3 image (64 KiB clusters).
func baseImage(t *testing.T) []byte {
	t.Helper()
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	path, _ := makeQcow2(t, t.TempDir(), qcowCases[4])
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstCompressed returns the byte offset in img of the first compressed
// L2 entry and its host offset.
func firstCompressed(t *testing.T, img []byte) (entryOff, host int64) {
	t.Helper()
	cb := be.Uint32(img[20:])
	cs := int64(1) << cb
	l1Off := int64(be.Uint64(img[40:]))
	l1Size := int64(be.Uint32(img[36:]))
	x := 62 - (cb - 8)
	for i := int64(0); i < l1Size; i++ {
		l2 := int64(be.Uint64(img[l1Off+8*i:]) & 0x00fffffffffffe00)
		if l2 == 0 {
			continue
		}
		for j := int64(0); j < cs/8; j++ {
			e := be.Uint64(img[l2+8*j:])
			if e&(1<<62) != 0 {
				return l2 + 8*j, int64(e & (1<<x - 1))
			}
		}
	}
	t.Fatal("no compressed cluster")
	return 0, 0
}

// refusedUntouched converts img onto a target full of old data and wants
// an error containing want, fast, with the target unchanged.
func refusedUntouched(t *testing.T, img []byte, want string) error {
	t.Helper()
	dst := imagingtest.NewMemTarget(32<<20, 0xEE)
	before := dst.Sum()
	start := time.Now()
	err := deploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.ConvertOptions{})
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("refusal took %v", el)
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want an error containing %q", err, want)
	}
	if dst.Sum() != before || dst.Writes != 0 || dst.Zeroings != 0 {
		t.Fatalf("target touched by a refused image (%d writes, %d zeroings)", dst.Writes, dst.Zeroings)
	}
	// Check alone says the same.
	if _, cerr := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", 32<<20); cerr == nil || cerr.Error() != err.Error() {
		t.Fatalf("Check: %v, Convert: %v", cerr, err)
	}
	return err
}

func TestQcow2Hostile(t *testing.T) {
	base := baseImage(t)
	patch := func(f func(b []byte) []byte) []byte {
		return f(bytes.Clone(base))
	}
	put32 := func(off int, v uint32) []byte {
		return patch(func(b []byte) []byte { be.PutUint32(b[off:], v); return b })
	}
	put64 := func(off int, v uint64) []byte {
		return patch(func(b []byte) []byte { be.PutUint64(b[off:], v); return b })
	}
	fsize := uint64(len(base))
	cases := []struct {
		name string
		img  []byte
		want string
	}{
		{"l1-size-ffffffff", put32(36, 0xFFFFFFFF), "L1 table of 4294967295 entries is too large"},
		{"l1-larger-past-eof", put32(36, 4<<20-1), "L1 table at"},
		{"l1-too-small", put32(36, 0), "too small"},
		{"cluster-bits-63", put32(20, 63), "cluster_bits 63 is outside 9..21"},
		{"cluster-bits-8", put32(20, 8), "cluster_bits 8"},
		{"l1-offset-past-eof", put64(40, (fsize+1<<20)&^0xffff), "L1 table at"},
		{"l1-offset-unaligned", put64(40, 0x10001), "L1 table offset"},
		{"refcount-past-eof", put64(48, (fsize+1<<20)&^0xffff), "refcount table at"},
		{"snapshots-past-eof", patch(func(b []byte) []byte {
			be.PutUint32(b[60:], 1)
			be.PutUint64(b[64:], (fsize+1<<20)&^0xffff)
			return b
		}), "snapshot table at"},
		{"encrypted", put32(32, 2), "encrypted"},
		{"version-4", put32(4, 4), "version 4"},
		{"version-1", put32(4, 1), "version 1"},
		{"virtual-size-0", put64(24, 0), "virtual size is 0"},
		{"virtual-size-absurd", put64(24, 1<<62), "absurd"},
		{"corrupt-bit", put64(72, 1<<1), "corrupt"},
		{"external-data-bit", put64(72, 1<<2), "external data file"},
		{"unknown-incompatible", put64(72, 1<<40), "unknown incompatible features"},
		{"compression-type-7", patch(func(b []byte) []byte { b[104] = 7; return b }), "unknown compression type 7"},
		{"header-length-odd", put32(100, 105), "header length 105"},
		{"no-magic", put32(0, 0x12345678), "not a qcow2 image"},
		{"l2-past-eof", patch(func(b []byte) []byte {
			l1 := be.Uint64(b[40:])
			be.PutUint64(b[l1:], (fsize+4<<20)&^0xffff|1<<63)
			return b
		}), "L2 table at"},
		{"compressed-past-eof", patch(func(b []byte) []byte {
			e, _ := firstCompressed(t, b)
			// Host offset just before EOF, 100 more sectors.
			x := uint(62 - (16 - 8))
			be.PutUint64(b[e:], 1<<62|100<<x|(fsize-100))
			return b
		}), "compressed cluster at"},
		{"truncated", base[:len(base)/2], "past the end of the file"},
		{"truncated-header", base[:50], "too short"},
		{"extension-data-file", patch(func(b []byte) []byte {
			hl := be.Uint32(b[100:])
			// Replace the extension area with an external data file name.
			copy(b[hl:], make([]byte, 64))
			be.PutUint32(b[hl:], 0x44415441)
			be.PutUint32(b[hl+4:], 9)
			copy(b[hl+8:], "/dev/sda1")
			return b
		}), "external data file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := refusedUntouched(t, c.img, c.want)
			if c.name != "truncated-header" && !errors.Is(err, qcow2.ErrRefused) {
				t.Errorf("%v does not match ErrRefused", err)
			}
		})
	}
	t.Run("larger-than-target", func(t *testing.T) {
		dst := imagingtest.NewMemTarget(8<<20, 0xEE)
		before := dst.Sum()
		err := deploy(context.Background(), bytes.NewReader(base), int64(len(base)), dst, qcow2.ConvertOptions{})
		var se *imaging.SizeError
		if !errors.As(err, &se) || se.ImageSize != 16<<20 || se.TargetSize != 8<<20 {
			t.Fatalf("got %v, want a SizeError", err)
		}
		if dst.Sum() != before {
			t.Fatal("target touched")
		}
		_, err = qcow2.Check(bytes.NewReader(base), int64(len(base)), "/dev/sdb", 8<<20)
		if want := "image of 16777216 bytes does not fit /dev/sdb (8388608 bytes)"; err == nil || err.Error() != want {
			t.Fatalf("got %v, want %q", err, want)
		}
	})
}

// TestQcow2BackingFileNeverOpened: images naming a local file (a secret,
// and a fifo that would block whoever opens it) are refused without the
// file being opened, and nothing of it reaches the target.
func TestQcow2BackingFileNeverOpened(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret.raw")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("TOPSECRET-"), 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, backing := range []string{secret, fifo, "secret.raw"} {
		t.Run(filepath.Base(backing), func(t *testing.T) {
			img := filepath.Join(dir, "img-"+filepath.Base(backing)+".qcow2")
			testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", img, "10M")
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			dst := imagingtest.NewMemTarget(32<<20, 0xEE)
			go func() {
				// Through an *os.File too: go-qcow2reader resolves relative
				// names against Name().
				f, err := os.Open(img)
				if err != nil {
					done <- err
					return
				}
				defer f.Close()
				done <- deploy(context.Background(), f, int64(len(b)), dst, qcow2.ConvertOptions{})
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "backing file") || !errors.Is(err, qcow2.ErrRefused) {
					t.Fatalf("got %v, want a backing file refusal", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("conversion blocked: the backing fifo was opened")
			}
			if bytes.Contains(dst.B, []byte("TOPSECRET")) || dst.Writes != 0 || dst.Zeroings != 0 {
				t.Fatal("target touched")
			}
		})
	}
}

// TestQcow2CorruptCompressedWipes: a compressed cluster whose data is
// garbage is found only while converting: the target is left without a
// partition table and the error says why.
func TestQcow2CorruptCompressedWipes(t *testing.T) {
	img := baseImage(t)
	_, host := firstCompressed(t, img)
	for i := host; i < host+64; i++ {
		img[i] = 0xFF
	}
	dst := imagingtest.NewMemTarget(20<<20, 0xEE)
	copy(dst.B[510:], []byte{0x55, 0xAA})
	copy(dst.B[512:], "EFI PART")
	err := deploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.ConvertOptions{})
	var we *imaging.WriteError
	if !errors.As(err, &we) || !errors.Is(err, qcow2.ErrRefused) || !strings.HasPrefix(err.Error(), "write the qcow2 image: qcow2 image refused") {
		t.Fatalf("got %v, want a WriteError about the corrupt image", err)
	}
	t.Log(err)
	if _, ok := imaging.HasPartitionTable(dst.B[:imaging.HeadSize]); ok {
		t.Fatal("partition table left after a failed conversion")
	}
	if !bytes.Equal(dst.B[len(dst.B)-imaging.HeadSize:], make([]byte, imaging.HeadSize)) {
		t.Fatal("last MiB not wiped")
	}
}

// TestQcow2SourceBounds: reads past the staged size fail, and the backing
// file fields read as zeros.
func TestQcow2PastEOFDuringConversion(t *testing.T) {
	// A data cluster past EOF that Check would refuse is caught by the
	// bounded reader too: check via a source that shrinks after the check.
	img := baseImage(t)
	src := &shrinking{b: img}
	dst := imagingtest.NewMemTarget(20<<20, 0xEE)
	err := deploy(context.Background(), src, int64(len(img)), dst, qcow2.ConvertOptions{})
	var we *imaging.WriteError
	if !errors.As(err, &we) || errors.Is(err, qcow2.ErrRefused) || !strings.Contains(err.Error(), "read staged image") {
		t.Fatalf("got %v, want a WriteError about reading the staged image", err)
	}
	t.Log(err)
	if _, ok := imaging.HasPartitionTable(dst.B[:imaging.HeadSize]); ok {
		t.Fatal("partition table left")
	}
}

// shrinking serves the whole image for the checks (the first reads), then
// fails every read past its first 256 KiB, as if the staged bytes changed.
type shrinking struct {
	b     []byte
	reads atomic.Int64 // the converter reads from several goroutines
}

func (s *shrinking) ReadAt(p []byte, off int64) (int, error) {
	if s.reads.Add(1) > 40 && off+int64(len(p)) > 256<<10 {
		return 0, errors.New("gone")
	}
	return bytes.NewReader(s.b).ReadAt(p, off)
}

// TestQcow2ShrunkImage: after `qemu-img resize --shrink` the L1 table is
// larger than the virtual size needs; such an image is accepted.
func TestQcow2ShrunkImage(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "s.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "64M")
	testutil.Run(t, "qemu-io", "-c", "write -P 0x11 1M 64k", "-c", "write -P 0x22 40M 64k", img)
	testutil.Run(t, "qemu-img", "resize", "-q", "--shrink", img, "20M")
	ref := filepath.Join(dir, "ref.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", img, ref)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if l1 := be.Uint32(b[36:]); l1 <= 10 { // 20 MiB needs 10 entries with 4 KiB clusters
		t.Fatalf("L1 size %d: qemu-img did not keep the larger table", l1)
	}
	dst := imagingtest.NewMemTarget(24<<20, 0xEE)
	if err := deploy(context.Background(), bytes.NewReader(b), int64(len(b)), dst, qcow2.ConvertOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, dst, ref, 20<<20)
}

// TestQcow2DirtyAcceptedWarningRouted: a dirty image (not closed cleanly)
// is converted, and go-qcow2reader's warning about it reaches our logger.
func TestQcow2DirtyAcceptedWarningRouted(t *testing.T) {
	img := baseImage(t)
	be.PutUint64(img[72:], be.Uint64(img[72:])|1) // dirty bit
	var logged bytes.Buffer
	qcow2.RouteWarnings(slog.New(slog.NewTextHandler(&logged, nil)))
	defer qcow2.RouteWarnings(nil)
	info, err := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", 0)
	if err != nil || !info.Dirty {
		t.Fatalf("dirty image: %+v, %v", info, err)
	}
	dst := imagingtest.NewMemTarget(16<<20, 0xEE)
	if err := deploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.ConvertOptions{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "dirty bit") || !strings.Contains(logged.String(), "level=WARN") {
		t.Fatalf("warning not routed: %q", logged.String())
	}
}
