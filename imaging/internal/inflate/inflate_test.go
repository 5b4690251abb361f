package inflate

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	kflate "github.com/klauspost/compress/flate"
)

// maxFuzzOut bounds the output size the differential tests ask for.
const maxFuzzOut = 256 << 10

// judge is the reference: Go's compress/flate read through io.ReadFull.
func judge(src []byte, n int) ([]byte, bool) {
	ref := make([]byte, n)
	_, err := io.ReadFull(flate.NewReader(bytes.NewReader(src)), ref)
	return ref, err == nil
}

// fullLen is how many bytes compress/flate produces before it stops.
func fullLen(src []byte) int {
	n, _ := io.Copy(io.Discard, io.LimitReader(flate.NewReader(bytes.NewReader(src)), maxFuzzOut))
	return int(n)
}

// check runs Decode against the judge for an n-byte output.
func check(t testing.TB, src []byte, n int) {
	t.Helper()
	ref, ok := judge(src, n)
	dst := make([]byte, n)
	m, err := Decode(dst, src)
	switch {
	case ok && err != nil:
		t.Fatalf("n=%d: compress/flate fills the output, Decode fails: %v (src %x)", n, err, trunc(src))
	case !ok && err == nil:
		t.Fatalf("n=%d: compress/flate fails, Decode succeeds (src %x)", n, trunc(src))
	case ok && m != n:
		t.Fatalf("n=%d: Decode returned %d", n, m)
	case ok && !bytes.Equal(dst, ref):
		i := 0
		for dst[i] == ref[i] {
			i++
		}
		t.Fatalf("n=%d: output differs at byte %d (src %x)", n, i, trunc(src))
	case err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrShort):
		t.Fatalf("n=%d: error %v wraps neither ErrCorrupt nor ErrShort", n, err)
	}
}

func trunc(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// mixed returns n bytes like a disk's: text, structured binary, random
// bytes and zero runs, in pieces of a few hundred bytes to a few KiB.
func mixed(rng *rand.Rand, n int) []byte {
	words := []string{"byoi ", "disk ", "image ", "cloud-init ", "kernel ", "the ", "of ", "/usr/lib/", "systemd ", "= ", "0x", "\n", "\t", "func ", "return ", "error "}
	b := make([]byte, 0, n+4096)
	for len(b) < n {
		size := 64 + rng.IntN(4096)
		switch rng.IntN(5) {
		case 0, 1:
			for end := len(b) + size; len(b) < end; {
				b = append(b, words[rng.IntN(len(words))]...)
			}
		case 2: // structured binary: small integers, pointers, opcodes
			for end := len(b) + size; len(b) < end; {
				v := uint32(rng.IntN(1 << uint(rng.IntN(24)+1)))
				b = append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), 0x48, 0x89, byte(rng.IntN(8)))
			}
		case 3:
			for range size {
				b = append(b, byte(rng.Uint32()))
			}
		default:
			b = append(b, make([]byte, size)...)
		}
	}
	return b[:n]
}

// bitWriter writes a DEFLATE bit stream by hand.
type bitWriter struct {
	out []byte
	b   uint64
	nb  uint
}

func (w *bitWriter) bits(v uint64, n uint) {
	w.b |= v << w.nb
	w.nb += n
	for w.nb >= 8 {
		w.out = append(w.out, byte(w.b))
		w.b >>= 8
		w.nb -= 8
	}
}

// code writes a Huffman code (MSB first).
func (w *bitWriter) code(c uint64, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.bits(c>>uint(i)&1, 1)
	}
}

func (w *bitWriter) bytes() []byte {
	if w.nb > 0 {
		return append(w.out, byte(w.b))
	}
	return w.out
}

// fixedLitCode writes a literal/length symbol with the fixed code.
func (w *bitWriter) fixedLit(sym int) {
	switch {
	case sym < 144:
		w.code(uint64(0x30+sym), 8)
	case sym < 256:
		w.code(uint64(0x190+sym-144), 9)
	case sym < 280:
		w.code(uint64(sym-256), 7)
	default:
		w.code(uint64(0xc0+sym-280), 8)
	}
}

// dynHeader writes a dynamic block header for the given code lengths,
// each length sent with a flat 4-bit code-length code (0..15).
func (w *bitWriter) dynHeader(final bool, lit, dist []uint8) {
	f := uint64(0)
	if final {
		f = 1
	}
	w.bits(f, 1)
	w.bits(2, 2)
	w.bits(uint64(len(lit)-257), 5)
	w.bits(uint64(len(dist)-1), 5)
	w.bits(19-4, 4)
	for _, s := range codeOrder {
		if s < 16 {
			w.bits(4, 3)
		} else {
			w.bits(0, 3)
		}
	}
	for _, l := range append(append([]uint8{}, lit...), dist...) {
		w.code(uint64(l), 4)
	}
}

