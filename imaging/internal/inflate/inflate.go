// Package inflate is a one-shot raw DEFLATE (RFC 1951) decoder for
// buffers whose decompressed size is known, such as qcow2 "zlib" clusters.
//
// The whole output is in memory, so dst itself is the window: there is no
// dictionary and no copy-out. The bit buffer is 64 bits wide and refilled
// eight bytes at a time; the Huffman tables are libdeflate-style (one
// lookup gives a literal, or a length base with its extra-bit count, with a
// sub-table for long codes). A fast loop runs while there is enough input
// and output margin; a careful loop decodes the ends.
//
// Its verdicts follow Go's compress/flate read through io.ReadFull: Decode
// succeeds exactly when those would fill dst, and then writes the same
// bytes.
package inflate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

// ErrCorrupt is wrapped by every error Decode returns for an invalid stream.
var ErrCorrupt = errors.New("corrupt deflate stream")

// ErrShort is wrapped when the stream ends (final block done or input
// exhausted) before dst is full.
var ErrShort = errors.New("deflate stream ends before the output is full")

type corrupt string

func (c corrupt) Error() string { return ErrCorrupt.Error() + ": " + string(c) }
func (c corrupt) Unwrap() error { return ErrCorrupt }

type short string

func (c short) Error() string { return ErrShort.Error() + ": " + string(c) }
func (c short) Unwrap() error { return ErrShort }

const (
	errTruncated   = short("input truncated")
	errFinal       = short("final block ended")
	errBlockType   = corrupt("reserved block type 3")
	errStoredLen   = corrupt("stored block LEN/NLEN mismatch")
	errNumLit      = corrupt("too many literal/length codes")
	errNumDist     = corrupt("too many distance codes")
	errCodeLenTree = corrupt("invalid code-length code")
	errRepeatFirst = corrupt("repeat of a previous length with none")
	errRepeatLong  = corrupt("code-length repeat runs past the end")
	errLitTree     = corrupt("invalid literal/length code")
	errDistTree    = corrupt("invalid distance code")
	errSymbol      = corrupt("invalid literal/length symbol")
	errDistSym     = corrupt("invalid distance symbol")
	errDistFar     = corrupt("distance reaches before the start of the output")
)

// Table entries (uint32):
//
//	bits 0-7   bits to consume: the code's length plus its extra bits
//	           (0 for a sub-table pointer or no code)
//	bits 8-11  the code's length, or the sub-table's index bits
//	bit  12    literal
//	bit  13    sub-table pointer
//	bit  14    end of block
//	bit  15    invalid symbol (or no code: incomplete tree)
//	bits 16-31 literal byte, length or distance base, symbol, or sub-table offset
//
// So a length or distance is e>>16 + (b & (1<<(e&63)-1)) >> (e>>8&15),
// consuming e&63 bits at once.
const (
	fLit     = 1 << 12
	fSub     = 1 << 13
	fEOB     = 1 << 14
	fInvalid = 1 << 15

	litBits  = 11
	distBits = 8
	clBits   = 7

	// Sizes with room for the sub-tables; build refuses to overflow them
	// (see the bounds in build's comment).
	litTableSize  = 1<<litBits + 1024
	distTableSize = 1<<distBits + 1024
	clTableSize   = 1 << clBits

	maxLit   = 286
	maxDist  = 30
	maxCodes = 19
)

