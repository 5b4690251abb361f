package imaging

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// rawTestImage builds a GPT disk image of size bytes with sgdisk (the
// independent tool), random data in its partitions and zero ranges
// between, and returns its bytes.
func rawTestImage(t *testing.T, size int64, seed uint64) []byte {
	t.Helper()
	img := rawSgdisk(t, size, 0, "-n", "1:2048:+1M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300")
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
	fill := func(off, n int64) {
		for i := off; i < off+n; i += 8 {
			v := rng.Uint64()
			for j := int64(0); j < 8 && i+j < off+n; j++ {
				img[i+j] = byte(v >> (8 * j))
			}
		}
	}
	// Partition 1 all random; partition 2 random runs with zero runs
	// between; the last MiB (backup GPT) left alone.
	fill(1<<20, 1<<20)
	for off := int64(2 << 20); off+300<<10 < size-(1<<20); off += 1 << 20 {
		fill(off+4096, 300<<10)
	}
	return img
}

// rawTestTarget creates a target file of size bytes that held a previous
// system: every byte 0xAB, and an old GPT with a partition (sgdisk).
func rawTestTarget(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "target.img")
	b := rawSgdisk(t, size, 0xAB, "-o", "-n", "1:2048:0", "-t", "1:8300")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// rawSgdiskCache holds what sgdisk made, by arguments: every sgdisk run
// that writes sleeps a second (its DiskSync), so each layout is made once.
var rawSgdiskCache sync.Map

// rawSgdisk returns a copy of a size-byte image, every byte fill, after
// sgdisk args ran on it.
func rawSgdisk(t *testing.T, size int64, fill byte, args ...string) []byte {
	t.Helper()
	testutil.RequireCommand(t, "sgdisk")
	key := fmt.Sprint(size, fill, args)
	if b, ok := rawSgdiskCache.Load(key); ok {
		return bytes.Clone(b.([]byte))
	}
	p := filepath.Join(t.TempDir(), "sgdisk.img")
	if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, int(size)), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sgdisk", append(args, p)...)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	rawSgdiskCache.Store(key, b)
	return bytes.Clone(b)
}

