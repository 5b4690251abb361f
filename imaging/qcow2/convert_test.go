package qcow2_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testutil"
)

// qcowCase is one image the test builds with qemu-img/qemu-io.
type qcowCase struct {
	name     string
	size     int64  // virtual size
	opts     string // qemu-img -o options
	compress string // "", "zlib", "zstd"
	zeroes   bool   // qemu-io write -z over some data (v3 only)
}

var qcowCases = []qcowCase{
	{name: "v2-64k", size: 16 << 20, opts: "compat=0.10,cluster_size=65536"},
	{name: "v3-512", size: 8 << 20, opts: "compat=1.1,cluster_size=512", zeroes: true},
	{name: "v3-64k-zero", size: 16 << 20, opts: "compat=1.1,cluster_size=65536", zeroes: true},
	{name: "v3-2m", size: 32 << 20, opts: "compat=1.1,cluster_size=2097152", zeroes: true},
	{name: "v3-zlib-64k", size: 16 << 20, opts: "compat=1.1,cluster_size=65536", compress: "zlib", zeroes: true},
	{name: "v3-zstd-64k", size: 16 << 20, opts: "compat=1.1,cluster_size=65536,compression_type=zstd", compress: "zstd", zeroes: true},
	{name: "v3-zstd-2m", size: 32 << 20, opts: "compat=1.1,cluster_size=2097152,compression_type=zstd", compress: "zstd"},
	{name: "v3-zlib-512", size: 8 << 20, opts: "compat=1.1,cluster_size=512", compress: "zlib"},
	{name: "v2-zlib-64k", size: 16 << 20, opts: "compat=0.10,cluster_size=65536", compress: "zlib"},
	{name: "v3-extl2", size: 16 << 20, opts: "compat=1.1,cluster_size=65536,extended_l2=on", zeroes: true},
	{name: "v3-extl2-zstd", size: 16 << 20, opts: "compat=1.1,cluster_size=131072,extended_l2=on,compression_type=zstd", compress: "zstd"},
	{name: "v3-odd-size", size: 16<<20 + 3*512, opts: "compat=1.1,cluster_size=65536", zeroes: true},
	{name: "v3-odd-size-zlib", size: 12<<20 + 7*512, opts: "compat=1.1,cluster_size=65536", compress: "zlib"},
	// 4 KiB clusters: an L2 table per 2 MiB, written by qemu-img convert
	// between the compressed clusters (some before the table mapping them).
	{name: "v3-zlib-4k", size: 24 << 20, opts: "compat=1.1,cluster_size=4096", compress: "zlib", zeroes: true},
	{name: "v3-zstd-4k", size: 24 << 20, opts: "compat=1.1,cluster_size=4096,compression_type=zstd", compress: "zstd"},
}

// mixedRaw writes a raw image of size bytes: random blocks, text, zero
// runs, unwritten holes, and data in the very last bytes.
func mixedRaw(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 42))
	text := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog 0123456789\n", 1200))
	for off := int64(0); off < size; {
		n := int64(4096 * (1 + rng.IntN(96)))
		n = min(n, size-off)
		buf := make([]byte, n)
		switch rng.IntN(4) {
		case 0: // random
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		case 1: // text
			copy(buf, text)
		case 2: // explicit zeros (allocated zeros in raw → zero data in qcow2)
		case 3: // hole
			off += n
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	// Data in the first sector (a fake MBR) and in the very last bytes.
	if _, err := f.WriteAt([]byte("BOOTSECTOR-DATA"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("LAST-BYTES!"), size-11); err != nil {
		t.Fatal(err)
	}
}

// makeQcow2 builds the case's image in dir and returns its path and the
// reference raw image qemu-img makes of it.
func makeQcow2(t testing.TB, dir string, c qcowCase) (img, ref string) {
	t.Helper()
	raw := filepath.Join(dir, "src.raw")
	mixedRaw(t, raw, c.size, uint64(len(c.name)))
	img = filepath.Join(dir, "img.qcow2")
	args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2", "-o", c.opts}
	if c.compress != "" {
		args = append(args, "-c")
	}
	testutil.Run(t, "qemu-img", append(args, raw, img)...)
	if c.zeroes {
		// Zero clusters over data, and a range that is unallocated.
		testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -z 1M 1M", "-c", "write -z 3M 128k",
			"-c", "discard 5M 1M", "-c", "write -P 0x5a "+strconv.FormatInt(c.size-512, 10)+" 512", img)
	}
	ref = filepath.Join(dir, "ref.raw")
	testutil.Run(t, "qemu-img", "convert", "-q", "-O", "raw", img, ref)
	return img, ref
}

// filledFile makes a file of size bytes full of 0xEE: old data the
// conversion must overwrite or zero.
func filledFile(t testing.TB, size int64) string {
	t.Helper()
	p := testutil.SparseFile(t, size)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{0xEE}, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func sameBytes(t testing.TB, got io.ReaderAt, ref string, n int64) {
	t.Helper()
	want, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(want)) != n {
		t.Fatalf("reference is %d bytes, want %d", len(want), n)
	}
	buf := make([]byte, n)
	if _, err := got.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, want) {
		for i := range buf {
			if buf[i] != want[i] {
				t.Fatalf("target differs from qemu-img convert at byte %d: %#x, want %#x", i, buf[i], want[i])
			}
		}
	}
}