var lenBase = [29]uint32{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
var lenExtra = [29]uint32{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
var distBase = [30]uint32{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
var distExtra = [30]uint32{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}

var codeOrder = [maxCodes]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

// Payloads (entries without their code length) per symbol.
var litPayload, distPayload, clPayload = func() (l [288]uint32, d [32]uint32, c [maxCodes]uint32) {
	for s := range 256 {
		l[s] = uint32(s)<<16 | fLit
	}
	l[256] = fEOB
	for s := 257; s < 286; s++ {
		l[s] = lenBase[s-257]<<16 | lenExtra[s-257]
	}
	l[286], l[287] = fInvalid, fInvalid
	for s := range 30 {
		d[s] = distBase[s]<<16 | distExtra[s]
	}
	d[30], d[31] = fInvalid, fInvalid
	for s := range maxCodes {
		c[s] = uint32(s) << 16
	}
	return
}()

// The fixed Huffman tables (RFC 1951 3.2.6), built once.
var fixedLit, fixedDist = func() (*[litTableSize]uint32, *[distTableSize]uint32) {
	var lens [288]uint8
	for i := range lens {
		switch {
		case i < 144:
			lens[i] = 8
		case i < 256:
			lens[i] = 9
		case i < 280:
			lens[i] = 7
		default:
			lens[i] = 8
		}
	}
	var dl [32]uint8
	for i := range dl {
		dl[i] = 5
	}
	lt, dt := new([litTableSize]uint32), new([distTableSize]uint32)
	if _, ok := build(lt[:], lens[:], litPayload[:], litBits); !ok {
		panic("inflate: fixed literal/length table")
	}
	if _, ok := build(dt[:], dl[:], distPayload[:], distBits); !ok {
		panic("inflate: fixed distance table")
	}
	return lt, dt
}()

// build fills table (main table of 1<<mainBits entries, then sub-tables)
// for the code lengths lens, with payload[sym] per symbol. It returns the
// shortest code length and whether the code is acceptable: complete, or
// (as compress/flate and zlib allow) a single code of length 1, or empty.
// Entries without a code are invalid.
//
// Sub-table bound: a sub-table of depth d (2^d entries) belongs to a
// complete subtree, which holds at least d+1 codes; with 2^d/(d+1) at most
// 16/5 (litlen, d <= 4) and 128/8 (distance, d <= 7), the sub-tables need at
// most 3.2*286 and 16*30 entries. build checks it anyway.
func build(table []uint32, lens []uint8, payload []uint32, mainBits uint) (minLen uint32, ok bool) {
	var count [16]uint32
	for _, n := range lens {
		count[n]++
	}
	count[0] = 0
	var maxLen uint32
	for n := uint32(15); n > 0; n-- {
		if count[n] != 0 {
			if maxLen == 0 {
				maxLen = n
			}
			minLen = n
		}
	}
	// Kraft sum in units of 2^-maxLen, as compress/flate checks it.
	var code uint32
	var next [16]uint32
	for n := uint32(1); n <= maxLen; n++ {
		code <<= 1
		next[n] = code
		code += count[n]
	}
	if code != 1<<maxLen && (code != 1 || maxLen != 1) && maxLen != 0 {
		return 0, false
	}
	// The symbols sorted by code length (counting sort), so that the
	// canonical codes come in order: next[len]++.
	var offs [17]uint16
	for n := 1; n < 16; n++ {
		offs[n+1] = offs[n] + uint16(count[n])
	}
	var sorted [288]uint16
	for sym, n := range lens {
		if n != 0 {
			sorted[offs[n]] = uint16(sym)
			offs[n]++
		}
	}
	// The main table is built doubling: at length l, table[:1<<l] holds
	// the codes up to l, each once (index: the code's bits reversed),
	// then it is copied onto the next 1<<l entries for length l+1. The
	// entries no code reaches (an incomplete code) stay invalid; those of
	// the long codes' prefixes become sub-table pointers below.
	table[0], table[1] = fInvalid, fInvalid
	k := 0
	for l := uint32(1); l <= uint32(mainBits); l++ {
		if l > 1 {
			copy(table[1<<(l-1):1<<l], table[:1<<(l-1)])
		}
		for range count[l] {
			sym := sorted[k]
			k++
			c := next[l]
			next[l]++
			table[reverse(c, l)] = payload[sym] + l | l<<8
		}
	}
	if maxLen <= uint32(mainBits) {
		return minLen, true
	}
	// Codes longer than mainBits, in canonical order, grouped by their
	// first mainBits bits (prefix p, the main-table index): a group is
	// contiguous, a complete subtree, and its last code is its longest,
	// which sets its sub-table's size.
	used := uint32(1) << mainBits
	long := sorted[k:offs[15]]
	for i := 0; i < len(long); {
		l := uint32(lens[long[i]])
		p := reverse(next[l]>>(l-uint32(mainBits)), uint32(mainBits))
		// Find the group's end and longest code.
		j, nx := i, next
		var deepest uint32
		for ; j < len(long); j++ {
			lj := uint32(lens[long[j]])
			if reverse(nx[lj]>>(lj-uint32(mainBits)), uint32(mainBits)) != p {
				break
			}
			nx[lj]++
			deepest = lj
		}
		sb := deepest - uint32(mainBits)
		if used+1<<sb > uint32(len(table)) {
			return 0, false
		}
		table[p] = used<<16 | sb<<8 | fSub
		for ; i < j; i++ {
			sym := long[i]
			l := uint32(lens[sym])
			c := next[l]
			next[l]++
			rl := l - uint32(mainBits)
			e := payload[sym] + l | l<<8
			for x := reverse(c&(1<<rl-1), rl); x < 1<<sb; x += 1 << rl {
				table[used+x] = e
			}
		}
		used += 1 << sb
	}
	return minLen, true
}

// reverse returns the low n bits of c in reverse order.
func reverse(c, n uint32) uint32 {
	return uint32(bits.Reverse16(uint16(c))) >> (16 - n)
}

type decoder struct {
	lit  [litTableSize]uint32
	dist [distTableSize]uint32
	cl   [clTableSize]uint32
	lens [maxLit + maxDist]uint8
}

var pool = sync.Pool{New: func() any { return new(decoder) }}

// Decode decodes the raw DEFLATE stream in src into dst and returns the
// number of bytes written. It succeeds when dst is full, even mid-block,
// and ignores what follows in src. An invalid stream gives an error
// wrapping ErrCorrupt; a stream that ends before dst is full gives one
// wrapping ErrShort. The work is bounded by len(src)+len(dst).
func Decode(dst, src []byte) (int, error) {
	if len(dst) == 0 {
		return 0, nil
	}
	d := pool.Get().(*decoder)
	n, err := d.decode(dst, src)
	pool.Put(d)
	if err != nil {
		return n, fmt.Errorf("inflate at output byte %d: %w", n, err)
	}
	return n, nil
}

// bits is the careful bit reader used for headers and the ends. Invariant:
// consumed input bits = ip*8 - nb; the bits of b above nb are zero or the
// next input bits (the fast loop's refill leaves those).
type bitReader struct {
	src []byte
	ip  int
	b   uint64
	nb  uint
}

// refill loads whole bytes while there is room and input.
func (r *bitReader) refill() {
	for r.nb <= 56 && r.ip < len(r.src) {
		r.b |= uint64(r.src[r.ip]) << r.nb
		r.ip++
		r.nb += 8
	}
}

// need makes n (<= 57) bits available, or reports that the input ends.
func (r *bitReader) need(n uint) bool {
	if r.nb < n {
		r.refill()
		if r.nb < n {
			return false
		}
	}
	return true
}

func (r *bitReader) take(n uint) uint32 {
	v := uint32(r.b & (1<<n - 1))
	r.b >>= n
	r.nb -= n
	return v
}

func (d *decoder) decode(dst, src []byte) (int, error) {
	r := bitReader{src: src}
	pos := 0
	for {
		if pos >= len(dst) {
			return pos, nil
		}
		if !r.need(3) {
			return pos, errTruncated
		}
		final := r.take(1) == 1
		var lt *[litTableSize]uint32
		var dt *[distTableSize]uint32
		var litMin uint32
		switch r.take(2) {
		case 0:
			// Stored: drop the partial byte; the whole bytes left in
			// the buffer are given back to the input.
			r.take(r.nb & 7)
			r.ip -= int(r.nb >> 3)
			r.b, r.nb = 0, 0
			if r.ip+4 > len(src) {
				return pos, errTruncated
			}
			n := int(src[r.ip]) | int(src[r.ip+1])<<8
			nn := int(src[r.ip+2]) | int(src[r.ip+3])<<8
			r.ip += 4
			if uint16(nn) != ^uint16(n) {
				return pos, errStoredLen
			}
			m := copy(dst[pos:], src[r.ip:min(len(src), r.ip+n)])
			pos += m
			r.ip += m
			if pos >= len(dst) {
				return pos, nil
			}
			if m < n {
				return pos, errTruncated
			}
			if final {
				return pos, errFinal
			}
			continue
		case 1:
			lt, dt, litMin = fixedLit, fixedDist, 7
		case 2:
			var err error
			if litMin, err = d.readTables(&r); err != nil {
				return pos, err
			}
			lt, dt = &d.lit, &d.dist
		default:
			return pos, errBlockType
		}
		var err error
		var eob bool
		pos, eob, err = decodeBlock(dst, pos, &r, lt, dt, litMin)
		if err != nil || !eob {
			return pos, err // error, or dst full
		}
		if final {
			return pos, errFinal
		}
	}
}

// readTables reads a dynamic block's code lengths and builds d.lit and
// d.dist. It returns the fewest bits compress/flate reads for a
// literal/length symbol: the shortest code, at least the end-of-block
// code's length.
func (d *decoder) readTables(r *bitReader) (uint32, error) {
	if !r.need(14) {
		return 0, errTruncated
	}
	nlit := int(r.take(5)) + 257
	ndist := int(r.take(5)) + 1
	nclen := int(r.take(4)) + 4
	if nlit > maxLit {
		return 0, errNumLit
	}
	if ndist > maxDist {
		return 0, errNumDist
	}
	var cll [maxCodes]uint8
	for i := range nclen {
		if !r.need(3) {
			return 0, errTruncated
		}
		cll[codeOrder[i]] = uint8(r.take(3))
	}
	if _, ok := build(d.cl[:], cll[:], clPayload[:], clBits); !ok {
		return 0, errCodeLenTree
	}
	lens := d.lens[:nlit+ndist]
	for i := 0; i < len(lens); {
		r.refill()
		e := d.cl[r.b&(clTableSize-1)]
		l := uint(e & 63)
		if e&fInvalid != 0 || l == 0 {
			return 0, errCodeLenTree
		}
		if r.nb < l {
			return 0, errTruncated
		}
		r.take(l)
		x := e >> 16
		if x < 16 {
			lens[i] = uint8(x)
			i++
			continue
		}
		var rep int
		var nb uint
		var v uint8
		switch x {
		case 16:
			if i == 0 {
				return 0, errRepeatFirst
			}
			rep, nb, v = 3, 2, lens[i-1]
		case 17:
			rep, nb = 3, 3
		default:
			rep, nb = 11, 7
		}
		if !r.need(nb) {
			return 0, errTruncated
		}
		rep += int(r.take(nb))
		if i+rep > len(lens) {
			return 0, errRepeatLong
		}
		for range rep {
			lens[i] = v
			i++
		}
	}
	litMin, ok := build(d.lit[:], lens[:nlit], litPayload[:], litBits)
	if !ok {
		return 0, errLitTree
	}
	if _, ok := build(d.dist[:], lens[nlit:], distPayload[:], distBits); !ok {
		return 0, errDistTree
	}
	litMin = max(litMin, uint32(lens[256]))
	return litMin, nil
}

const (
	// fastIn: input the fast loop keeps in reserve (two 8-byte refills
	// an iteration, each advancing at most 7 bytes).
	fastIn = 16
	// fastOut: output margin: two literals and a 258-byte match copied
	// in 16-byte steps (up to 15 bytes past its end).
	fastOut = 2 + 258 + 15
)

// decodeBlock decodes one Huffman block's symbols from pos. It returns
// eob=true at the end of the block, false when dst is full.
func decodeBlock(dst []byte, pos int, r *bitReader, lt *[litTableSize]uint32, dt *[distTableSize]uint32, litMin uint32) (int, bool, error) {
	src := r.src
	ip, b, nb := r.ip, r.b, r.nb
	// Fast loop: no checks on the input end (there are fastIn bytes left
	// at the top) nor the output end (fastOut bytes of room).
	inLim, outLim := len(src)-fastIn, len(dst)-fastOut
	for ip <= inLim && pos <= outLim {
		b |= binary.LittleEndian.Uint64(src[ip:]) << (nb & 63)
		ip += int(63-nb) >> 3
		nb |= 56
		// nb >= 56: up to three literals (15 bits each), or two and a
		// length code (20 bits with its extra bits).
		e := lt[b&(1<<litBits-1)]
		if e&fLit != 0 {
			b >>= e & 63
			nb -= uint(e & 63)
			dst[pos] = byte(e >> 16)
			pos++
			e = lt[b&(1<<litBits-1)]
			if e&fLit != 0 {
				b >>= e & 63
				nb -= uint(e & 63)
				dst[pos] = byte(e >> 16)
				pos++
				e = lt[b&(1<<litBits-1)]
				if e&fLit != 0 {
					b >>= e & 63
					nb -= uint(e & 63)
					dst[pos] = byte(e >> 16)
					pos++
					continue
				}
			}
		}
		if e&fSub != 0 {
			e = lt[e>>16+uint32(b>>litBits)&(1<<(e>>8&15)-1)]
			if e&fLit != 0 {
				b >>= e & 63
				nb -= uint(e & 63)
				dst[pos] = byte(e >> 16)
				pos++
				continue
			}
		}
		if e&(fEOB|fInvalid) != 0 {
			if e&fEOB != 0 {
				b >>= e & 63
				nb -= uint(e & 63)
				r.ip, r.b, r.nb = ip, b, nb
				return pos, true, nil
			}
			return pos, false, errSymbol
		}
		saved := b
		b >>= e & 63
		nb -= uint(e & 63)
		length := int(e>>16) + int(saved&(1<<(e&63)-1)>>(e>>8&15))
		if nb < 28 {
			b |= binary.LittleEndian.Uint64(src[ip:]) << (nb & 63)
			ip += int(63-nb) >> 3
			nb |= 56
		}
		e = dt[b&(1<<distBits-1)]
		if e&fSub != 0 {
			e = dt[e>>16+uint32(b>>distBits)&(1<<(e>>8&15)-1)]
		}
		if e&fInvalid != 0 {
			return pos, false, errDistSym
		}
		saved = b
		b >>= e & 63
		nb -= uint(e & 63)
		dist := int(e>>16) + int(saved&(1<<(e&63)-1)>>(e>>8&15))
		if dist > pos {
			return pos, false, errDistFar
		}
		// Copy the match; the steps may write past its end (there is
		// room, and later output overwrites them).
		end := pos + length
		s := pos - dist
		switch {
		case dist >= 16:
			for pos < end {
				v0 := binary.LittleEndian.Uint64(dst[s:])
				v1 := binary.LittleEndian.Uint64(dst[s+8:])
				binary.LittleEndian.PutUint64(dst[pos:], v0)
				binary.LittleEndian.PutUint64(dst[pos+8:], v1)
				pos += 16
				s += 16
			}
		case dist >= 8:
			for pos < end {
				binary.LittleEndian.PutUint64(dst[pos:], binary.LittleEndian.Uint64(dst[s:]))
				pos += 8
				s += 8
			}
		case dist == 1:
			v := uint64(dst[s]) * 0x0101010101010101
			for pos < end {
				binary.LittleEndian.PutUint64(dst[pos:], v)
				binary.LittleEndian.PutUint64(dst[pos+8:], v)
				pos += 16
			}
		default:
			// 2..7: eight bytes one at a time, then 8-byte steps from
			// a multiple of dist that is at least 8 back (the bytes
			// from s on repeat with period dist).
			_ = dst[pos+7]
			for i := range 8 {
				dst[pos+i] = dst[s+i]
			}
			pos += 8
			s = pos - dist*((8+dist-1)/dist)
			for pos < end {
				binary.LittleEndian.PutUint64(dst[pos:], binary.LittleEndian.Uint64(dst[s:]))
				pos += 8
				s += 8
			}
		}
		pos = end
	}

	// Careful loop: every bit and every byte checked. The bits above nb
	// that the fast refill left are dropped, so an exhausted input reads
	// as zeros and nb tells how many bits are real.
	b &= 1<<(nb&63) - 1
	r.ip, r.b, r.nb = ip, b, nb
	for {
		if pos >= len(dst) {
			return pos, false, nil
		}
		r.refill()
		e := lt[r.b&(1<<litBits-1)]
		if e&fSub != 0 {
			e = lt[e>>16+uint32(r.b>>litBits)&(1<<(e>>8&15)-1)]
		}
		l := e & 63
		if e&fInvalid != 0 && l == 0 {
			// No code (incomplete tree): compress/flate reads its
			// minimum bits first, then refuses.
			if uint32(r.nb) < litMin {
				return pos, false, errTruncated
			}
			return pos, false, errSymbol
		}
		// compress/flate reads at least litMin bits, then the code and
		// its extra bits.
		if uint32(r.nb) < max(l, litMin) {
			return pos, false, errTruncated
		}
		saved := r.b
		r.take(uint(l))
		if e&fLit != 0 {
			dst[pos] = byte(e >> 16)
			pos++
			continue
		}
		if e&fEOB != 0 {
			return pos, true, nil
		}
		if e&fInvalid != 0 {
			return pos, false, errSymbol
		}
		length := int(e>>16) + int(saved&(1<<l-1)>>(e>>8&15))
		r.refill()
		e = dt[r.b&(1<<distBits-1)]
		if e&fSub != 0 {
			e = dt[e>>16+uint32(r.b>>distBits)&(1<<(e>>8&15)-1)]
		}
		l = e & 63
		if e&fInvalid != 0 {
			return pos, false, errDistSym
		}
		if uint32(r.nb) < l {
			return pos, false, errTruncated
		}
		saved = r.b
		r.take(uint(l))
		dist := int(e>>16) + int(saved&(1<<l-1)>>(e>>8&15))
		if dist > pos {
			return pos, false, errDistFar
		}
		n := min(length, len(dst)-pos)
		for i := range n {
			dst[pos+i] = dst[pos+i-dist]
		}
		pos += n
	}
}
