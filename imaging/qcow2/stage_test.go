package qcow2_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testutil"
)

const stageMiB = 1 << 20

// onlyReader hides bytes.Reader's other methods: a stream.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func memAvail(n int64) func() (int64, error) {
	return func() (int64, error) { return n, nil }
}

func alignMiB(n int64) int64 { return (n + stageMiB - 1) / stageMiB * stageMiB }

// stageImage is a qemu-img-made zlib image, its bytes and its reference.
func stageImage(t *testing.T) (c qcowCase, img []byte, ref string) {
	t.Helper()
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	c = qcowCases[4]
	path, ref := makeQcow2(t, t.TempDir(), c)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return c, img, ref
}

func stageAll(t *testing.T, img []byte, opts qcow2.StageOptions) (qcow2.Staged, error) {
	t.Helper()
	h := sha256.New()
	opts.Hash = h
	opts.Logger = testutil.Logger(t)
	s, err := qcow2.Stage(context.Background(), onlyReader{bytes.NewReader(img)}, opts)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { s.Close() })
	if s.Size() != int64(len(img)) {
		t.Fatalf("staged %d bytes, want %d", s.Size(), len(img))
	}
	got := make([]byte, len(img))
	if n, err := s.ReadAt(got, 0); n != len(img) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("read staged: %d, %v", n, err)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("staged bytes differ")
	}
	if want := sha256.Sum256(img); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("hash of the staged stream differs")
	}
	return s, nil
}

