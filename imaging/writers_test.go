package imaging_test

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testimage"
)

// The format writers (WriteRaw, qcow2.Convert, ova.Write) only write their
// image onto a target: crash safety (clearing the old tables, holding the
// new ones, the wipe after a failure) is the Guard's alone. These tests
// fail if a writer does any of it on its own.

// opTarget is an in-memory target that records the range of every write
// and zeroing, and fails writes reaching past failAt (0: never).
type opTarget struct {
	mu     sync.Mutex
	b      []byte
	ops    [][2]int64
	failAt int64
}

func (m *opTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}

func (m *opTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failAt > 0 && off+int64(len(p)) > m.failAt {
		return 0, imagingtest.ErrInjectedIO
	}
	m.ops = append(m.ops, [2]int64{off, int64(len(p))})
	return copy(m.b[off:], p), nil
}

func (m *opTarget) ZeroRange(_ context.Context, off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, [2]int64{off, n})
	clear(m.b[off : off+n])
	return nil
}

func (m *opTarget) Size() int64       { return int64(len(m.b)) }
func (m *opTarget) SectorSize() int64 { return 512 }
func (m *opTarget) Sync() error       { return nil }

// TestWritersOnlyWrite: each writer, onto a disk holding an old system
// whose backup GPT lies past the image, touches nothing but the image's
// own range [0, virtual size), after a success and after a failure: no
// clearing of the old tables, no wipe. After a failure the bytes it wrote
// stay as they were written.
func TestWritersOnlyWrite(t *testing.T) {
	const img, disk = 8 << 20, 16 << 20
	raw, err := testimage.GPT(img, 512, []testimage.Part{
		{Name: "root", Type: testimage.TypeLinux, Start: 1 << 20, Size: img - 2<<20, Fill: testimage.FillMixed},
	}, 5)
	if err != nil {
		t.Fatal(err)
	}
	old, err := testimage.GPT(disk, 512, []testimage.Part{{Name: "old", Type: testimage.TypeLinux, Start: 1 << 20, Size: disk - 2<<20}}, 6)
	if err != nil {
		t.Fatal(err)
	}
	q, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	ovaImg, err := testimage.OVA(raw, testimage.VMware)
	if err != nil {
		t.Fatal(err)
	}
	qcow2.RegisterDecompressors()
	writers := map[string]func(dst imaging.Target) error{
		"raw": func(dst imaging.Target) error {
			_, err := imaging.WriteRaw(t.Context(), bytes.NewReader(raw), dst, imaging.RawOptions{DeclaredSize: img, BufferSize: 1 << 20})
			return err
		},
		"qcow2": func(dst imaging.Target) error {
			info, err := qcow2.Check(bytes.NewReader(q), int64(len(q)), "", dst.Size())
			if err != nil {
				return err
			}
			return qcow2.Convert(t.Context(), bytes.NewReader(q), int64(len(q)), info, dst, qcow2.ConvertOptions{Workers: 2, ChunkSize: 1 << 20})
		},
		"ova": func(dst imaging.Target) error {
			_, err := ova.Write(t.Context(), bytes.NewReader(ovaImg), dst, ova.Options{DeclaredSize: int64(len(ovaImg))})
			return err
		},
	}
	for name, write := range writers {
		for _, fail := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/fail=%v", name, fail), func(t *testing.T) {
				dst := &opTarget{b: bytes.Clone(old)}
				if fail {
					dst.failAt = 5 << 20
				}
				err := write(dst)
				if fail != (err != nil) {
					t.Fatalf("error %v", err)
				}
				for _, op := range dst.ops {
					if op[0] < 0 || op[0]+op[1] > img {
						t.Errorf("%s wrote or zeroed [%d, +%d), outside its image [0, %d)", name, op[0], op[1], img)
					}
				}
				if !bytes.Equal(dst.b[img:], old[img:]) {
					t.Errorf("%s changed the disk past its image (the old backup GPT)", name)
				}
				if !fail {
					if !bytes.Equal(dst.b[:img], raw) {
						t.Errorf("%s: the image differs", name)
					}
					return
				}
				// Every byte of the image region is the old system's or
				// the image's: nothing was wiped.
				for i := range int64(img) {
					if c := dst.b[i]; c != old[i] && c != raw[i] {
						t.Fatalf("%s: byte %d is neither the old system's nor the image's: wiped", name, i)
					}
				}
			})
		}
	}
}

// TestWritersLeaveTransactionToGuard: the writers' code names none of the
// Guard's operations (clearing the old tables, holding regions, Commit,
// Abort): crash safety has one owner.
func TestWritersLeaveTransactionToGuard(t *testing.T) {
	forbidden := map[string]bool{"clearTables": true, "ClearTables": true, "WipeAfterFailure": true, "Guard": true, "Begin": true, "Commit": true, "Abort": true, "Hold": true, "HoldEnd": true}
	var files []string
	for _, pat := range []string{"raw.go", "qcow2/*.go", "ova/*.go", "vmdk/*.go", "decompress/*.go"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		n++
		fs := token.NewFileSet()
		file, err := parser.ParseFile(fs, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(node ast.Node) bool {
			if id, ok := node.(*ast.Ident); ok && forbidden[id.Name] {
				t.Errorf("%s: %s names %s: a format writer leaves crash safety to the Guard", fs.Position(id.Pos()), f, id.Name)
			}
			return true
		})
	}
	if n < 8 {
		t.Fatalf("only %d writer files found: %v", n, files)
	}
}