// canon returns the canonical codes for lengths.
func canon(lens []uint8) []uint64 {
	var count [16]uint64
	for _, l := range lens {
		count[l]++
	}
	count[0] = 0
	var next [16]uint64
	c := uint64(0)
	for n := 1; n < 16; n++ {
		c = (c + count[n-1]) << 1
		next[n] = c
	}
	codes := make([]uint64, len(lens))
	for s, l := range lens {
		if l != 0 {
			codes[s] = next[l]
			next[l]++
		}
	}
	return codes
}

func litLens(m map[int]uint8) []uint8 {
	l := make([]uint8, 257)
	for s, n := range m {
		for s >= len(l) {
			l = append(l, 0)
		}
		l[s] = n
	}
	return l
}

type handCase struct {
	name string
	src  []byte
	n    int
	want []byte // nil: an error
}

func handCases() []handCase {
	var cs []handCase
	add := func(name string, src []byte, n int, want []byte) {
		cs = append(cs, handCase{name, src, n, want})
	}
	emptyFixed := []byte{0x03, 0x00}
	add("empty final fixed block, no output", emptyFixed, 0, []byte{})
	add("empty final fixed block, output wanted", emptyFixed, 1, nil)
	add("empty input", nil, 1, nil)
	stored := []byte{0x01, 0x05, 0x00, 0xfa, 0xff, 'h', 'e', 'l', 'l', 'o'}
	add("stored", stored, 5, []byte("hello"))
	add("stored, stop early", stored, 3, []byte("hel"))
	add("stored, too short", stored, 6, nil)
	add("stored, truncated", stored[:8], 5, nil)
	add("stored, truncated header", stored[:3], 1, nil)
	add("stored, bad NLEN", []byte{0x01, 0x05, 0x00, 0xfb, 0xff, 'h', 'e', 'l', 'l', 'o'}, 5, nil)
	add("stored, trailing bytes ignored", append(append([]byte{}, stored...), 0xff, 0xff, 0x07), 5, []byte("hello"))
	twoStored := []byte{0x00, 0x02, 0x00, 0xfd, 0xff, 'a', 'b', 0x00, 0x00, 0x00, 0xff, 0xff, 0x01, 0x01, 0x00, 0xfe, 0xff, 'c'}
	add("stored, empty stored, stored", twoStored, 3, []byte("abc"))
	add("reserved block type", []byte{0x07, 0, 0, 0}, 1, nil)
	add("reserved block type after output is full", append(append([]byte{}, twoStored[:7]...), 0x07), 2, []byte("ab"))

	// Fixed Huffman: "abc", a match of 258 at distance 3, EOB.
	var w bitWriter
	w.bits(1, 1)
	w.bits(1, 2)
	for _, c := range []byte("abc") {
		w.fixedLit(int(c))
	}
	w.fixedLit(285)
	w.code(2, 5) // distance 3
	w.fixedLit(256)
	want := bytes.Repeat([]byte("abc"), 87)[:261]
	fx := w.bytes()
	add("fixed, 258-byte match", fx, 261, want)
	add("fixed, stop mid-match", fx, 100, want[:100])
	add("fixed, truncated", fx[:len(fx)-2], 261, nil)

	w = bitWriter{}
	w.bits(1, 1)
	w.bits(1, 2)
	w.fixedLit('a')
	w.fixedLit(257)
	w.code(1, 5) // distance 2: before the start
	w.fixedLit(256)
	add("fixed, distance before the start", w.bytes(), 4, nil)
	add("fixed, distance before the start, output already full", w.bytes(), 1, []byte("a"))

	for _, sym := range []int{286, 287} {
		w = bitWriter{}
		w.bits(1, 1)
		w.bits(1, 2)
		w.fixedLit('a')
		w.fixedLit(sym)
		w.code(0, 5)
		w.fixedLit(256)
		add(fmt.Sprintf("fixed, symbol %d", sym), w.bytes(), 5, nil)
	}
	for _, d := range []uint64{30, 31} {
		w = bitWriter{}
		w.bits(1, 1)
		w.bits(1, 2)
		w.fixedLit('a')
		w.fixedLit(257)
		w.code(d, 5)
		w.fixedLit(256)
		add(fmt.Sprintf("fixed, distance symbol %d", d), w.bytes(), 4, nil)
	}

	// Distance 32768 with 258-byte matches, over 32768 random literals.
	rng := rand.New(rand.NewPCG(1, 2))
	w = bitWriter{}
	w.bits(1, 1)
	w.bits(1, 2)
	lits := make([]byte, 32768)
	for i := range lits {
		lits[i] = byte(rng.Uint32())
		w.fixedLit(int(lits[i]))
	}
	w.fixedLit(285)
	w.code(29, 5)
	w.bits(32768-24577, 13)
	w.fixedLit(256)
	want = append(append([]byte{}, lits...), lits[:258]...)
	add("fixed, distance 32768", w.bytes(), len(want), want)

	// Dynamic blocks.
	dyn := func(final bool, lit, dist []uint8, body func(w *bitWriter, lc, dc []uint64)) []byte {
		w := bitWriter{}
		w.dynHeader(final, lit, dist)
		body(&w, canon(lit), canon(dist))
		return w.bytes()
	}
	lit := litLens(map[int]uint8{'a': 1, 'b': 2, 256: 2})
	src := dyn(true, lit, []uint8{0}, func(w *bitWriter, lc, _ []uint64) {
		for _, s := range []int{'a', 'b', 'a', 256} {
			w.code(lc[s], uint(lit[s]))
		}
	})
	add("dynamic, literals only, no distance codes", src, 3, []byte("aba"))
	add("dynamic, literals only, too short", src, 4, nil)

	lit = litLens(map[int]uint8{'a': 1, 257: 2, 256: 2})
	src = dyn(true, lit, []uint8{1}, func(w *bitWriter, lc, dc []uint64) {
		w.code(lc['a'], 1)
		w.code(lc[257], 2)
		w.code(dc[0], 1)
		w.code(lc[256], 2)
	})
	add("dynamic, single distance code of length 1", src, 4, []byte("aaaa"))
	src = dyn(true, lit, []uint8{1}, func(w *bitWriter, lc, dc []uint64) {
		w.code(lc['a'], 1)
		w.code(lc[257], 2)
		w.code(1, 1) // the unused code
		w.code(lc[256], 2)
	})
	add("dynamic, unused code of a single-code distance tree", src, 4, nil)
	src = dyn(true, lit, []uint8{0}, func(w *bitWriter, lc, dc []uint64) {
		w.code(lc['a'], 1)
		w.code(lc[257], 2)
		w.code(0, 1)
		w.code(lc[256], 2)
	})
	add("dynamic, a match with no distance codes", src, 4, nil)
	add("dynamic, incomplete distance tree (two codes of length 2)", dyn(true, lit, []uint8{2, 2}, func(w *bitWriter, lc, _ []uint64) {
		w.code(lc[256], 2)
	}), 0, []byte{})
	add("dynamic, incomplete distance tree, output wanted", dyn(true, lit, []uint8{2, 2}, func(w *bitWriter, lc, _ []uint64) {
		w.code(lc['a'], 1)
		w.code(lc[256], 2)
	}), 1, nil)
	lit = litLens(map[int]uint8{'a': 1, 256: 2})
	add("dynamic, incomplete literal tree", dyn(true, lit, []uint8{0}, func(w *bitWriter, lc, _ []uint64) {
		w.code(lc['a'], 1)
		w.code(lc[256], 2)
	}), 1, nil)
	lit = litLens(map[int]uint8{'a': 1, 'b': 1, 256: 1})
	add("dynamic, oversubscribed literal tree", dyn(true, lit, []uint8{0}, func(w *bitWriter, lc, _ []uint64) {
		w.code(lc['a'], 1)
	}), 1, nil)
	lit = litLens(map[int]uint8{256: 1})
	add("dynamic, single literal/length code (EOB)", dyn(false, lit, []uint8{0}, func(w *bitWriter, lc, _ []uint64) {
		w.code(0, 1)
		w.bits(1, 1) // next block: final, fixed, EOB
		w.bits(1, 2)
		w.fixedLit('z')
		w.fixedLit(256)
	}), 1, []byte("z"))

	// The EOB code is longer than the literal: compress/flate reads the
	// EOB's length of bits before a symbol, so a literal in the last
	// bits is refused.
	lit = litLens(map[int]uint8{'a': 1, 'b': 2, 'c': 3, 256: 3})
	src = dyn(true, lit, []uint8{0}, func(w *bitWriter, lc, _ []uint64) {
		for w.nb != 6 {
			w.code(lc['a'], 1)
		}
	})
	na := fullLen(src)
	add("dynamic, literal in the last bits with a longer EOB", src, na+1, nil)
	add("dynamic, literals before the last bits", src, na, bytes.Repeat([]byte("a"), na))

	// Bad code-length codes.
	w = dynamicHeader()
	for range 19 {
		w.bits(1, 3)
	}
	w.bits(0, 16)
	add("dynamic, oversubscribed code-length code", w.bytes(), 1, nil)
	w = dynamicHeader()
	w.repeatCodes()
	w.code(0, 2) // code for 0 is 00, 16 is 01 ... canonical: 0,16,17,18
	w.code(1, 2) // 16 after one length: fine
	w.bits(0, 2)
	badStart := dynamicHeader()
	badStart.repeatCodes()
	badStart.code(1, 2) // 16 first
	badStart.bits(0, 16)
	add("dynamic, repeat code 16 first", badStart.bytes(), 1, nil)
	long := dynamicHeader()
	long.repeatCodes()
	for range 2 { // 2 * 138 zeros > 258 lengths
		long.code(3, 2)
		long.bits(127, 7)
	}
	long.bits(0, 16)
	add("dynamic, repeat past the end", long.bytes(), 1, nil)
	w = bitWriter{}
	w.bits(1, 1)
	w.bits(2, 2)
	w.bits(30, 5) // 287 literal/length codes
	w.bits(0, 5)
	w.bits(0, 4)
	w.bits(0, 32)
	add("dynamic, HLIT too big", w.bytes(), 1, nil)
	w = bitWriter{}
	w.bits(1, 1)
	w.bits(2, 2)
	w.bits(0, 5)
	w.bits(30, 5) // 31 distance codes
	w.bits(0, 4)
	w.bits(0, 32)
	add("dynamic, HDIST too big", w.bytes(), 1, nil)
	return cs
}

