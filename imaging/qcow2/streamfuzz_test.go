package qcow2_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testimage"
)

// streamSeeds are fuzzSeeds plus layouts and pokes for the streamed
// parser (after qemu-iotests 080): data before its tables, the L1 table
// beyond the file, the refcount table over the L1 table, a huge L1 size,
// cluster_bits out of range, a compressed cluster crossing the end of the
// file, a backing file, encryption, an L2 table used twice.
func streamSeeds(f testing.TB) [][]byte {
	seeds := fuzzSeedsT(f)
	raw := make([]byte, 48<<10)
	for i := range raw {
		if (i/4096)%3 != 1 {
			raw[i] = byte(i * 5 / 11)
		}
	}
	be := binary.BigEndian
	for _, cb := range []uint{9, 12} {
		last, err := testimage.Qcow2Layout(raw, cb, testimage.TablesLast)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, last)
	}
	base, err := testimage.Qcow2(raw, 12)
	if err != nil {
		f.Fatal(err)
	}
	info, err := qcow2.ParseHeader(base)
	if err != nil {
		f.Fatal(err)
	}
	l1 := info.L1Offset
	l2 := int64(be.Uint64(base[l1:]) & 0x00fffffffffffe00)
	poke := func(fn func(b []byte)) {
		b := bytes.Clone(base)
		fn(b)
		seeds = append(seeds, b)
	}
	poke(func(b []byte) { be.PutUint64(b[40:], uint64(len(b))+4096) })         // L1 beyond the file
	poke(func(b []byte) { be.PutUint64(b[48:], uint64(l1)) })                  // refcount table over the L1 table
	poke(func(b []byte) { be.PutUint32(b[36:], 1<<28) })                       // huge L1
	poke(func(b []byte) { be.PutUint32(b[20:], 8) })                           // cluster_bits too small
	poke(func(b []byte) { be.PutUint32(b[20:], 22) })                          // cluster_bits too large
	poke(func(b []byte) { be.PutUint64(b[8:], 512); be.PutUint32(b[16:], 8) }) // backing file
	poke(func(b []byte) { be.PutUint32(b[32:], 2) })                           // encryption (LUKS)
	poke(func(b []byte) { be.PutUint64(b[l1+8:], be.Uint64(b[l1:])) })         // an L2 table used twice
	poke(func(b []byte) { be.PutUint64(b[l2:], uint64(l1)|1<<63) })            // data over the L1 table
	poke(func(b []byte) {
		// The first compressed cluster reaches past the end of the file.
		for j := int64(0); j < 512; j++ {
			e := be.Uint64(b[l2+j*8:])
			if e&(1<<62) != 0 {
				x := 62 - (12 - 8)
				be.PutUint64(b[l2+j*8:], 1<<62|uint64(3)<<x|uint64(len(b)-100))
				return
			}
		}
	})
	return seeds
}

// FuzzStream feeds the streamed parser: nothing may panic, hang or
// allocate without bound; a fallback happens before any write with the
// replay intact; a failure leaves no partition table; and an image it
// converts is one Check accepts, converted to the bytes Convert makes of it.
func FuzzStream(f *testing.F) {
	qcow2.RegisterDecompressors()
	qcow2.RouteWarnings(nil)
	for _, s := range streamSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(checkStream)
}

// checkStream is FuzzStream's judge of one input.
func checkStream(t *testing.T, img []byte) {
	const tsize = 6 << 20
	dst := imagingtest.NewMemTarget(tsize, 0xEE)
	_, err := streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{
		Workers: 2, HoldLimit: 256 << 10, LookBehindLimit: 128 << 10})
	var ns *qcow2.NotStreamableError
	switch {
	case errors.As(err, &ns):
		if !bytes.Equal(ns.Replay, img[:min(len(ns.Replay), len(img))]) || len(ns.Replay) > len(img) {
			t.Fatal("the replay is not the stream's head")
		}
		if dst.Writes != 0 || dst.Zeroings != 0 {
			t.Fatalf("fallback after %d writes and %d zeroings", dst.Writes, dst.Zeroings)
		}
		return
	case err != nil:
		if _, ok := imaging.HasPartitionTable(dst.B[:imaging.HeadSize]); ok {
			t.Fatalf("partition table left after %v", err)
		}
		return
	}
	info, cerr := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", tsize)
	if cerr != nil {
		t.Fatalf("Stream converted an image Check refuses: %v", cerr)
	}
	ref := imagingtest.NewMemTarget(tsize, 0xEE)
	if err := deploy(context.Background(), bytes.NewReader(img), int64(len(img)), ref, qcow2.ConvertOptions{Workers: 2, ChunkSize: 1 << 20}); err != nil {
		return // go-qcow2reader may refuse what the stream took; the bytes below are what matters
	}
	if !bytes.Equal(dst.B[:info.VirtualSize], ref.B[:info.VirtualSize]) {
		t.Fatal("streamed disk differs from Convert's")
	}
}

// TestStreamMutations runs FuzzStream's judge over seeded random mutations
// of its seeds (byte pokes in the header and tables, truncations), so
// that every run of the suite fuzzes a little.
func TestStreamMutations(t *testing.T) {
	qcow2.RegisterDecompressors()
	qcow2.RouteWarnings(nil)
	seeds := streamSeeds(t)
	rng := rand.New(rand.NewPCG(27, 2))
	n := 600
	if testing.Short() {
		n = 100
	}
	for i := range n {
		img := bytes.Clone(seeds[rng.IntN(len(seeds))])
		for range 1 + rng.IntN(4) {
			switch rng.IntN(5) {
			case 0: // the header
				img[rng.IntN(min(len(img), 112))] ^= byte(1 << rng.IntN(8))
			case 1: // anywhere
				img[rng.IntN(len(img))] = byte(rng.Uint32())
			case 2: // a whole big-endian word
				if len(img) > 8 {
					o := rng.IntN(len(img)-8) &^ 7
					binary.BigEndian.PutUint64(img[o:], rng.Uint64()>>rng.IntN(64))
				}
			case 3: // truncate
				img = img[:rng.IntN(len(img))+1]
			case 4: // flip a bit anywhere
				img[rng.IntN(len(img))] ^= byte(1 << rng.IntN(8))
			}
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) { checkStream(t, img) })
	}
}
