package inflate

import (
	"testing"
	"time"
)

// TestManyDynamicBlocks: 2 MiB of tiny dynamic blocks (12 bytes each, three
// table builds each, no output) is refused like compress/flate refuses it,
// in comparable time (logged: the cost per block is the table builds).
func TestManyDynamicBlocks(t *testing.T) {
	var w bitWriter
	for w.nb+uint(len(w.out))*8 < 2<<20*8 {
		w.bits(0, 1)
		w.bits(2, 2)
		w.bits(0, 5)
		w.bits(0, 5)
		w.bits(18-4, 4)
		for _, s := range codeOrder[:18] {
			if s == 18 || s == 1 {
				w.bits(1, 3)
			} else {
				w.bits(0, 3)
			}
		}
		// codes: 1 -> 0, 18 -> 1
		w.code(1, 1)
		w.bits(86, 7)
		w.code(0, 1)
		w.code(1, 1)
		w.bits(127, 7)
		w.code(1, 1)
		w.bits(9, 7)
		w.code(0, 1)
		w.code(0, 1)
		w.code(1, 1) // EOB ('a' is 0, 256 is 1)
	}
	src := w.bytes()
	dst := make([]byte, 2<<20)
	t0 := time.Now()
	_, err := Decode(dst, src)
	t1 := time.Now()
	_, ok := judge(src, len(dst))
	t2 := time.Now()
	if err == nil || ok {
		t.Fatalf("Decode err %v, compress/flate fills the output: %v", err, ok)
	}
	t.Logf("%d bytes: Decode %v (%v), compress/flate %v", len(src), t1.Sub(t0), err, t2.Sub(t1))
	// The same blocks followed by a final fixed block with one literal.
	w.bits(1, 1)
	w.bits(1, 2)
	w.fixedLit('x')
	w.fixedLit(256)
	check(t, w.bytes(), 1)
}