// rawOpen opens the target file directly, or through a loop device.
func rawOpen(t *testing.T, file string, loop bool) (*blockdev.Device, string) {
	t.Helper()
	path := file
	if loop {
		path = testutil.LoopDevice(t, file, 0)
	}
	d, err := blockdev.Open(path, blockdev.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

// rawSum is the sha256 of a whole file or device.
func rawSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// rawVerify returns an Ended callback comparing h with want.
func rawVerify(h hash.Hash, want []byte) func(int64) error {
	return func(int64) error {
		if got := h.Sum(nil); !bytes.Equal(got, want) {
			return fmt.Errorf("checksum mismatch: got %x, want %x", got, want)
		}
		return nil
	}
}

// guarded runs write through a Guard over dst, as a deployment does
// (agent.Deployer): Commit after a success, Abort after a failure. The
// write's error comes back unchanged when the abort succeeded.
func guarded(ctx context.Context, dst Target, write func(g *Guard) error) error {
	g := Begin(ctx, dst)
	if err := write(g); err != nil {
		if werr := g.Abort(ctx); werr != nil {
			return errors.Join(err, werr)
		}
		return err
	}
	return g.Commit(ctx)
}

// rawHold sets up g and opts as the agent does: the image's last MiB held
// from the declared size (or HoldEnd when it is unknown), the writer's
// Start phase starting the Guard.
func rawHold(g *Guard, opts RawOptions) RawOptions {
	if opts.DeclaredSize > 0 {
		g.Hold(opts.DeclaredSize-HeadSize, HeadSize)
	} else {
		g.HoldEnd()
	}
	opts.Start = func() error { return g.Start(g.ctx) }
	return opts
}

func TestWriteRaw(t *testing.T) {
	const imgSize = 6<<20 + 3*512 // not a multiple of the buffer size
	img := rawTestImage(t, imgSize, 1)
	want := sha256.Sum256(img)
	for _, loop := range []bool{false, true} {
		for _, srcKind := range []string{"bytes", "pipe"} {
			t.Run(fmt.Sprintf("loop=%v/%s", loop, srcKind), func(t *testing.T) {
				file := rawTestTarget(t, 16<<20)
				dst, path := rawOpen(t, file, loop)
				var src io.Reader = bytes.NewReader(img)
				if srcKind == "pipe" {
					pr, pw := io.Pipe()
					go func() { _, err := io.Copy(pw, bytes.NewReader(img)); pw.CloseWithError(err) }()
					src = testutil.ChunkyReader{R: pr}
				}
				h := sha256.New()
				var calls, last atomic.Int64
				var res RawResult
				err := guarded(t.Context(), dst, func(g *Guard) error {
					var err error
					res, err = WriteRaw(t.Context(), src, g, rawHold(g, RawOptions{
						DeclaredSize: imgSize,
						TargetName:   path,
						Hash:         h,
						Ended: func(size int64) error {
							// Through the Guard, the head reaches the disk only
							// at the commit, after the checksum matched.
							head := make([]byte, HeadSize)
							if _, err := dst.ReadAt(head, 0); err != nil || !AllZero(head) {
								t.Errorf("head written before the checksum matched (%v)", err)
							}
							return rawVerify(h, want[:])(size)
						},
						BufferSize: 256 << 10,
						Buffers:    3,
						Logger:     testutil.Logger(t),
						Progress: func(done, total int64) {
							calls.Add(1)
							last.Store(done)
							if total != imgSize || done > total {
								t.Errorf("progress %d/%d", done, total)
							}
						},
					}))
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				if res.Written != imgSize || res.Table != "gpt" {
					t.Errorf("result = %+v", res)
				}
				if calls.Load() == 0 || last.Load() != imgSize {
					t.Errorf("progress: %d calls, last %d", calls.Load(), last.Load())
				}
				if err := dst.Close(); err != nil {
					t.Fatal(err)
				}
				if got := testutil.ReadAt(t, path, 0, imgSize); !bytes.Equal(got, img) {
					t.Fatal("target differs from the image")
				}
				testutil.Run(t, "cmp", "-n", fmt.Sprint(imgSize), path, rawWriteFile(t, img))
				if !AllZero(testutil.ReadAt(t, path, 15<<20, 1<<20)) {
					t.Error("last MiB of the target (old backup GPT) not zeroed")
				}
				testutil.RequireCommand(t, "sfdisk")
				if out := testutil.Run(t, "sfdisk", "-l", path); !strings.Contains(out, "Disklabel type: gpt") {
					t.Errorf("sfdisk -l does not see the image's GPT:\n%s", out)
				}
			})
		}
	}
}

// rawWriteFile writes b to a temporary file and returns its path.
func rawWriteFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestWriteRawSmallMBR writes an image smaller than the head: it is
// written whole.
func TestWriteRawSmallMBR(t *testing.T) {
	testutil.RequireCommand(t, "sfdisk")
	p := filepath.Join(t.TempDir(), "small.img")
	if err := os.WriteFile(p, make([]byte, 600<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	sniffSfdisk(t, p, "label: dos\nstart=64, size=512, type=83\n")
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	copy(img[64*512:], bytes.Repeat([]byte("data"), 1000))
	file := rawTestTarget(t, 4<<20)
	dst, _ := rawOpen(t, file, false)
	res, err := WriteRaw(t.Context(), bytes.NewReader(img), dst, RawOptions{DeclaredSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Written != int64(len(img)) || res.Table != "mbr" {
		t.Errorf("result = %+v", res)
	}
	if got := testutil.ReadAt(t, file, 0, int64(len(img))); !bytes.Equal(got, img) {
		t.Error("target differs from the image")
	}
}

// rawFailReader returns data, then err after n bytes.
type rawFailReader struct {
	r   io.Reader
	n   int64
	err error
	hit func()
}

func (f *rawFailReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		if f.hit != nil {
			f.hit()
			f.hit = nil
		}
		if f.err != nil {
			return 0, f.err
		}
		return f.r.Read(p) // keep going: WriteRaw must notice ctx
	}
	k, err := f.r.Read(p[:min(int64(len(p)), f.n)])
	f.n -= int64(k)
	return k, err
}

// rawFailTarget fails writes that reach past failAt.
type rawFailTarget struct {
	Target
	failAt int64
	err    error
}

func (f rawFailTarget) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, f.err
	}
	return f.Target.WriteAt(p, off)
}

// TestWriteRawFailures: every failure once writing started, through the
// Guard a deployment writes with, leaves the target without any partition
// table, where it had one before, and WriteRaw's error as it was.
func TestWriteRawFailures(t *testing.T) {
	const imgSize = 6 << 20
	img := rawTestImage(t, imgSize, 2)
	big := rawTestImage(t, 12<<20, 3)
	want := sha256.Sum256(img)
	errSrc := errors.New("connection reset by peer")
	errIO := errors.New("input/output error")
	errSum := errors.New("Bad sha256 for downloaded file")
	for _, loop := range []bool{false, true} {
		for _, c := range []string{"checksum", "source", "truncated", "cancel", "write", "overflow"} {
			t.Run(fmt.Sprintf("loop=%v/%s", loop, c), func(t *testing.T) {
				testutil.RequireCommand(t, "sfdisk", "blkid")
				file := rawTestTarget(t, 8<<20)
				var d Target
				dev, path := rawOpen(t, file, loop)
				d = dev
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				h := sha256.New()
				var src io.Reader = bytes.NewReader(img)
				opts := RawOptions{DeclaredSize: imgSize, TargetName: path, Hash: h, Ended: rawVerify(h, want[:]), BufferSize: 1 << 20, Logger: testutil.Logger(t)}
				var check func(error)
				switch c {
				case "checksum":
					opts.Ended = func(int64) error { return errSum }
					check = func(err error) {
						if err != errSum {
							t.Errorf("error = %v, want the Ended error unchanged", err)
						}
					}
				case "source":
					src = &rawFailReader{r: src, n: 3<<20 + 100, err: errSrc}
					check = func(err error) {
						if err != errSrc {
							t.Errorf("error = %v, want the source error unchanged", err)
						}
					}
				case "truncated":
					// What a cut HTTP body returns: never a clean end.
					src = &rawFailReader{r: src, n: 3<<20 + 100, err: io.ErrUnexpectedEOF}
					opts.DeclaredSize = -1
					check = func(err error) {
						if err != io.ErrUnexpectedEOF {
							t.Errorf("error = %v, want io.ErrUnexpectedEOF unchanged", err)
						}
					}
				case "cancel":
					src = &rawFailReader{r: src, n: 3 << 20, hit: cancel}
					check = func(err error) {
						if !errors.Is(err, context.Canceled) {
							t.Errorf("error = %v, want context.Canceled", err)
						}
					}
				case "write":
					d = rawFailTarget{Target: dev, failAt: 4 << 20, err: errIO}
					check = func(err error) {
						var we *WriteError
						if !errors.As(err, &we) || we.Format != "raw" || !errors.Is(err, errIO) ||
							!strings.HasPrefix(err.Error(), "write the raw image: ") {
							t.Errorf("error = %v, want a raw WriteError wrapping the cause", err)
						}
					}
				case "overflow":
					src = testutil.ChunkyReader{R: bytes.NewReader(big)}
					opts.DeclaredSize = -1
					check = func(err error) {
						// The stream passes the 8 MiB target with the 1 MiB buffer
						// that would end at 9 MiB.
						msg := fmt.Sprintf("image of %d bytes does not fit %s (%d bytes)", 9<<20, path, 8<<20)
						var se *SizeError
						if !errors.As(err, &se) || err.Error() != msg {
							t.Errorf("error = %v\nwant %s", err, msg)
						}
					}
				}
				// The judges see the old table before, so their silence after
				// means something.
				if out := testutil.Run(t, "sfdisk", "-l", path); !strings.Contains(out, "Disklabel type: gpt") {
					t.Fatalf("old GPT not seen by sfdisk -l before:\n%s", out)
				}
				testutil.Run(t, "blkid", "-p", path)
				// Through a Guard, as a deployment writes: its Abort
				// leaves no table.
				err := guarded(ctx, d, func(g *Guard) error {
					_, err := WriteRaw(ctx, src, g, rawHold(g, opts))
					return err
				})
				if err == nil {
					t.Fatal("WriteRaw succeeded")
				}
				check(err)
				if err := dev.Close(); err != nil {
					t.Fatal(err)
				}
				testutil.AssertNoTable(t, path)
			})
		}
	}
}

// TestWriteRawRefusedUntouched: refusals found in the head leave the
// target exactly as it was.
func TestWriteRawRefusedUntouched(t *testing.T) {
	img := rawTestImage(t, 6<<20, 4)
	file := rawTestTarget(t, 4<<20)
	dst, _ := rawOpen(t, file, false)
	before := rawSum(t, file)

	var gz, xzb, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(img[:2<<20])
	gw.Close()
	xw, _ := xz.NewWriter(&xzb)
	xw.Write(img[:256<<10])
	xw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(img)
	zw.Close()

	type tc struct {
		name string
		img  []byte
		opts RawOptions
		msg  string
	}
	// The customer's texts for these are the agent's: TestErrorTable.
	notRaw := func(found string) string {
		return "image declared raw holds no partition table (it looks like " + found + ")"
	}
	errCheck := errors.New("image sector size 4096 does not match disk sector size 512")
	cases := []tc{
		{"too large", img, RawOptions{DeclaredSize: int64(len(img)), TargetName: "/dev/sda"},
			fmt.Sprintf("image of %d bytes does not fit /dev/sda (%d bytes)", len(img), 4<<20)},
		{"check", img[:2<<20], RawOptions{Check: func([]byte) error { return errCheck }}, errCheck.Error()},
		{"gzip", gz.Bytes(), RawOptions{}, notRaw("gzip")},
		{"xz", xzb.Bytes(), RawOptions{}, notRaw("xz")},
		{"zstd", zs.Bytes(), RawOptions{}, notRaw("zstd")},
		{"zeros", make([]byte, 3<<20), RawOptions{}, notRaw("empty")},
		{"nothing", nil, RawOptions{}, notRaw("empty")},
		{"truncated head", nil, RawOptions{}, io.ErrUnexpectedEOF.Error()},
		{"text", bytes.Repeat([]byte("not a disk\n"), 1000), RawOptions{}, notRaw("unknown")},
	}
	dir := t.TempDir()
	toolImage := func(name string, cmd ...string) []byte {
		if _, err := testutil.LookPath(cmd[0]); err != nil {
			testutil.Unavailable(t, "needs %s", cmd[0])
		}
		testutil.Run(t, cmd[0], cmd[1:]...)
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	qcow := toolImage("a.qcow2", "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "a.qcow2"), "1G")
	cases = append(cases, tc{"qcow2", qcow, RawOptions{}, "image declared raw is qcow2"})
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello"), 0o644)
	iso := toolImage("a.iso", "genisoimage", "-quiet", "-R", "-o", filepath.Join(dir, "a.iso"), filepath.Join(dir, "hello.txt"))
	cases = append(cases, tc{"iso9660", iso, RawOptions{}, notRaw("iso9660")})
	ext := filepath.Join(dir, "ext4.img")
	os.WriteFile(ext, make([]byte, 2<<20), 0o644)
	ext4 := toolImage("ext4.img", "mkfs.ext4", "-q", "-F", ext)
	cases = append(cases, tc{"ext4", ext4, RawOptions{}, notRaw("ext4")})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := &rawCountReader{r: bytes.NewReader(c.img)}
			if c.name == "truncated head" {
				src.r = &rawFailReader{r: bytes.NewReader(img), n: 1000, err: io.ErrUnexpectedEOF}
			}
			c.opts.Hash = sha256.New()
			c.opts.Ended = func(int64) error { t.Error("Ended called"); return nil }
			_, err := WriteRaw(t.Context(), src, dst, c.opts)
			if err == nil || err.Error() != c.msg {
				t.Fatalf("error = %v\nwant %s", err, c.msg)
			}
			if src.n > HeadSize {
				t.Errorf("read %d bytes, more than the head", src.n)
			}
			if after := rawSum(t, file); after != before {
				t.Error("target changed")
			}
		})
	}
}

type rawCountReader struct {
	r io.Reader
	n int64
}

func (c *rawCountReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestWriteRawTruncated: a stream ending before DeclaredSize is an error,
// never a success (and through the Guard leaves no table).
func TestWriteRawTruncated(t *testing.T) {
	img := rawTestImage(t, 4<<20, 5)
	file := rawTestTarget(t, 8<<20)
	dst, _ := rawOpen(t, file, false)
	err := guarded(t.Context(), dst, func(g *Guard) error {
		_, err := WriteRaw(t.Context(), bytes.NewReader(img[:3<<20]), g, rawHold(g, RawOptions{DeclaredSize: 4 << 20, BufferSize: 1 << 20}))
		return err
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error = %v, want io.ErrUnexpectedEOF", err)
	}
	dst.Close()
	testutil.AssertNoTable(t, file)
}

// BenchmarkWriteRaw streams 1 GiB of random data from memory through
// WriteRaw with sha256 to a temporary file.
func BenchmarkWriteRaw(b *testing.B) {
	const size = 1 << 30
	img := make([]byte, size)
	rng := rand.New(rand.NewChaCha8([32]byte{9}))
	for i := 0; i < size; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			img[i+j] = byte(v >> (8 * j))
		}
	}
	copy(img[512:], "EFI PART")
	dir := b.TempDir()
	p := filepath.Join(dir, "target.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(p, size+(16<<20)); err != nil {
		b.Fatal(err)
	}
	dst, err := blockdev.Open(p, blockdev.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		h := sha256.New()
		if _, err := WriteRaw(b.Context(), bytes.NewReader(img), dst, RawOptions{DeclaredSize: size, Hash: h}); err != nil {
			b.Fatal(err)
		}
	}
}
