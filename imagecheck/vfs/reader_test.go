package vfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

type countReader struct {
	r     io.ReaderAt
	reads int
}

func (c *countReader) ReadAt(p []byte, off int64) (int, error) { c.reads++; return c.r.ReadAt(p, off) }

func TestReader(t *testing.T) {
	data := make([]byte, 3<<20+777)
	for i := range data {
		data[i] = byte(i * 31)
	}
	src := &countReader{r: bytes.NewReader(data)}
	r := NewReader(context.Background(), src, int64(len(data)), Limits{MaxBytes: 2 << 20, CacheBlocks: 8})
	// Small reads: one read of the source for 4 blocks, then cache hits.
	for off := int64(0); off < 200<<10; off += 512 {
		p := make([]byte, 100)
		if _, err := r.ReadAt(p, off); err != nil || !bytes.Equal(p, data[off:off+100]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	if src.reads != 1 {
		t.Errorf("%d reads of the source for 200 KiB of small reads", src.reads)
	}
	// A read across blocks, and at the end.
	p := make([]byte, 70000)
	if n, err := r.ReadAt(p, int64(len(data))-1000); n != 1000 || err != io.EOF || !bytes.Equal(p[:n], data[len(data)-1000:]) {
		t.Errorf("tail: %d %v", n, err)
	}
	// The budget.
	big := make([]byte, 1<<20)
	var err error
	for i := 0; i < 3 && err == nil; i++ {
		_, err = r.ReadAt(big, int64(i)<<20)
	}
	if !errors.Is(err, ErrBudget) {
		t.Errorf("budget: %v", err)
	}
	if reads, n := r.Stats(); reads != src.reads || n > 2<<20 {
		t.Errorf("stats %d %d", reads, n)
	}
	// A cancelled context stops every read.
	ctx, cancel := context.WithCancel(context.Background())
	r = NewReader(ctx, src, int64(len(data)), Limits{})
	cancel()
	if _, err := r.ReadAt(make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestProbe(t *testing.T) {
	b := make([]byte, 68<<10)
	copy(b[4086:], "SWAPSPACE2")
	copy(b[1024+12:], bytes.Repeat([]byte{0xab}, 16))
	if p, _ := Probe(bytes.NewReader(b), int64(len(b))); p.Type != "swap" || p.UUID != "abababab-abab-abab-abab-abababababab" {
		t.Errorf("swap %+v", p)
	}
	b = make([]byte, 68<<10)
	copy(b[512:], "LABELONE")
	copy(b[512+24:], "LVM2 001")
	if p, _ := Probe(bytes.NewReader(b), int64(len(b))); p.Type != "LVM2_member" {
		t.Errorf("lvm %+v", p)
	}
	if p, err := Probe(bytes.NewReader(make([]byte, 100)), 100); err != nil || p.Type != "" {
		t.Errorf("small %+v %v", p, err)
	}
}

// FuzzProbe probes arbitrary bytes.
func FuzzProbe(f *testing.F) {
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) { Probe(bytes.NewReader(b), int64(len(b))) })
}
