// Package imagingtest holds the test helpers the imaging packages share: an
// in-memory Target that counts what it is asked to do, a disk image with
// mixed data, and a file target (optionally behind a loop device). Only
// tests import it.
package imagingtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

// MiB is a mebibyte.
const MiB = 1 << 20

// MemTarget is an in-memory Target for tests and fuzzing that counts its
// writes, zeroings and syncs; safe for the converters' several goroutines.
type MemTarget struct {
	mu       sync.Mutex
	B        []byte
	Writes   int
	Zeroings int
	FailAt   int64 // WriteAt reaching past FailAt fails with ErrInjectedIO (0: never)
	Syncs    int
}

// NewMemTarget is a MemTarget of size bytes, each fill.
func NewMemTarget(size int64, fill byte) *MemTarget {
	return &MemTarget{B: bytes.Repeat([]byte{fill}, int(size))}
}

func (m *MemTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.B)) {
		return 0, io.EOF
	}
	n := copy(p, m.B[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *MemTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.B)) {
		return 0, fmt.Errorf("write past end: %d+%d", off, len(p))
	}
	if m.FailAt > 0 && off+int64(len(p)) > m.FailAt {
		return 0, ErrInjectedIO
	}
	m.Writes++
	return copy(m.B[off:], p), nil
}

// ErrInjectedIO is the error of a MemTarget's writes past FailAt.
var ErrInjectedIO = errors.New("injected I/O error")

func (m *MemTarget) Size() int64       { return int64(len(m.B)) }
func (m *MemTarget) SectorSize() int64 { return 512 }
func (m *MemTarget) Sync() error {
	m.mu.Lock()
	m.Syncs++
	m.mu.Unlock()
	return nil
}

func (m *MemTarget) ZeroRange(_ context.Context, off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+n > int64(len(m.B)) {
		return fmt.Errorf("zero past end: %d+%d", off, n)
	}
	clear(m.B[off : off+n])
	m.Zeroings++
	return nil
}

// Sum is the SHA-256 of the target's bytes.
func (m *MemTarget) Sum() [32]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return sha256.Sum256(m.B)
}

// Disk builds a GPT disk image of size bytes with an ESP and a root
// partition of mixed data (random, text, zeros) and a last partition
// reaching the backup GPT, so the held-back tail holds data too.
func Disk(t testing.TB, size int64, seed uint64) []byte {
	t.Helper()
	img, err := testimage.GPT(size, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * MiB, Size: 1 * MiB, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 2 * MiB, Size: size - 2*MiB - 64<<10, Fill: testimage.FillMixed},
	}, seed)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// FileTarget is a file target of size bytes, each fill (0: sparse), in a
// temporary directory, opened with blockdev; with loop, through a loop
// device the test attaches (and detaches in cleanup). It returns the
// device and its path.
func FileTarget(t *testing.T, size int64, fill byte, loop bool) (*blockdev.Device, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "target.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if fill == 0 {
		err = f.Truncate(size)
	} else {
		_, err = f.Write(bytes.Repeat([]byte{fill}, int(size)))
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	path := p
	if loop {
		path = testutil.LoopDevice(t, p, 0)
	}
	d, err := blockdev.Open(path, blockdev.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}
