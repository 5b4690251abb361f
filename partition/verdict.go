package partition

import (
	"errors"
	"fmt"
	"strings"
)

// Why one verdict on the head: a deployment decides from an image's first
// MiB, before anything is written, whether it holds a partition table, for
// which sector size, and whether Linux will read that table the way byoi
// does. Two parsers that disagree (one accepting what the other refuses
// after the disk was wiped) are how a deployment fails half-way; Examine is
// the one detector, used by imaging's format check, inspect and the agent.

// Verdict is what Examine found in an image's head.
type Verdict struct {
	// Table is "gpt" or "mbr".
	Table string
	// SectorSize is the logical sector size a GPT was made for (its header
	// sits at LBA 1 of that size); 0 for an MBR.
	SectorSize int64
	// Damaged: a GPT whose primary header is missing or broken; the table
	// must come from the backup at the image's end (SectorSize 0 when
	// not even the signature says which).
	Damaged bool
	// Repairs describes what RepairHead changes in the protective MBR so
	// that Linux reads the GPT (empty: nothing to change).
	Repairs []string
	// gpt is the primary header (nil for an MBR).
	gpt *gptHeader
}

// TableError is an image whose partition table byoi refuses before
// writing: Linux would not read it as byoi does (a GPT behind an MBR that
// hides it).
type TableError struct {
	Table  string // the table found: "gpt" or "mbr"
	Reason string
}

func (e *TableError) Error() string { return "partition table refused: " + e.Reason }

// Examine reads the partition table in head, the first bytes of an image
// (up to 1 MiB; at least 8 KiB to see a GPT made for 4096-byte sectors),
// with the rules of Linux's partition code (block/partitions/efi.c and
// msdos.c):
//
//   - a GPT: a header at LBA 1 (of 512 or 4096 bytes) whose signature,
//     size and CRC32 check out and which says it is at LBA 1. Linux reads
//     it only behind a protective MBR: the 0x55AA signature and a type
//     0xEE entry starting at LBA 1 (efi.c pmbr_part_valid). A GPT whose
//     MBR has no table at all, or whose 0xEE entry starts elsewhere, is
//     repairable (Repairs says how; RepairHead does it, as sgdisk -e
//     would); a GPT behind an MBR with partitions but no 0xEE entry is
//     refused with a *TableError: Linux would read the MBR and ignore the
//     GPT, and which one the image meant cannot be told.
//   - an MBR: the 0x55AA signature, every boot indicator 0x00 or 0x80 (a
//     FAT or NTFS boot sector, which ends in 0x55AA too, fails this), at
//     least one used entry (type and size not zero) within the 32-bit LBA
//     range. An entry may start at LBA 0: hybrid ISO images map their
//     first partition over the whole image, and Linux reads them so.
//
// It returns ErrNoTable when head holds neither.
func Examine(head []byte) (*Verdict, error) {
	var mbr []byte
	if len(head) >= mbrSize {
		mbr = head[:mbrSize]
	}
	var sigAt []int64
	for _, ss := range []int64{512, 4096} {
		if int64(len(head)) >= ss+8 && string(head[ss:ss+8]) == gptSignature {
			sigAt = append(sigAt, ss)
		}
	}
	for _, ss := range sigAt {
		if int64(len(head)) < 2*ss {
			continue
		}
		h, err := parseGPTHeader(head[ss : 2*ss])
		if err != nil || h.myLBA != 1 {
			continue
		}
		v := &Verdict{Table: "gpt", SectorSize: ss, gpt: h}
		if err := v.checkProtective(mbr); err != nil {
			return nil, err
		}
		return v, nil
	}
	if len(sigAt) > 0 {
		// A damaged primary header: the backup at the end of the image
		// may still hold the table (partition.Read and the relocation
		// recover from it, as Linux does).
		v := &Verdict{Table: "gpt", SectorSize: sigAt[0], Damaged: true}
		if err := v.checkProtective(mbr); err != nil {
			return nil, err
		}
		return v, nil
	}
	if mbr != nil && looksLikeMBR(mbr) {
		for _, e := range parseMBREntries(mbr) {
			if !e.empty() && e.typ == mbrTypeProtective {
				// A protective MBR whose GPT header is gone: the table
				// can only come from the backup, of unknown sector size.
				return &Verdict{Table: "gpt", Damaged: true}, nil
			}
		}
		return &Verdict{Table: "mbr"}, nil
	}
	return nil, ErrNoTable
}

// checkProtective applies Linux's protective MBR rule to a GPT image.
func (v *Verdict) checkProtective(mbr []byte) error {
	if mbr == nil || !hasBootSignature(mbr) {
		v.Repairs = append(v.Repairs, "the MBR had no 0x55AA signature: a protective MBR was written")
		return nil
	}
	used, ee, eeAt1 := 0, 0, false
	for _, e := range parseMBREntries(mbr) {
		if e.empty() {
			continue
		}
		used++
		if e.typ == mbrTypeProtective {
			ee++
			if e.start == 1 {
				eeAt1 = true
			}
		}
	}
	switch {
	case used == 0:
		v.Repairs = append(v.Repairs, "the MBR had no partition entry: a protective entry was written")
	case ee == 0:
		types := []string{}
		for _, e := range parseMBREntries(mbr) {
			if !e.empty() {
				types = append(types, fmt.Sprintf("%#02x", e.typ))
			}
		}
		return &TableError{Table: "gpt", Reason: fmt.Sprintf("the image has a GPT, but its MBR holds partitions of type %s and no protective (0xEE) entry: Linux would read the MBR and ignore the GPT; give the image a protective or hybrid MBR (sgdisk, gdisk)", strings.Join(types, ", "))}
	case !eeAt1:
		v.Repairs = append(v.Repairs, "the protective (0xEE) MBR entry did not start at LBA 1, where Linux requires it: it now does")
	}
	for _, e := range parseMBREntries(mbr) {
		if e.status != 0 && e.status != 0x80 {
			v.Repairs = append(v.Repairs, "an MBR entry had an invalid boot indicator: it was cleared")
			break
		}
	}
	return nil
}

