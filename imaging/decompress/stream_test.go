package decompress_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/decompress"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/internal/testutil"
)

// compressWith runs a compressor command (a shell line reading $IN, writing to
// stdout) and returns its output. The real tools are the judges.
func compressWith(t *testing.T, in []byte, tool, line string) []byte {
	t.Helper()
	testutil.RequireCommand(t, tool, "sh")
	dir := t.TempDir()
	p := filepath.Join(dir, "in")
	if err := os.WriteFile(p, in, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", line)
	cmd.Env = append(os.Environ(), "IN="+p)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v: %s", line, err, errb.String())
	}
	return out.Bytes()
}

// decompressAll runs Stream over b, handing it a head of headLen
// bytes and the rest in small pieces, and reads the result to its end.
func decompressAll(b []byte, headLen int) ([]byte, imaging.Format, error) {
	headLen = min(headLen, len(b))
	rc, f, err := decompress.Stream(b[:headLen], testutil.ChunkyReader{R: bytes.NewReader(b[headLen:])})
	if err != nil {
		return nil, f, err
	}
	defer rc.Close()
	out, err := io.ReadAll(rc)
	return out, f, err
}

// TestDecompressStreamTools: every compressor's real tool output, with
// multiple members, frames, streams and blocks, decompresses to the exact
// image, whatever the head handed over.
func TestDecompressStreamTools(t *testing.T) {
	img := imagingtest.Disk(t, 8*imagingtest.MiB, 11)
	cases := []struct {
		name, tool, line string
		want             imaging.Format
	}{
		{"gzip", "gzip", `gzip -c "$IN"`, imaging.FormatGzip},
		{"gzip-1", "gzip", `gzip -1 -c "$IN"`, imaging.FormatGzip},
		{"gzip-multi-member", "gzip", `head -c 3000000 "$IN" | gzip -c; tail -c +3000001 "$IN" | gzip -9 -c`, imaging.FormatGzip},
		{"zstd", "zstd", `zstd -q -c "$IN"`, imaging.FormatZstd},
		{"zstd-19-stdin", "zstd", `zstd -q -19 -c < "$IN"`, imaging.FormatZstd},
		{"zstd-multi-frame", "zstd", `head -c 5000000 "$IN" | zstd -q -c; tail -c +5000001 "$IN" | zstd -q -3 -c`, imaging.FormatZstd},
		{"zstd-threads", "zstd", `zstd -q -T2 -B1048576 -c < "$IN"`, imaging.FormatZstd},
		{"zstd-long26", "zstd", `zstd -q --long=26 -c < "$IN"`, imaging.FormatZstd},
		{"xz", "xz", `xz -c "$IN"`, imaging.FormatXz},
		{"xz-9e-sha256", "xz", `xz -9e --check=sha256 -c "$IN"`, imaging.FormatXz},
		{"xz-crc32-none", "xz", `xz -1 --check=none -c "$IN"`, imaging.FormatXz},
		{"xz-multi-block", "xz", `xz -T2 --block-size=1MiB -c "$IN"`, imaging.FormatXz},
		{"xz-multi-stream", "xz", `head -c 1000000 "$IN" | xz -c; tail -c +1000001 "$IN" | xz -3 --check=crc32 -c`, imaging.FormatXz},
		{"bzip2", "bzip2", `bzip2 -c "$IN"`, imaging.FormatBzip2},
		{"bzip2-concatenated", "bzip2", `head -c 2000000 "$IN" | bzip2 -c; tail -c +2000001 "$IN" | bzip2 -1 -c`, imaging.FormatBzip2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			comp := compressWith(t, img, c.tool, c.line)
			for _, headLen := range []int{8, 512, imaging.HeadSize} {
				got, f, err := decompressAll(comp, headLen)
				if err != nil {
					t.Fatalf("head %d: %v", headLen, err)
				}
				if f != c.want {
					t.Errorf("format %q, want %q", f, c.want)
				}
				if !bytes.Equal(got, img) {
					t.Fatalf("head %d: %d bytes decompressed, differ from the %d bytes of the image", headLen, len(got), len(img))
				}
			}
		})
	}
}