func TestHandMade(t *testing.T) {
	for _, c := range handCases() {
		t.Run(c.name, func(t *testing.T) {
			dst := make([]byte, c.n)
			n, err := Decode(dst, c.src)
			if c.want == nil {
				if err == nil {
					t.Fatalf("Decode succeeded, want an error")
				}
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrShort) {
					t.Fatalf("error %v wraps neither sentinel", err)
				}
			} else {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if n != c.n || !bytes.Equal(dst, c.want) {
					t.Fatalf("wrong output (n=%d)", n)
				}
			}
			// The judge agrees with the stated verdict.
			ref, ok := judge(c.src, c.n)
			if ok != (c.want != nil) || (ok && !bytes.Equal(ref, c.want)) {
				t.Fatalf("compress/flate disagrees with the case: ok=%v", ok)
			}
		})
	}
}

// streams returns compressed streams of mixed data from the peers.
func streams(t testing.TB) [][]byte {
	rng := rand.New(rand.NewPCG(7, 8))
	var out [][]byte
	for i, size := range []int{1, 100, 5000, 64 << 10, 70000} {
		data := mixed(rng, size)
		for level := -2; level <= 9; level++ {
			var buf bytes.Buffer
			fw, err := flate.NewWriter(&buf, level)
			if err != nil {
				t.Fatal(err)
			}
			fw.Write(data)
			if i%2 == 0 {
				fw.Flush() // an empty stored block mid-stream
				fw.Write(data[:len(data)/2])
			}
			fw.Close()
			out = append(out, buf.Bytes())
			var kbuf bytes.Buffer
			kw, err := kflate.NewWriter(&kbuf, level)
			if err != nil {
				t.Fatal(err)
			}
			kw.Write(data)
			kw.Close()
			out = append(out, kbuf.Bytes())
		}
	}
	return out
}

