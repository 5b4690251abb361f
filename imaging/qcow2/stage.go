package qcow2

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/byoi/byoi/imaging"

	"golang.org/x/sys/unix"
)

// A qcow2 image whose tables do not come before their data (Stream's
// NotStreamableError), or one a deployment asks to stage, is staged first:
// its checksum then matches before the disk is touched. Where, in order of
// preference:
//  1. memory (a memfd, else an anonymous mapping: stageMem), freed on
//     Close, when it fits in MemAvailable minus a reserve;
//  2. the target disk's tail, past the virtual disk and never in its last
//     MiB: the conversion reads the tail and writes the virtual disk, which
//     cannot overlap (Staged.Region, ConvertOptions.KeepOut);
//  3. a file in StagingDir (removed as soon as it is created: nothing is
//     left behind, even after a crash).

// DefaultMemoryReserve is the memory left to the system when staging.
const DefaultMemoryReserve = 1 << 30

// stageBlock is the unit read from the stream and written to a stage.
const stageBlock = 1 << 20

// StageOptions tune Stage.
type StageOptions struct {
	// DeclaredSize is the stream's size (Content-Length), -1 if unknown.
	DeclaredSize int64
	// MemoryReserve is memory not to use: 0 means DefaultMemoryReserve, a
	// negative value no reserve.
	MemoryReserve int64
	// MemAvailable reports the memory available (default: MemAvailable of
	// /proc/meminfo).
	MemAvailable func() (int64, error)
	// Target allows staging on its tail (nil: never).
	Target imaging.Target
	// StagingDir allows staging in a file there ("": never).
	StagingDir string
	// Hash, when set, receives every byte as it flows.
	Hash hash.Hash
	// Progress gets the bytes staged and DeclaredSize.
	Progress imaging.Progress
	Logger   *slog.Logger
}

// Staged is a staged qcow2 image: read it, then Close it (which frees the
// memory or removes the file).
type Staged interface {
	io.ReaderAt
	Size() int64
	// Where says where it is: "memory", "disk tail at offset N", "dir /x".
	Where() string
	// Region is the range of the target the stage occupies (N = 0 when
	// it is not on the target): the conversion keeps out of it.
	Region() Range
	Close() error
}

// TooBigError is a qcow2 image that fits neither in memory, nor on the
// target's tail, nor in the staging directory.
type TooBigError struct {
	// Size is the declared size, or the bytes received when it was refused.
	Size int64
}

func (e *TooBigError) Error() string {
	return fmt.Sprintf("qcow2 image of %d bytes fits neither in memory, nor on the target's tail, nor in the staging directory", e.Size)
}

