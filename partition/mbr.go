package partition

import (
	"encoding/binary"
	"fmt"
)

// MBR layout (the classic PC partition table; UEFI spec 2.10 section 5.2.1
// table 5-1 and 5-2): four 16-byte entries at 446 and 0x55AA at 510.
const (
	mbrSize         = 512
	mbrOffSignature = 440 // disk signature
	mbrOffEntries   = 446
	mbrEntrySize    = 16
	mbrOffBootSig   = 510

	mbrTypeProtective = 0xEE
	mbrTypeLinux      = 0x83
	maxLogical        = 128 // bound on the EBR chain walk
)

// mbrEntry is one MBR partition entry.
type mbrEntry struct {
	status   byte
	chsFirst [3]byte
	typ      byte
	chsLast  [3]byte
	start    uint32
	sectors  uint32
}

func (e mbrEntry) empty() bool { return e.typ == 0 || e.sectors == 0 }

// end is the first LBA after the entry.
func (e mbrEntry) end() uint64 { return uint64(e.start) + uint64(e.sectors) }

func isExtended(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

// hasBootSignature reports whether a sector ends in 0x55AA.
func hasBootSignature(b []byte) bool {
	return len(b) >= mbrSize && b[mbrOffBootSig] == 0x55 && b[mbrOffBootSig+1] == 0xAA
}

// parseMBREntries decodes the four entries of an MBR or EBR sector.
func parseMBREntries(b []byte) [4]mbrEntry {
	var es [4]mbrEntry
	for i := range es {
		o := b[mbrOffEntries+i*mbrEntrySize:]
		es[i] = mbrEntry{
			status:  o[0],
			typ:     o[4],
			start:   binary.LittleEndian.Uint32(o[8:]),
			sectors: binary.LittleEndian.Uint32(o[12:]),
		}
		copy(es[i].chsFirst[:], o[1:4])
		copy(es[i].chsLast[:], o[5:8])
	}
	return es
}

// putMBREntry encodes e into slot i of an MBR sector.
func putMBREntry(b []byte, i int, e mbrEntry) {
	o := b[mbrOffEntries+i*mbrEntrySize:]
	o[0] = e.status
	copy(o[1:4], e.chsFirst[:])
	o[4] = e.typ
	copy(o[5:8], e.chsLast[:])
	binary.LittleEndian.PutUint32(o[8:], e.start)
	binary.LittleEndian.PutUint32(o[12:], e.sectors)
}

// looksLikeMBR reports whether a sector holds a partition table as Linux
// reads one (block/partitions/msdos.c): the boot signature, status bytes
// 0x00 or 0x80, and at least one used entry within the 32-bit LBA range.
// An entry may start at LBA 0 (hybrid ISO images). A FAT or NTFS boot
// sector, which also ends in 0x55AA, fails the status byte test.
func looksLikeMBR(b []byte) bool {
	if !hasBootSignature(b) {
		return false
	}
	used := 0
	for _, e := range parseMBREntries(b) {
		if e.status != 0 && e.status != 0x80 {
			return false
		}
		if e.empty() || e.end() > mbrMaxLBA {
			continue
		}
		used++
	}
	return used > 0
}

// chs encodes an LBA as a cylinder/head/sector triple for the usual
// 255-head, 63-sector geometry, or 1023/254/63 (FE FF FF) when it is out
// of range, as sgdisk and sfdisk do.
func chs(lba uint64) [3]byte {
	const heads, spt = 255, 63
	c := lba / (heads * spt)
	if c > 1023 {
		return [3]byte{0xfe, 0xff, 0xff}
	}
	r := lba % (heads * spt)
	h := r / spt
	s := r%spt + 1
	return [3]byte{byte(h), byte(s) | byte(c>>8)<<6, byte(c)}
}

// mbrPartitions lists the primary partitions of an MBR and the logical
// ones in its extended partition. Problems found in the EBR chain are
// returned as strings: the primary table is still usable.
func mbrPartitions(d Disk, ss int64, sectors uint64, lba0 []byte) ([]Partition, []string) {
	var parts []Partition
	var problems []string
	for i, e := range parseMBREntries(lba0) {
		if e.empty() {
			continue
		}
		parts = append(parts, mbrPartition(i+1, e, 0, ss))
		if e.end() > sectors {
			problems = append(problems, fmt.Sprintf("partition %d ends at LBA %d, beyond the end of the disk (%d sectors)", i+1, e.end()-1, sectors))
		}
		if isExtended(e.typ) {
			logical, p := walkEBR(d, ss, sectors, e)
			parts = append(parts, logical...)
			problems = append(problems, p...)
		}
	}
	return parts, problems
}

func mbrPartition(n int, e mbrEntry, base uint64, ss int64) Partition {
	name := mbrTypeNames[e.typ]
	if name == "" {
		name = fmt.Sprintf("type %#02x", e.typ)
	}
	return Partition{
		Number:   n,
		Start:    int64(base+uint64(e.start)) * ss,
		Size:     int64(e.sectors) * ss,
		TypeName: name,
		MBRType:  e.typ,
		Bootable: e.status == 0x80,
	}
}

// walkEBR follows the chain of extended boot records inside ext, bounded in
// length and confined to ext, so a looping or wild chain ends.
func walkEBR(d Disk, ss int64, sectors uint64, ext mbrEntry) ([]Partition, []string) {
	var parts []Partition
	extStart, extEnd := uint64(ext.start), min(ext.end(), sectors)
	seen := map[uint64]bool{}
	ebr := extStart
	buf := make([]byte, ss)
	for n := 5; n < 5+maxLogical; n++ {
		if ebr < extStart || ebr >= extEnd || seen[ebr] {
			return parts, []string{fmt.Sprintf("extended boot record at LBA %d is outside the extended partition or loops", ebr)}
		}
		seen[ebr] = true
		if err := readFull(d, buf, int64(ebr)*ss); err != nil {
			return parts, []string{fmt.Sprintf("extended boot record at LBA %d: %v", ebr, err)}
		}
		if !hasBootSignature(buf) {
			return parts, []string{fmt.Sprintf("extended boot record at LBA %d has no 0x55AA signature", ebr)}
		}
		es := parseMBREntries(buf)
		if !es[0].empty() {
			parts = append(parts, mbrPartition(n, es[0], ebr, ss))
		}
		if es[1].empty() {
			return parts, nil
		}
		ebr = extStart + uint64(es[1].start)
	}
	return parts, []string{fmt.Sprintf("more than %d logical partitions", maxLogical)}
}
