package partition

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unicode/utf16"
)

// GPT header layout, UEFI spec 2.10 section 5.3.2 table 5-5. Offsets are
// into the header's sector.
const (
	gptSignature     = "EFI PART"
	gptMinHeaderSize = 92 // the defined fields; the rest of the sector is reserved

	offRevision    = 8
	offHeaderSize  = 12
	offHeaderCRC   = 16
	offMyLBA       = 24
	offAlternate   = 32
	offFirstUsable = 40
	offLastUsable  = 48
	offDiskGUID    = 56
	offEntryLBA    = 72
	offNumEntries  = 80
	offEntrySize   = 84
	offEntriesCRC  = 88
)

// GPT partition entry layout, UEFI spec 2.10 section 5.3.3 table 5-6.
// Entries may be larger than 128 bytes (128 x 2^n); the bytes beyond 128
// are reserved and copied verbatim.
const (
	entryMinSize  = 128
	entOffType    = 0
	entOffGUID    = 16
	entOffFirst   = 32
	entOffLast    = 40
	entOffAttr    = 48
	entOffName    = 56
	entNameLen    = 72 // 36 UTF-16LE code units
	attrLegacyBIO = 1 << 2
)

// Bounds on what a header may claim, so untrusted bytes never make us
// allocate much. Real tables are 128 entries of 128 bytes (16 KiB); the
// spec's minimum array is 16 KiB too. 1 MiB is 64 times that.
const (
	maxEntrySize       = 4096
	maxEntryArrayBytes = 1 << 20
)

// gptHeader is a decoded GPT header. raw keeps the header sector verbatim
// so fields this code does not know (a header larger than 92 bytes) are
// preserved when it is re-encoded.
type gptHeader struct {
	raw         []byte
	size        uint32
	myLBA       uint64
	alternate   uint64
	firstUsable uint64
	lastUsable  uint64
	diskGUID    guid
	entryLBA    uint64
	numEntries  uint32
	entrySize   uint32
	entriesCRC  uint32
}

var crcTable = crc32.MakeTable(crc32.IEEE)

// parseGPTHeader decodes and checks a header sector: signature, header
// size, header CRC32 and the entry array geometry bounds.
func parseGPTHeader(sector []byte) (*gptHeader, error) {
	ss := len(sector)
	if ss < 512 {
		return nil, fmt.Errorf("GPT header sector is %d bytes", ss)
	}
	if string(sector[:8]) != gptSignature {
		return nil, errors.New("no GPT signature")
	}
	h := &gptHeader{raw: append([]byte(nil), sector...)}
	le := binary.LittleEndian
	h.size = le.Uint32(sector[offHeaderSize:])
	if h.size < gptMinHeaderSize || int(h.size) > ss {
		return nil, fmt.Errorf("GPT header size %d is outside %d..%d", h.size, gptMinHeaderSize, ss)
	}
	if got, want := headerCRC(sector[:h.size]), le.Uint32(sector[offHeaderCRC:]); got != want {
		return nil, fmt.Errorf("GPT header CRC32 is %#08x, computed %#08x", want, got)
	}
	h.myLBA = le.Uint64(sector[offMyLBA:])
	h.alternate = le.Uint64(sector[offAlternate:])
	h.firstUsable = le.Uint64(sector[offFirstUsable:])
	h.lastUsable = le.Uint64(sector[offLastUsable:])
	copy(h.diskGUID[:], sector[offDiskGUID:offDiskGUID+16])
	h.entryLBA = le.Uint64(sector[offEntryLBA:])
	h.numEntries = le.Uint32(sector[offNumEntries:])
	h.entrySize = le.Uint32(sector[offEntrySize:])
	h.entriesCRC = le.Uint32(sector[offEntriesCRC:])
	// 128 x 2^n, UEFI spec 2.10 table 5-5 (SizeOfPartitionEntry).
	if h.entrySize < entryMinSize || h.entrySize > maxEntrySize || h.entrySize&(h.entrySize-1) != 0 {
		return nil, fmt.Errorf("GPT entry size %d is not 128 x 2^n (at most %d)", h.entrySize, maxEntrySize)
	}
	if h.numEntries == 0 {
		return nil, errors.New("GPT header declares 0 partition entries")
	}
	if uint64(h.numEntries)*uint64(h.entrySize) > maxEntryArrayBytes {
		return nil, fmt.Errorf("GPT entry array of %d entries of %d bytes exceeds %d bytes", h.numEntries, h.entrySize, maxEntryArrayBytes)
	}
	if h.firstUsable > h.lastUsable {
		return nil, fmt.Errorf("GPT first usable LBA %d is after last usable LBA %d", h.firstUsable, h.lastUsable)
	}
	return h, nil
}