// Stage reads the whole qcow2 stream src, hashing it through opts.Hash,
// into memory when it fits (decided from DeclaredSize, or as bytes arrive
// when it is unknown), else onto the target's tail when the virtual size
// (read from the stream's header) plus the staged size, each aligned to
// 1 MiB, fit in the target, else into StagingDir. A stream that outgrows
// its stage moves to the next one. When nothing fits the error is a
// *TooBigError. A stream shorter or longer than DeclaredSize is an error.
// The caller verifies the checksum, then converts from the Staged.
func Stage(ctx context.Context, src io.Reader, opts StageOptions) (Staged, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reserve := opts.MemoryReserve
	if reserve == 0 {
		reserve = DefaultMemoryReserve
	}
	reserve = max(reserve, 0)
	memAvail := opts.MemAvailable
	if memAvail == nil {
		memAvail = stageMemAvailable
	}
	avail, err := memAvail()
	if err != nil {
		log.Warn("memory available unknown: not staging in memory", "err", err)
		avail = 0
	}
	st := &stager{ctx: ctx, opts: opts, log: log, budget: avail - reserve, vsize: -1}

	// The header tells the virtual size, needed to place a tail stage.
	buf := make([]byte, stageBlock)
	n, rerr := io.ReadAtLeast(src, buf, 4096)
	if rerr != nil && !errors.Is(rerr, io.ErrUnexpectedEOF) && !errors.Is(rerr, io.EOF) {
		return nil, fmt.Errorf("stage qcow2: read: %w", rerr)
	}
	if info, err := ParseHeader(buf[:n]); err == nil {
		st.vsize = info.VirtualSize
	} else {
		// Check refuses it after the checksum; no tail stage meanwhile.
		log.Warn("qcow2 header unreadable while staging", "err", err)
	}
	if err := st.choose(opts.DeclaredSize); err != nil {
		return nil, err
	}
	eof := rerr != nil
	for {
		if n > 0 {
			if err := st.write(buf[:n]); err != nil {
				st.stageSink.Close()
				return nil, err
			}
		}
		if eof {
			break
		}
		if err := ctx.Err(); err != nil {
			st.stageSink.Close()
			return nil, fmt.Errorf("stage qcow2: %w", err)
		}
		n, rerr = io.ReadFull(src, buf)
		if rerr != nil {
			if !errors.Is(rerr, io.ErrUnexpectedEOF) && !errors.Is(rerr, io.EOF) {
				st.stageSink.Close()
				return nil, fmt.Errorf("stage qcow2: read after %d bytes: %w", st.n, rerr)
			}
			eof = true
		}
	}
	if d := opts.DeclaredSize; d >= 0 && st.n != d {
		st.stageSink.Close()
		return nil, fmt.Errorf("stage qcow2: got %d bytes, want %d: %w", st.n, d, io.ErrUnexpectedEOF)
	}
	log.Info("qcow2 image staged", "bytes", st.n, "where", st.stageSink.Where())
	return st.stageSink, nil
}

// stageSink is a stage being filled.
type stageSink interface {
	Staged
	kind() int
	// room reports whether n more bytes fit.
	room(n int64) bool
	append(p []byte) error
}

const (
	stageMemory = iota
	stageTail
	stageDir
)

type stager struct {
	ctx       context.Context
	opts      StageOptions
	log       *slog.Logger
	budget    int64 // memory we may use
	vsize     int64 // virtual size, -1 unknown
	n         int64
	stageSink stageSink
}

const stageMiB = 1 << 20

func stageAlignMiB(n int64) int64 { return (n + stageMiB - 1) / stageMiB * stageMiB }

// tailStart is where a tail stage begins: past the virtual disk.
func (st *stager) tailStart() int64 { return stageAlignMiB(st.vsize) }

func (st *stager) tailFits(total int64) bool {
	t := st.opts.Target
	// The last MiB stays out of it: the backup GPT goes there, and a
	// crash must not leave staged bytes where tools look for one.
	return t != nil && st.vsize > 0 && st.tailStart()+stageAlignMiB(total) <= t.Size()-imaging.HeadSize
}