func convertFile(t testing.TB, img string, dst imaging.Target) error {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return deploy(context.Background(), src, st.Size(), dst, qcow2.ConvertOptions{
		Workers: 3, ChunkSize: 1 << 20, Logger: testutil.Logger(t),
	})
}

func TestConvertQcow2Matrix(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	qcow2.RegisterDecompressors()
	for _, c := range qcowCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			img, ref := makeQcow2(t, dir, c)
			if c.compress != "" {
				b, err := os.ReadFile(img)
				if err != nil {
					t.Fatal(err)
				}
				info, err := qcow2.Check(bytes.NewReader(b), int64(len(b)), "", 0)
				if err != nil {
					t.Fatal(err)
				}
				if info.Compression != c.compress || info.CompressedClusters == 0 {
					t.Fatalf("image has %d compressed clusters (%s), want %s", info.CompressedClusters, info.Compression, c.compress)
				}
			}
			for _, loop := range []bool{false, true} {
				name := "file"
				if loop {
					name = "loop"
				}
				t.Run(name, func(t *testing.T) {
					tsize := (c.size + 3<<20) / 4096 * 4096
					path := filledFile(t, tsize)
					if loop {
						path = testutil.LoopDevice(t, path, 0)
					}
					d, err := blockdev.Open(path, blockdev.OpenOptions{})
					if err != nil {
						t.Fatal(err)
					}
					defer d.Close()
					if err := convertFile(t, img, d); err != nil {
						t.Fatal(err)
					}
					sameBytes(t, d, ref, c.size)
					// The last MiB of the target (old backup GPT) is cleared.
					last := make([]byte, imaging.HeadSize)
					if _, err := d.ReadAt(last, tsize-imaging.HeadSize); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(last, make([]byte, len(last))) {
						t.Fatal("last MiB of the target still holds old data")
					}
				})
			}
		})
	}
}

func TestConvertQcow2WriteErrorWipes(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	c := qcowCases[2]
	img, _ := makeQcow2(t, t.TempDir(), c)
	dst := imagingtest.NewMemTarget(c.size+2<<20, 0xEE)
	copy(dst.B[510:], []byte{0x55, 0xAA}) // an old MBR signature
	dst.FailAt = 8 << 20
	err := convertFile(t, img, dst)
	var we *imaging.WriteError
	if !errors.As(err, &we) || we.Format != "qcow2" || !strings.HasPrefix(err.Error(), "write the qcow2 image: ") {
		t.Fatalf("got %v, want a qcow2 WriteError", err)
	}
	if !strings.Contains(err.Error(), "injected I/O error") {
		t.Fatalf("cause missing: %v", err)
	}
	if !bytes.Equal(dst.B[:imaging.HeadSize], make([]byte, imaging.HeadSize)) {
		t.Fatal("head not wiped after a failed conversion")
	}
}

func TestConvertQcow2Cancel(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	c := qcowCases[4]
	img, _ := makeQcow2(t, t.TempDir(), c)
	src, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	dst := imagingtest.NewMemTarget(c.size+2<<20, 0xEE)
	ctx, cancel := context.WithCancel(context.Background())
	err = deploy(ctx, bytes.NewReader(src), int64(len(src)), dst, qcow2.ConvertOptions{
		ChunkSize: 64 << 10, Workers: 2,
		Progress: func(done, total int64) {
			if done > total/4 {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if !bytes.Equal(dst.B[:imaging.HeadSize], make([]byte, imaging.HeadSize)) {
		t.Fatal("head not wiped after a cancelled conversion")
	}
}

func TestConvertQcow2Progress(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-io")
	c := qcowCases[5]
	img, ref := makeQcow2(t, t.TempDir(), c)
	src, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	dst := imagingtest.NewMemTarget(c.size, 0xEE) // exactly the virtual size
	var last, calls int64
	err = deploy(context.Background(), bytes.NewReader(src), int64(len(src)), dst, qcow2.ConvertOptions{
		Progress: func(done, total int64) {
			if total != c.size || done < last {
				t.Errorf("progress %d/%d after %d", done, total, last)
			}
			last = done
			calls++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != c.size || calls < 2 {
		t.Fatalf("progress ended at %d after %d calls, want %d", last, calls, c.size)
	}
	sameBytes(t, dst, ref, c.size)
}
