package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testSlots(t *testing.T, n int) Slots {
	return Slots{Dir: t.TempDir(), N: n, Poll: 10 * time.Millisecond}
}

func TestSlotsAtMostN(t *testing.T) {
	p := testSlots(t, 2)
	ctx := context.Background()
	a, err := p.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Acquire(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if a.CPU == b.CPU || a.CPU < 0 || a.CPU > 1 || b.CPU < 0 || b.CPU > 1 {
		t.Fatalf("two holders on CPUs %d and %d, want 0 and 1", a.CPU, b.CPU)
	}
	if h := p.Holders(); !strings.Contains(h, "a (pid") || !strings.Contains(h, "b (pid") {
		t.Errorf("Holders = %q, want a and b named", h)
	}
	// A third waits until one is released, and gets its CPU.
	got := make(chan *Slot, 1)
	go func() {
		c, err := p.Acquire(ctx, "c")
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	select {
	case c := <-got:
		t.Fatalf("a third holder got slot %d while two were held", c.CPU)
	case <-time.After(200 * time.Millisecond):
	}
	b.Release()
	b.Release() // twice: nothing
	select {
	case c := <-got:
		if c == nil || c.CPU != b.CPU {
			t.Fatalf("the third holder got %+v, want the released CPU %d", c, b.CPU)
		}
		if c.Waited < 150*time.Millisecond {
			t.Errorf("Waited = %s, want at least the 200 ms it waited", c.Waited)
		}
		c.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the third holder did not get the released slot")
	}
	a.Release()
	if h := p.Holders(); h != "nobody" {
		t.Errorf("Holders after every release = %q", h)
	}
}

// Waiters are served in the order they came.
func TestSlotsFirstComeFirstServed(t *testing.T) {
	p := testSlots(t, 1)
	ctx := context.Background()
	hold, err := p.Acquire(ctx, "first")
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 5)
	for i := 0; i < 5; i++ {
		go func() {
			s, err := p.Acquire(ctx, "w")
			if err != nil {
				t.Error(err)
				order <- -1
				return
			}
			order <- i
			time.Sleep(20 * time.Millisecond)
			s.Release()
		}()
		// Each queued before the next comes.
		deadline := time.Now().Add(5 * time.Second)
		for waiters(t, p.Dir) != i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("waiter %d not queued", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	hold.Release()
	for want := 0; want < 5; want++ {
		select {
		case got := <-order:
			if got != want {
				t.Fatalf("waiter %d got the slot in place %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("waiter %d never got the slot", want)
		}
	}
	if n := waiters(t, p.Dir); n != 0 {
		t.Errorf("%d waiter files left", n)
	}
}

func waiters(t *testing.T, dir string) int {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "wait-") {
			n++
		}
	}
	return n
}

// The place of a waiter that died (its file no longer locked) is not
// waited for, and its file goes.
func TestSlotsDeadWaiterSkipped(t *testing.T) {
	p := testSlots(t, 1)
	dead := filepath.Join(p.Dir, "wait-00000000000000000001-1-1")
	if err := os.WriteFile(dead, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := p.Acquire(ctx, "alive")
	if err != nil {
		t.Fatalf("Acquire behind a dead waiter: %v", err)
	}
	defer s.Release()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead waiter's file is still there (%v)", err)
	}
}

// A wait ends with its context, and leaves no place in the queue.
func TestSlotsWaitEndsWithContext(t *testing.T) {
	p := testSlots(t, 1)
	hold, err := p.Acquire(context.Background(), "holder")
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = p.Acquire(ctx, "late")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "holder (pid") {
		t.Fatalf("Acquire with a held slot and an ending context: %v, want the deadline and the holder named", err)
	}
	if n := waiters(t, p.Dir); n != 0 {
		t.Errorf("%d waiter files left", n)
	}
	if _, err := (Slots{Dir: p.Dir}).Acquire(context.Background(), "x"); err == nil {
		t.Error("Acquire with 0 slots did not fail")
	}
}

func TestHostSlots(t *testing.T) {
	t.Setenv("BYOI_QEMU_SLOTS", "")
	t.Setenv("BYOI_QEMU_SLOTS_N", "")
	if s := HostSlots(); s.Dir != SlotsDirDefault || s.N < 1 {
		t.Errorf("HostSlots() = %+v", s)
	}
	t.Setenv("BYOI_QEMU_SLOTS", "/x")
	t.Setenv("BYOI_QEMU_SLOTS_N", "3")
	if s := HostSlots(); s.Dir != "/x" || s.N != 3 {
		t.Errorf("HostSlots() with the environment = %+v", s)
	}
}

// A slot held by another process is not taken, and is free again as soon
// as that process dies (killed: no Release).
func TestSlotsHolderProcessKilled(t *testing.T) {
	if dir := os.Getenv("BYOI_SLOTS_TEST_HOLDER"); dir != "" {
		s, err := Slots{Dir: dir, N: 1}.Acquire(context.Background(), "holder process")
		if err != nil {
			os.Exit(3)
		}
		os.WriteFile(filepath.Join(dir, "held"), []byte(strconv.Itoa(s.CPU)), 0o644)
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	p := testSlots(t, 1)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSlotsHolderProcessKilled$")
	cmd.Env = append(os.Environ(), "BYOI_SLOTS_TEST_HOLDER="+p.Dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(p.Dir, "held")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the holder process did not take the slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h := p.Holders(); !strings.Contains(h, fmt.Sprintf("holder process (pid %d", cmd.Process.Pid)) {
		t.Errorf("Holders = %q, want the holder process named", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if s, err := p.Acquire(ctx, "while held"); err == nil {
		s.Release()
		t.Fatal("took the slot another process holds")
	}
	cancel()
	cmd.Process.Kill()
	cmd.Wait()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := p.Acquire(ctx, "after")
	if err != nil {
		t.Fatalf("the killed holder's slot is not free: %v", err)
	}
	s.Release()
}