// RepairHead applies the verdict's repairs to head (the same bytes Examine
// read): a protective MBR is written where there was no table, and the
// 0xEE entry is moved to start at LBA 1. It changes nothing when Repairs is
// empty. diskSectors sizes a new protective entry (it is sized to the disk
// again when the backup GPT is moved).
func (v *Verdict) RepairHead(head []byte, diskSectors uint64) {
	if len(v.Repairs) == 0 || v.Table != "gpt" || len(head) < mbrSize {
		return
	}
	mbr := head[:mbrSize]
	es := parseMBREntries(mbr)
	used := 0
	for _, e := range es {
		if !e.empty() {
			used++
		}
	}
	if !hasBootSignature(mbr) || used == 0 {
		copy(mbr, fixProtectiveMBR(mbr, 0, diskSectors))
		return
	}
	for i, e := range es {
		if e.status != 0 && e.status != 0x80 {
			e.status = 0
		}
		if !e.empty() && e.typ == mbrTypeProtective && e.start != 1 {
			end := e.end()
			e.start = 1
			e.chsFirst = chs(1)
			if end > 1 {
				e.sectors = uint32(min(end-1, 0xFFFFFFFF))
			}
		}
		putMBREntry(mbr, i, e)
	}
}

// MinImageSize is how many bytes an image with this head must hold for its
// partition table to be whole: for a GPT the backup header's LBA (from the
// primary header) plus one sector, and the end of every partition whose
// entry lies in head; for an MBR the end of every primary partition, in
// sectors of mbrSectorSize. A download that ended before this is
// truncated.
func (v *Verdict) MinImageSize(head []byte, mbrSectorSize int64) int64 {
	if v.Table == "gpt" {
		if v.gpt == nil {
			return 0 // a damaged primary: only the backup knows
		}
		h, ss := v.gpt, v.SectorSize
		need := int64(0)
		if h.alternate > h.myLBA && h.alternate < 1<<48 {
			need = int64(h.alternate+1) * ss
		}
		off := int64(h.entryLBA) * ss
		if h.entryLBA < 1<<40 && off+int64(h.arrayBytes()) <= int64(len(head)) {
			for _, e := range h.entries(head[off : off+int64(h.arrayBytes())]) {
				if e.last < 1<<48 {
					need = max(need, int64(e.last+1)*ss)
				}
			}
		}
		return need
	}
	need := int64(0)
	if len(head) >= mbrSize {
		for _, e := range parseMBREntries(head[:mbrSize]) {
			if !e.empty() {
				need = max(need, int64(e.end())*mbrSectorSize)
			}
		}
	}
	return need
}

// TruncatedError is an image (downloaded without a checksum) that ended
// before its own partition table says it does.
type TruncatedError struct {
	Got, Need int64
}

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("the image ended after %d bytes, but its partition table reaches %d bytes: the download was truncated", e.Got, e.Need)
}

// ErrTruncated matches every *TruncatedError.
var ErrTruncated = errors.New("image truncated")

// Is makes errors.Is(err, ErrTruncated) true.
func (e *TruncatedError) Is(target error) bool { return target == ErrTruncated }

// HeaderLocations lists the byte offsets where the tables on d (of size
// bytes) are, or were, for both sector sizes: LBA 1 and the last LBA, and
// every other LBA that a GPT header found there names as its alternate
// (the backup of a disk that grew without moving it sits in the middle).
// A deployment zeroes them all before writing, so no tool can recover the
// old system from a copy left behind. Offsets are sector-aligned; the
// first and last MiB are included.
func HeaderLocations(d interface {
	ReadAt(p []byte, off int64) (int, error)
}, size int64) []int64 {
	seen := map[int64]bool{}
	var out []int64
	var visit func(ss int64, lba uint64, depth int)
	visit = func(ss int64, lba uint64, depth int) {
		if lba > uint64(size/ss) || depth > 4 {
			return
		}
		off := int64(lba) * ss
		if off+ss > size || seen[off] {
			return
		}
		seen[off] = true
		out = append(out, off)
		sec := make([]byte, ss)
		if n, _ := d.ReadAt(sec, off); n != len(sec) {
			return
		}
		h, err := parseGPTHeader(sec)
		if err != nil {
			return
		}
		visit(ss, h.alternate, depth+1)
	}
	for _, ss := range []int64{512, 4096} {
		if size < 2*ss {
			continue
		}
		visit(ss, 1, 0)
		visit(ss, uint64(size/ss)-1, 0)
	}
	return out
}
