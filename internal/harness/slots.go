package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QEMU slots. A TCG machine (-smp 1) keeps one host CPU busy; more
// machines than CPUs slow every one of them, and the checks' time limits
// are set for a CPU each. A slot is one host CPU: a check starts a
// machine only once it holds a slot, and releases it when the machine is
// off. The slots are lock files in one directory, shared by every check on
// the host (scripts/test.sh runs the QEMU checks side by side): slot-N,
// locked (flock) by its holder, which writes its name into it. Waiters
// queue in the same directory (wait-<time>-<pid>-<n>, each locked by its
// waiter) and are served first come, first served. A lock dies with its
// process, so a slot or a place in the queue of a check that was killed
// is free again at once.

// SlotsDirDefault is the slots' directory unless BYOI_QEMU_SLOTS names
// another.
const SlotsDirDefault = "/var/tmp/byoi-qemu-slots"

// Slots is a set of QEMU slots.
type Slots struct {
	Dir  string
	N    int           // the number of slots (host CPUs)
	Poll time.Duration // how often a waiter looks (default 250 ms)
}

// HostSlots is the host's slots: BYOI_QEMU_SLOTS (default
// SlotsDirDefault), one per CPU unless BYOI_QEMU_SLOTS_N says how many.
func HostSlots() Slots {
	s := Slots{Dir: os.Getenv("BYOI_QEMU_SLOTS"), N: runtime.NumCPU()}
	if s.Dir == "" {
		s.Dir = SlotsDirDefault
	}
	if n, err := strconv.Atoi(os.Getenv("BYOI_QEMU_SLOTS_N")); err == nil && n > 0 {
		s.N = n
	}
	return s
}

// Slot is a held slot.
type Slot struct {
	// CPU is the slot's number: the host CPU a machine pinned to its slot
	// runs on (Machine.HostCPU).
	CPU int
	// Waited is how long the holder waited for it.
	Waited time.Duration
	f      *os.File
	once   sync.Once
}

// Release frees the slot (again: nothing).
func (s *Slot) Release() {
	s.once.Do(func() {
		s.f.Truncate(0)
		unix.Flock(int(s.f.Fd()), unix.LOCK_UN)
		s.f.Close()
	})
}

var waitSeq struct {
	sync.Mutex
	n int
}

// Acquire waits for a slot, first come, first served, until ctx ends.
// what names the holder in the slot's file (Holders shows it to whoever
// waits).
func (p Slots) Acquire(ctx context.Context, what string) (*Slot, error) {
	if p.N < 1 {
		return nil, fmt.Errorf("QEMU slots: %d slots", p.N)
	}
	poll := p.Poll
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("QEMU slots: %w", err)
	}
	t0 := time.Now()
	me, wf, err := p.enqueue(t0)
	if err != nil {
		return nil, err
	}
	defer func() {
		os.Remove(filepath.Join(p.Dir, me))
		wf.Close()
	}()
	for {
		rank, err := p.rank(me)
		if err != nil {
			return nil, err
		}
		if s := p.take(rank); s != nil {
			s.Waited = time.Since(t0)
			s.f.Truncate(0)
			fmt.Fprintf(s.f, "%s (pid %d, since %s)\n", what, os.Getpid(), time.Now().UTC().Format(time.TimeOnly))
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting %.0f s for a QEMU slot (held by: %s): %w", time.Since(t0).Seconds(), p.Holders(), ctx.Err())
		case <-time.After(poll):
		}
	}
}

// enqueue makes the waiter's file, locked, under its final name only once
// locked (no other waiter takes it for a dead one's).
func (p Slots) enqueue(t time.Time) (string, *os.File, error) {
	waitSeq.Lock()
	waitSeq.n++
	n := waitSeq.n
	waitSeq.Unlock()
	name := fmt.Sprintf("wait-%020d-%d-%d", t.UnixNano(), os.Getpid(), n)
	tmp := filepath.Join(p.Dir, "new-"+name)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o644)
	if err != nil {
		return "", nil, fmt.Errorf("QEMU slots: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", nil, fmt.Errorf("QEMU slots: lock %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(p.Dir, name)); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", nil, fmt.Errorf("QEMU slots: %w", err)
	}
	return name, f, nil
}

// rank is how many live waiters came before me; the files of dead ones
// (unlocked) are removed on the way.
func (p Slots) rank(me string) (int, error) {
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return 0, fmt.Errorf("QEMU slots: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "wait-") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	rank := 0
	for _, n := range names {
		if n == me {
			return rank, nil
		}
		if p.alive(n) {
			rank++
		}
	}
	return 0, fmt.Errorf("QEMU slots: my place in the queue (%s) is gone from %s", me, p.Dir)
}

// alive tells whether a waiter's file is locked by its waiter; a file
// nobody holds (its waiter died) is removed.
func (p Slots) alive(name string) bool {
	path := filepath.Join(p.Dir, name)
	f, err := os.Open(path)
	if err != nil {
		return false // gone: its waiter got a slot or gave up
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return true
	} else if err != nil {
		return true // cannot tell: count it
	}
	os.Remove(path)
	return false
}

// take takes the free slot that falls to a waiter with rank waiters
// before it (the rank-th free one), or returns nil.
func (p Slots) take(rank int) *Slot {
	free := 0
	for i := 0; i < p.N; i++ {
		f, err := os.OpenFile(filepath.Join(p.Dir, fmt.Sprintf("slot-%d", i)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close()
			continue
		}
		if free == rank {
			return &Slot{CPU: i, f: f}
		}
		free++
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}
	return nil
}

// Holders names who holds the slots now, for a report.
func (p Slots) Holders() string {
	var hs []string
	for i := 0; i < p.N; i++ {
		f, err := os.Open(filepath.Join(p.Dir, fmt.Sprintf("slot-%d", i)))
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB) == nil {
			f.Close() // free (what it says is a dead holder's)
			continue
		}
		b := make([]byte, 200)
		n, _ := f.Read(b)
		f.Close()
		hs = append(hs, fmt.Sprintf("slot %d: %s", i, orUnknown(strings.TrimSpace(string(b[:n])))))
	}
	if len(hs) == 0 {
		return "nobody"
	}
	return strings.Join(hs, "; ")
}

func orUnknown(s string) string {
	if s == "" {
		return "(not named yet)"
	}
	return s
}