// headerCRC is the CRC32 of the header bytes with the CRC field zeroed.
func headerCRC(hdr []byte) uint32 {
	c := crc32.Update(0, crcTable, hdr[:offHeaderCRC])
	c = crc32.Update(c, crcTable, []byte{0, 0, 0, 0})
	return crc32.Update(c, crcTable, hdr[offHeaderCRC+4:])
}

// arrayBytes is the size of the entry array in bytes (bounded by parse).
func (h *gptHeader) arrayBytes() int { return int(h.numEntries) * int(h.entrySize) }

// arraySectors is the number of sectors the entry array occupies.
func (h *gptHeader) arraySectors(ss int64) uint64 {
	return (uint64(h.arrayBytes()) + uint64(ss) - 1) / uint64(ss)
}

// encode returns the header sector with the fields set from h and the
// header CRC recomputed. Bytes past the header size are reserved and must
// be zero (UEFI spec 2.10 table 5-5).
func (h *gptHeader) encode() []byte {
	b := make([]byte, len(h.raw))
	copy(b, h.raw[:h.size])
	le := binary.LittleEndian
	le.PutUint64(b[offMyLBA:], h.myLBA)
	le.PutUint64(b[offAlternate:], h.alternate)
	le.PutUint64(b[offFirstUsable:], h.firstUsable)
	le.PutUint64(b[offLastUsable:], h.lastUsable)
	copy(b[offDiskGUID:], h.diskGUID[:])
	le.PutUint64(b[offEntryLBA:], h.entryLBA)
	le.PutUint32(b[offNumEntries:], h.numEntries)
	le.PutUint32(b[offEntrySize:], h.entrySize)
	le.PutUint32(b[offEntriesCRC:], h.entriesCRC)
	le.PutUint32(b[offHeaderCRC:], 0)
	le.PutUint32(b[offHeaderCRC:], headerCRC(b[:h.size]))
	return b
}

// clone returns a copy of h that shares nothing with it.
func (h *gptHeader) clone() *gptHeader {
	c := *h
	c.raw = append([]byte(nil), h.raw...)
	return &c
}

// gptEntry is a decoded partition entry; index is its position in the array.
type gptEntry struct {
	index       int
	typeGUID    guid
	uniqueGUID  guid
	first, last uint64
	attributes  uint64
	name        string
}

// entries decodes the used entries of an entry array.
func (h *gptHeader) entries(array []byte) []gptEntry {
	var out []gptEntry
	for i := 0; i < int(h.numEntries); i++ {
		e := array[i*int(h.entrySize) : (i+1)*int(h.entrySize)]
		var t guid
		copy(t[:], e[entOffType:])
		if t.isZero() {
			continue
		}
		g := gptEntry{index: i, typeGUID: t}
		copy(g.uniqueGUID[:], e[entOffGUID:])
		le := binary.LittleEndian
		g.first = le.Uint64(e[entOffFirst:])
		g.last = le.Uint64(e[entOffLast:])
		g.attributes = le.Uint64(e[entOffAttr:])
		g.name = decodeName(e[entOffName : entOffName+entNameLen])
		out = append(out, g)
	}
	return out
}