func TestPeerStreams(t *testing.T) {
	for _, src := range streams(t) {
		n := fullLen(src)
		for _, m := range []int{n, n + 1, n - 1, n / 2, 1, 0} {
			if m >= 0 {
				check(t, src, m)
			}
		}
		check(t, src[:len(src)-1], n)
		check(t, src[:len(src)/2], n)
		check(t, append(append([]byte{}, src...), 0xde, 0xad, 0xbe, 0xef), n)
	}
}

// TestMutations runs seeded random mutations of the seed streams through
// the judge on every run (the fuzzer has stalled on this machine before).
func TestMutations(t *testing.T) {
	seeds := streams(t)
	for _, c := range handCases() {
		seeds = append(seeds, c.src)
	}
	rng := rand.New(rand.NewPCG(11, 12))
	iters := 4000
	if testing.Short() {
		iters = 500
	}
	for i := range iters {
		src := append([]byte{}, seeds[rng.IntN(len(seeds))]...)
		if len(src) == 0 {
			continue
		}
		if len(src) > 4096 && rng.IntN(2) == 0 {
			src = src[:4096+rng.IntN(len(src)-4096)]
		}
		switch rng.IntN(4) {
		case 0: // flip bits
			for range 1 + rng.IntN(4) {
				src[rng.IntN(len(src))] ^= 1 << rng.IntN(8)
			}
		case 1: // random byte in the first bytes (the header)
			src[rng.IntN(min(len(src), 40))] = byte(rng.Uint32())
		case 2: // truncate
			src = src[:rng.IntN(len(src))]
		default: // overwrite a run
			p := rng.IntN(len(src))
			for j := p; j < min(len(src), p+1+rng.IntN(16)); j++ {
				src[j] = byte(rng.Uint32())
			}
		}
		n := fullLen(src)
		switch rng.IntN(3) {
		case 0:
			n++
		case 1:
			n = rng.IntN(n + 1)
		}
		if t.Failed() {
			return
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("mutation %d: panic %v (src %x)", i, r, trunc(src))
				}
			}()
			check(t, src, n)
		}()
	}
}