// TestDecompressStreamUncompressed: a raw image passes unchanged.
func TestDecompressStreamUncompressed(t *testing.T) {
	img := imagingtest.Disk(t, 4*imagingtest.MiB, 12)
	got, f, err := decompressAll(img, imaging.HeadSize)
	if err != nil || f != "" || !bytes.Equal(got, img) {
		t.Fatalf("format %q, %v, equal %v", f, err, bytes.Equal(got, img))
	}
}

// TestDecompressStreamRefused: nested compression, truncation at many
// points, corruption, data after the stream and the memory bounds are
// errors, never a short image that reads as complete.
func TestDecompressStreamRefused(t *testing.T) {
	img := imagingtest.Disk(t, 6*imagingtest.MiB, 13)
	comp := map[string][]byte{
		"gzip":  compressWith(t, img, "gzip", `gzip -c "$IN"`),
		"zstd":  compressWith(t, img, "zstd", `zstd -q -c < "$IN"`),
		"xz":    compressWith(t, img, "xz", `xz -c "$IN"`),
		"bzip2": compressWith(t, img, "bzip2", `bzip2 -c "$IN"`),
	}
	t.Run("nested", func(t *testing.T) {
		for outer, line := range map[string]string{"gzip": `gzip -c`, "zstd": `zstd -q -c`, "xz": `xz -c`, "bzip2": `bzip2 -c`} {
			for inner, b := range comp {
				nested := compressWith(t, b, outer, line+` < "$IN"`)
				_, _, err := decompress.Stream(nested[:min(len(nested), 4096)], bytes.NewReader(nested[min(len(nested), 4096):]))
				var ce *decompress.Error
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), "holds "+inner+" data") {
					t.Errorf("%s in %s: %v", inner, outer, err)
				}
			}
		}
	})
	for name, b := range comp {
		t.Run("truncated/"+name, func(t *testing.T) {
			for _, cut := range []int{10, 100, len(b) / 3, len(b) / 2, len(b) - 100, len(b) - 9, len(b) - 1} {
				got, _, err := decompressAll(b[:cut], 4096)
				if err == nil {
					t.Fatalf("cut at %d of %d: %d bytes and no error", cut, len(b), len(got))
				}
				var ce *decompress.Error
				if !errors.As(err, &ce) {
					t.Errorf("cut at %d: error %v is not a Error", cut, err)
				}
				if cut > 200 && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Logf("cut at %d: %v (not io.ErrUnexpectedEOF)", cut, err)
				}
			}
		})
		t.Run("corrupt/"+name, func(t *testing.T) {
			bad := bytes.Clone(b)
			for i := len(bad) / 2; i < len(bad)/2+64; i++ {
				bad[i] ^= 0x5A
			}
			if _, _, err := decompressAll(bad, 4096); err == nil {
				t.Fatal("corrupt stream decompressed")
			}
		})
		t.Run("trailing/"+name, func(t *testing.T) {
			if _, _, err := decompressAll(append(bytes.Clone(b), "garbage after the stream"...), 4096); err == nil {
				t.Fatal("data after the stream accepted")
			}
		})
		t.Run("source-error/"+name, func(t *testing.T) {
			errNet := errors.New("connection reset by peer")
			rc, _, err := decompress.Stream(b[:4096], io.MultiReader(bytes.NewReader(b[4096:len(b)/2]), errReader{errNet}))
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			if err != errNet {
				t.Fatalf("error %v, want the source's error unchanged", err)
			}
		})
	}
	t.Run("xz-dictionary", func(t *testing.T) {
		b := compressWith(t, img[:1<<20], "xz", `xz --lzma2=preset=1,dict=128MiB -c "$IN"`)
		_, _, err := decompressAll(b, 4096)
		if err == nil || !strings.Contains(err.Error(), "dictionary of 128 MiB is larger than 64 MiB") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("zstd-window", func(t *testing.T) {
		b := compressWith(t, img[:1<<20], "zstd", `zstd -q --long=27 -c < "$IN"`)
		_, _, err := decompressAll(b, 4096)
		if err == nil || !strings.Contains(err.Error(), "window") {
			t.Fatalf("error %v", err)
		}
	})
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestDecompressStreamWriteRaw: what the lead wires up, a compressed raw
// image through Stream into WriteRaw, on a loop device that held
// 0xFF everywhere.
func TestDecompressStreamWriteRaw(t *testing.T) {
	img := imagingtest.Disk(t, 8*imagingtest.MiB, 14)
	comp := compressWith(t, img, "zstd", `zstd -q -c < "$IN"`)
	for _, loop := range []bool{false, true} {
		t.Run(map[bool]string{false: "file", true: "loop"}[loop], func(t *testing.T) {
			dst, path := imagingtest.FileTarget(t, 12*imagingtest.MiB, 0xFF, loop)
			head := comp[:imaging.HeadSize/64]
			rc, f, err := decompress.Stream(head, bytes.NewReader(comp[len(head):]))
			if err != nil || f != imaging.FormatZstd {
				t.Fatal(f, err)
			}
			defer rc.Close()
			h := sha256.New()
			if _, err := imaging.WriteRaw(t.Context(), io.TeeReader(bytes.NewReader(comp), io.Discard), dst, imaging.RawOptions{}); err == nil {
				t.Fatal("WriteRaw accepted zstd data as raw")
			}
			res, err := imaging.WriteRaw(t.Context(), rc, dst, imaging.RawOptions{Hash: h})
			if err != nil {
				t.Fatal(err)
			}
			if res.Written != int64(len(img)) || res.Table != "gpt" {
				t.Errorf("result %+v", res)
			}
			if err := dst.Close(); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ReadAt(t, path, 0, int64(len(img))); !bytes.Equal(got, img) {
				t.Fatal("target differs from the image")
			}
		})
	}
}

// stallingReader gives its first part, then blocks until released, then
// gives the rest.
type stallingReader struct {
	first, rest *bytes.Reader
	stalled     chan struct{} // closed when a Read blocks
	release     chan struct{}
	once        bool
}

func (s *stallingReader) Read(p []byte) (int, error) {
	if s.first.Len() > 0 {
		return s.first.Read(p)
	}
	if !s.once {
		s.once = true
		close(s.stalled)
		<-s.release
	}
	return s.rest.Read(p)
}

// TestDecompressStreamCloseDuringRead: a streaming writer does not wait for
// its reader after a failure, so Close comes while a Read is blocked in the
// source. The decoder (zstd's has goroutines and state that Close tears
// down) must not be closed under that Read: the Read ends with an error,
// no panic, no race (go test -race).
func TestDecompressStreamCloseDuringRead(t *testing.T) {
	img := make([]byte, 2<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range img {
		img[i] = byte(rng.IntN(16)) // compresses to about half
	}
	copy(img[510:], []byte{0x55, 0xaa})
	for _, c := range []struct{ tool, line string }{
		{"zstd", `zstd -q -c -3 "$IN"`},
		{"gzip", `gzip -c "$IN"`},
		{"xz", `xz -c -T1 "$IN"`},
		{"bzip2", `bzip2 -c "$IN"`},
	} {
		t.Run(c.tool, func(t *testing.T) {
			comp := compressWith(t, img, c.tool, c.line)
			head := comp[:len(comp)/8]
			split := len(comp) / 2
			src := &stallingReader{first: bytes.NewReader(comp[len(head):split]), rest: bytes.NewReader(comp[split:]),
				stalled: make(chan struct{}), release: make(chan struct{})}
			dz, _, err := decompress.Stream(head, src)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, dz)
				done <- err
			}()
			<-src.stalled
			if err := dz.Close(); err != nil {
				t.Fatal(err)
			}
			close(src.release)
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("reading on after Close ended without an error")
				}
			case <-time.After(time.Minute):
				t.Fatal("the Read blocked when Close came never returned")
			}
			if n, err := dz.Read(make([]byte, 10)); n != 0 || err == nil {
				t.Fatalf("Read after Close: %d, %v", n, err)
			}
		})
	}
}