// decodeName decodes a UTF-16LE partition name up to its first NUL.
func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// encodeName encodes a partition name as UTF-16LE, NUL padded.
func encodeName(name string) ([]byte, error) {
	u := utf16.Encode([]rune(name))
	if len(u) > entNameLen/2 {
		return nil, fmt.Errorf("partition name %q is longer than %d UTF-16 code units", name, entNameLen/2)
	}
	b := make([]byte, entNameLen)
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b, nil
}

// gptCopy is one header with its entry array, read and checked.
type gptCopy struct {
	hdr   *gptHeader
	array []byte
}

// readGPTAt reads the header at lba and its entry array, checking the
// header CRC, that it says it is at lba, that the array lies inside the
// disk, and the array CRC. When the header itself is good but its array is
// not, the header is returned along with the error (so a caller can find
// the other copy through its AlternateLBA).
func readGPTAt(ctx context.Context, d Disk, ss int64, sectors, lba uint64) (*gptHeader, *gptCopy, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if lba >= sectors {
		return nil, nil, fmt.Errorf("LBA %d is beyond the end of the disk (%d sectors)", lba, sectors)
	}
	sector := make([]byte, ss)
	if err := readFull(d, sector, int64(lba)*ss); err != nil {
		return nil, nil, err
	}
	h, err := parseGPTHeader(sector)
	if err != nil {
		return nil, nil, err
	}
	if h.myLBA != lba {
		return nil, nil, fmt.Errorf("GPT header at LBA %d says it is at LBA %d", lba, h.myLBA)
	}
	n := h.arraySectors(ss)
	if h.entryLBA < 2 || h.entryLBA >= sectors || n > sectors-h.entryLBA {
		return h, nil, fmt.Errorf("GPT entry array at LBA %d (%d sectors) is outside the disk (%d sectors)", h.entryLBA, n, sectors)
	}
	if h.entryLBA <= lba && lba < h.entryLBA+n {
		return h, nil, fmt.Errorf("GPT entry array at LBA %d (%d sectors) overlaps its header at LBA %d", h.entryLBA, n, lba)
	}
	array := make([]byte, h.arrayBytes())
	if err := readFull(d, array, int64(h.entryLBA)*ss); err != nil {
		return h, nil, err
	}
	if got := crc32.Checksum(array, crcTable); got != h.entriesCRC {
		return h, nil, fmt.Errorf("GPT entry array CRC32 is %#08x, computed %#08x", h.entriesCRC, got)
	}
	return h, &gptCopy{hdr: h, array: array}, nil
}

// checkPrimaryLayout checks where a primary header puts its entry array:
// after the header and before the first usable LBA.
func checkPrimaryLayout(h *gptHeader, ss int64) error {
	n := h.arraySectors(ss)
	if h.entryLBA < 2 || h.entryLBA+n > h.firstUsable {
		return fmt.Errorf("primary GPT entry array at LBA %d (%d sectors) is not between the header and the first usable LBA %d", h.entryLBA, n, h.firstUsable)
	}
	return nil
}

// checkEntries checks every used entry lies inside [firstUsable,
// lastUsable] and is not reversed.
func checkEntries(ents []gptEntry, firstUsable, lastUsable uint64) error {
	for _, e := range ents {
		if e.first > e.last {
			return fmt.Errorf("partition %d starts at LBA %d after its end at LBA %d", e.index+1, e.first, e.last)
		}
		if e.first < firstUsable {
			return fmt.Errorf("partition %d starts at LBA %d, before the first usable LBA %d", e.index+1, e.first, firstUsable)
		}
		if e.last > lastUsable {
			return fmt.Errorf("partition %d ends at LBA %d, beyond the last usable LBA %d", e.index+1, e.last, lastUsable)
		}
	}
	return nil
}