func FuzzDecode(f *testing.F) {
	// The seed corpus is in testdata/fuzz/FuzzDecode (TestWriteCorpus).
	f.Fuzz(func(t *testing.T, src []byte, size int32) {
		n := int(size)
		if n < 0 {
			n = fullLen(src) + int(-(int64(n)+1)%3)
		}
		n %= maxFuzzOut + 1
		check(t, src, n)
	})
}

// TestWriteCorpus writes the fuzz seed corpus when INFLATE_WRITE_CORPUS=1,
// and otherwise checks it is there.
func TestWriteCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if os.Getenv("INFLATE_WRITE_CORPUS") != "1" {
		ents, err := os.ReadDir(dir)
		if err != nil || len(ents) < 20 {
			t.Fatalf("seed corpus %s: %d files, %v", dir, len(ents), err)
		}
		return
	}
	var seeds [][]byte
	for _, s := range streams(t) {
		if len(s) < 8000 {
			seeds = append(seeds, s)
		}
	}
	for _, c := range handCases() {
		seeds = append(seeds, c.src)
	}
	for i, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nint32(-1)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%03d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fixedMatch writes a match with the fixed code.
func (w *bitWriter) fixedMatch(length, dist int) {
	for i := len(lenBase) - 1; i >= 0; i-- {
		if int(lenBase[i]) <= length {
			w.fixedLit(257 + i)
			w.bits(uint64(length-int(lenBase[i])), uint(lenExtra[i]))
			break
		}
	}
	for i := len(distBase) - 1; i >= 0; i-- {
		if int(distBase[i]) <= dist {
			w.code(uint64(i), 5)
			w.bits(uint64(dist-int(distBase[i])), uint(distExtra[i]))
			break
		}
	}
}

// TestMatchCopies: every distance 1..40 with every length 3..258 (and
// some after the first 32 KiB), in the fast loop (output and input to
// spare) and the careful loop (output ending inside the match).
func TestMatchCopies(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for dist := 1; dist <= 40; dist++ {
		var w bitWriter
		w.bits(1, 1)
		w.bits(1, 2)
		var want []byte
		lit := func(n int) {
			for range n {
				c := byte('a' + rng.IntN(26))
				w.fixedLit(int(c))
				want = append(want, c)
			}
		}
		lit(dist)
		for length := 3; length <= 258; length++ {
			w.fixedMatch(length, dist)
			for range length {
				want = append(want, want[len(want)-dist])
			}
			lit(rng.IntN(3))
		}
		lit(400)
		w.fixedLit(256)
		src := w.bytes()
		dst := make([]byte, len(want))
		if _, err := Decode(dst, src); err != nil || !bytes.Equal(dst, want) {
			t.Fatalf("dist %d: err %v, equal %v", dist, err, bytes.Equal(dst, want))
		}
		for _, n := range []int{len(want), len(want) - 1, len(want) - 300, 1000, 100} {
			check(t, src, n)
		}
	}
}

// dynamicHeader starts a final dynamic block with 257 literal/length
// codes, 1 distance code and 19 code-length codes.
func dynamicHeader() bitWriter {
	w := bitWriter{}
	w.bits(1, 1)
	w.bits(2, 2)
	w.bits(0, 5)
	w.bits(0, 5)
	w.bits(19-4, 4)
	return w
}

// repeatCodes writes the code-length code lengths: 2 bits for 16, 17, 18
// and 0 (canonical codes 00 for 0, then 16, 17, 18), none for the others.
func (w *bitWriter) repeatCodes() {
	for _, s := range codeOrder {
		if s == 16 || s == 17 || s == 18 || s == 0 {
			w.bits(2, 3)
		} else {
			w.bits(0, 3)
		}
	}
}