func TestStageMemory(t *testing.T) {
	_, img, _ := stageImage(t)
	for _, declared := range []int64{int64(len(img)), -1} {
		s, err := stageAll(t, img, qcow2.StageOptions{DeclaredSize: declared, MemAvailable: memAvail(4 << 30)})
		if err != nil {
			t.Fatal(err)
		}
		if s.Where() != "memory" {
			t.Fatalf("declared %d: staged in %s, want memory", declared, s.Where())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil { // idempotent
			t.Fatal(err)
		}
	}
}

// TestStageTailThenConvert stages on the tail of a target just big enough
// (the staged bytes end where its last MiB, which staging never uses,
// begins), then converts from there: the tail must survive until it was
// read.
func TestStageTailThenConvert(t *testing.T) {
	c, img, ref := stageImage(t)
	tsize := alignMiB(c.size) + alignMiB(int64(len(img))) + imaging.HeadSize
	for _, loop := range []bool{false, true} {
		t.Run(map[bool]string{false: "file", true: "loop"}[loop], func(t *testing.T) {
			path := filledFile(t, tsize)
			if loop {
				path = testutil.LoopDevice(t, path, 0)
			}
			d, err := blockdev.Open(path, blockdev.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for _, declared := range []int64{int64(len(img)), -1} {
				// Memory budget: 2 MiB, less than the image: a stream of
				// unknown size starts in memory and moves to the tail.
				s, err := stageAll(t, img, qcow2.StageOptions{
					DeclaredSize: declared, MemAvailable: memAvail(3 * stageMiB), MemoryReserve: stageMiB, Target: d,
				})
				if err != nil {
					t.Fatal(err)
				}
				if want := "disk tail at offset " + strconv.FormatInt(alignMiB(c.size), 10); s.Where() != want {
					t.Fatalf("staged in %q, want %q", s.Where(), want)
				}
			}
			s, err := stageAll(t, img, qcow2.StageOptions{DeclaredSize: int64(len(img)), MemAvailable: memAvail(0), Target: d})
			if err != nil {
				t.Fatal(err)
			}
			if err := deploy(context.Background(), s, s.Size(), d, qcow2.ConvertOptions{Logger: testutil.Logger(t)}); err != nil {
				t.Fatal(err)
			}
			sameBytes(t, d, ref, c.size)
			last := make([]byte, imaging.HeadSize)
			if _, err := d.ReadAt(last, tsize-imaging.HeadSize); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(last, make([]byte, len(last))) {
				t.Fatal("last MiB not cleared after converting from the tail")
			}
		})
	}
}

// TestStageTailFailureWipes: a failed conversion from the tail still
// leaves no partition table anywhere.
func TestStageTailFailureWipes(t *testing.T) {
	c, img, _ := stageImage(t)
	tsize := alignMiB(c.size) + alignMiB(int64(len(img))) + imaging.HeadSize
	dst := imagingtest.NewMemTarget(tsize, 0xEE)
	copy(dst.B[510:], []byte{0x55, 0xAA})
	s, err := stageAll(t, img, qcow2.StageOptions{DeclaredSize: int64(len(img)), MemAvailable: memAvail(0), Target: dst})
	if err != nil {
		t.Fatal(err)
	}
	dst.FailAt = c.size / 2
	err = deploy(context.Background(), s, s.Size(), dst, qcow2.ConvertOptions{})
	var we *imaging.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("got %v, want a WriteError", err)
	}
	if !bytes.Equal(dst.B[:imaging.HeadSize], make([]byte, imaging.HeadSize)) ||
		!bytes.Equal(dst.B[tsize-imaging.HeadSize:], make([]byte, imaging.HeadSize)) {
		t.Fatal("head or last MiB not wiped")
	}
}

func TestStageDir(t *testing.T) {
	_, img, _ := stageImage(t)
	dir := t.TempDir()
	small := imagingtest.NewMemTarget(8*stageMiB, 0) // too small for the tail
	for _, declared := range []int64{int64(len(img)), -1} {
		s, err := stageAll(t, img, qcow2.StageOptions{
			DeclaredSize: declared, MemAvailable: memAvail(2 * stageMiB), MemoryReserve: stageMiB,
			Target: small, StagingDir: dir,
		})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s.Where(), "dir "+dir) {
			t.Fatalf("staged in %q, want dir %s", s.Where(), dir)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("staging file visible in %s: %v", dir, ents)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStageTooBig(t *testing.T) {
	_, img, _ := stageImage(t)
	small := imagingtest.NewMemTarget(8*stageMiB, 0)
	before := small.Sum()
	for _, declared := range []int64{int64(len(img)), -1} {
		_, err := stageAll(t, img, qcow2.StageOptions{
			DeclaredSize: declared, MemAvailable: memAvail(2 * stageMiB), MemoryReserve: stageMiB, Target: small,
		})
		var tb *qcow2.TooBigError
		// Its customer text is OVH's "Could not download, qcow2 image is too
		// big to download in memory." (agent's TestErrorTable).
		if !errors.As(err, &tb) || tb.Size <= 0 || (declared > 0 && tb.Size != declared) {
			t.Fatalf("declared %d: got %v, want TooBigError", declared, err)
		}
	}
	if small.Sum() != before {
		t.Fatal("target written although the image could not be staged")
	}
}

func TestStageShortStream(t *testing.T) {
	_, img, _ := stageImage(t)
	_, err := qcow2.Stage(context.Background(), bytes.NewReader(img[:len(img)-100]), qcow2.StageOptions{
		DeclaredSize: int64(len(img)), MemAvailable: memAvail(4 << 30),
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want ErrUnexpectedEOF", err)
	}
	_, err = qcow2.Stage(context.Background(), bytes.NewReader(img), qcow2.StageOptions{
		DeclaredSize: int64(len(img)) - 100, MemAvailable: memAvail(4 << 30),
	})
	if err == nil {
		t.Fatal("a stream longer than declared was accepted")
	}
}

// TestStageDefaultMemAvailable: without an injected MemAvailable,
// /proc/meminfo decides; a small image fits in memory on any test machine.
func TestStageDefaultMemAvailable(t *testing.T) {
	_, img, _ := stageImage(t)
	s, err := stageAll(t, img, qcow2.StageOptions{DeclaredSize: -1, MemoryReserve: -1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Where() != "memory" {
		t.Fatalf("staged in %s, want memory", s.Where())
	}
}
