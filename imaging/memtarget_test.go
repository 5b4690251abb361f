package imaging_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
)

// memTarget is an in-memory Target for tests and fuzzing that counts its
// writes, zeroings and syncs; safe for the converters' several goroutines.
type memTarget struct {
	mu       sync.Mutex
	b        []byte
	writes   int
	zeroings int
	failAt   int64 // WriteAt reaching past failAt fails (0: never)
	syncs    int
}

func newMemTarget(size int64, fill byte) *memTarget {
	return &memTarget{b: bytes.Repeat([]byte{fill}, int(size))}
}

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write past end: %d+%d", off, len(p))
	}
	if m.failAt > 0 && off+int64(len(p)) > m.failAt {
		return 0, errInjectedIO
	}
	m.writes++
	return copy(m.b[off:], p), nil
}

var errInjectedIO = errors.New("injected I/O error")

func (m *memTarget) Size() int64       { return int64(len(m.b)) }
func (m *memTarget) SectorSize() int64 { return 512 }
func (m *memTarget) Sync() error {
	m.mu.Lock()
	m.syncs++
	m.mu.Unlock()
	return nil
}

func (m *memTarget) ZeroRange(_ context.Context, off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+n > int64(len(m.b)) {
		return fmt.Errorf("zero past end: %d+%d", off, n)
	}
	clear(m.b[off : off+n])
	m.zeroings++
	return nil
}

func (m *memTarget) sum() [32]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return sha256.Sum256(m.b)
}