func (st *stager) dirFits(total int64) bool {
	if st.opts.StagingDir == "" {
		return false
	}
	if total < 0 {
		return true
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(st.opts.StagingDir, &fs); err != nil {
		return false
	}
	return int64(fs.Bavail)*int64(fs.Bsize) >= total
}

// choose picks the first stage for a stream of total bytes (-1 unknown).
func (st *stager) choose(total int64) error {
	var err error
	switch {
	case total >= 0 && total <= st.budget:
		st.stageSink, err = newStageMem(total)
	case total < 0 && st.budget >= stageBlock:
		st.stageSink, err = newStageMem(st.budget)
	default:
		return st.next(-1, total)
	}
	return err
}

// next moves to the next stage after the current one (after = -1: none
// yet) for a stream of total bytes (-1 unknown), copying what is staged.
func (st *stager) next(after int, total int64) error {
	need := total
	if need < 0 {
		need = st.n + stageBlock
	}
	var s stageSink
	var err error
	switch {
	case after < stageTail && st.tailFits(need):
		s = &stageTailSink{t: st.opts.Target, off: st.tailStart()}
	case after < stageDir && st.dirFits(total):
		s, err = newStageFile(st.opts.StagingDir)
	default:
		if st.stageSink != nil {
			st.stageSink.Close()
		}
		size := total
		if size < 0 {
			size = st.n
		}
		return &TooBigError{Size: size}
	}
	if err != nil {
		if st.stageSink != nil {
			st.stageSink.Close()
		}
		return fmt.Errorf("stage qcow2: %w", err)
	}
	if old := st.stageSink; old != nil {
		st.log.Info("qcow2 stage full, moving", "from", old.Where(), "to", s.Where(), "bytes", st.n)
		if err := stageCopy(st.ctx, s, old); err != nil {
			old.Close()
			s.Close()
			return fmt.Errorf("stage qcow2: move to %s: %w", s.Where(), err)
		}
		old.Close()
	}
	st.stageSink = s
	return nil
}

func stageCopy(ctx context.Context, dst stageSink, src Staged) error {
	buf := make([]byte, stageBlock)
	for off := int64(0); off < src.Size(); {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(buf)), src.Size()-off)
		if _, err := src.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err := dst.append(buf[:n]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func (st *stager) write(p []byte) error {
	if st.opts.Hash != nil {
		st.opts.Hash.Write(p) // hash.Hash.Write never fails
	}
	for !st.stageSink.room(int64(len(p))) {
		total := st.opts.DeclaredSize
		if total >= 0 && st.n+int64(len(p)) > total {
			st.stageSink.Close()
			return fmt.Errorf("stage qcow2: stream longer than its declared %d bytes", total)
		}
		if err := st.next(st.stageSink.kind(), total); err != nil {
			return err
		}
	}
	err := st.stageSink.append(p)
	if err != nil && st.stageSink.kind() == stageMemory {
		// A memfd refused (shmem limits below MemAvailable): the bytes
		// staged so far move on, and p goes after them.
		st.log.Warn("memory stage refused a write: moving on", "err", err, "bytes", st.n)
		if err = st.next(stageMemory, st.opts.DeclaredSize); err != nil {
			return err
		}
		err = st.stageSink.append(p)
	}
	if err != nil {
		return fmt.Errorf("stage qcow2 in %s: %w", st.stageSink.Where(), err)
	}
	st.n += int64(len(p))
	if st.opts.Progress != nil {
		st.opts.Progress(st.n, st.opts.DeclaredSize)
	}
	return nil
}

// stageMem is memory, given back to the system at Close (a Go slice would
// wait for the GC). Preferably a memfd, written with pwrite and read with
// pread: the kernel allocates its pages in bulk, at the speed of a copy
// (3–4 GB/s where first-touch page faults of an anonymous mapping run at
// 0.3 GB/s, issue 27). Where memfd_create fails (no shmem, not Linux), an
// anonymous mapping, MAP_NORESERVE so that a budget reserved for a stream
// of unknown size costs only what is written. Either way no more than the
// capacity (the budget) is ever written.
type stageMem struct {
	f   *os.File // memfd, or nil
	b   []byte   // anonymous mapping (len: capacity) when f is nil
	cap int64
	n   int64
}

// stageMemForce, for tests and the bench, forces "memfd" or "anon".
var stageMemForce string

func newStageMem(capacity int64) (*stageMem, error) {
	m := &stageMem{cap: capacity}
	if capacity == 0 {
		return m, nil
	}
	if stageMemForce != "anon" {
		f, err := newMemfd()
		if err == nil {
			m.f = f
			return m, nil
		}
		if stageMemForce == "memfd" {
			return nil, fmt.Errorf("stage qcow2 in memory: memfd: %w", err)
		}
	}
	page := int64(os.Getpagesize())
	b, err := unix.Mmap(-1, 0, int((capacity+page-1)/page*page),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|mapNoReserve)
	if err != nil {
		return nil, fmt.Errorf("stage qcow2 in memory (%d bytes): %w", capacity, err)
	}
	m.b = b[:capacity]
	return m, nil
}

func (m *stageMem) kind() int         { return stageMemory }
func (m *stageMem) room(n int64) bool { return m.n+n <= m.cap }
func (m *stageMem) Size() int64       { return m.n }
func (m *stageMem) Region() Range     { return Range{} }

func (m *stageMem) Where() string {
	if m.f != nil {
		return "memory (memfd)"
	}
	return "memory (anonymous mapping)"
}

func (m *stageMem) append(p []byte) error {
	if m.f != nil {
		if _, err := m.f.WriteAt(p, m.n); err != nil {
			// ENOSPC: tmpfs/shmem limits are below MemAvailable.
			return fmt.Errorf("memfd: %w", err)
		}
		m.n += int64(len(p))
		return nil
	}
	m.n += int64(copy(m.b[m.n:], p))
	return nil
}

func (m *stageMem) ReadAt(p []byte, off int64) (int, error) {
	return stageReadAt(p, off, m.n, func(p []byte, off int64) (int, error) {
		if m.f != nil {
			return m.f.ReadAt(p, off)
		}
		return copy(p, m.b[off:]), nil
	})
}

func (m *stageMem) Close() error {
	m.n = 0
	if m.f != nil {
		err := m.f.Close()
		m.f = nil
		return err
	}
	if m.b == nil {
		return nil
	}
	b := m.b[:cap(m.b)]
	m.b = nil
	return unix.Munmap(b)
}

// stageReadAt implements ReadAt over n bytes with read (called with a
// range inside them).
func stageReadAt(p []byte, off, n int64, read func([]byte, int64) (int, error)) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= n {
		return 0, io.EOF
	}
	short := int64(len(p)) > n-off
	if short {
		p = p[:n-off]
	}
	m, err := read(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return m, err
}

// stageTailSink is the target's tail, from off (past the virtual disk, 1 MiB
// aligned) to its end.
type stageTailSink struct {
	t   imaging.Target
	off int64
	n   int64
}

func (s *stageTailSink) kind() int         { return stageTail }
func (s *stageTailSink) room(n int64) bool { return s.off+s.n+n <= s.t.Size()-imaging.HeadSize }
func (s *stageTailSink) Size() int64       { return s.n }
func (s *stageTailSink) Where() string     { return "disk tail at offset " + strconv.FormatInt(s.off, 10) }
func (s *stageTailSink) Close() error      { return nil }

func (s *stageTailSink) Region() Range { return Range{Off: s.off, N: s.n} }

func (s *stageTailSink) append(p []byte) error {
	if _, err := s.t.WriteAt(p, s.off+s.n); err != nil {
		return err
	}
	s.n += int64(len(p))
	return nil
}

func (s *stageTailSink) ReadAt(p []byte, off int64) (int, error) {
	return stageReadAt(p, off, s.n, func(p []byte, off int64) (int, error) {
		return s.t.ReadAt(p, s.off+off)
	})
}

// stageFile is a file in the staging directory, unlinked at once.
type stageFile struct {
	f    *os.File
	path string
	n    int64
}

func newStageFile(dir string) (*stageFile, error) {
	f, err := os.CreateTemp(dir, "byoi-qcow2-*.stage")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return &stageFile{f: f, path: f.Name()}, nil
}

func (s *stageFile) kind() int         { return stageDir }
func (s *stageFile) room(n int64) bool { return true }
func (s *stageFile) Size() int64       { return s.n }
func (s *stageFile) Where() string     { return "dir " + s.path }
func (s *stageFile) Region() Range     { return Range{} }

func (s *stageFile) append(p []byte) error {
	if _, err := s.f.WriteAt(p, s.n); err != nil {
		return err
	}
	s.n += int64(len(p))
	return nil
}

func (s *stageFile) ReadAt(p []byte, off int64) (int, error) {
	return stageReadAt(p, off, s.n, s.f.ReadAt)
}

func (s *stageFile) Close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// stageMemAvailable reads MemAvailable from /proc/meminfo.
func stageMemAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	return stageParseMeminfo(b)
}

func stageParseMeminfo(b []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("meminfo: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("meminfo: no MemAvailable")
}
