package partition

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
)

// RelocateBackupGPT moves the backup GPT header and entry array to the last
// LBAs of d, updates the primary header (AlternateLBA, LastUsableLBA,
// CRCs) and the protective MBR. It is what `sgdisk -e` does, byte for
// byte on the entries: they are copied verbatim. It is a no-op for MBR
// disks and for a GPT already in place. Errors are *RelocateError.
//
// When the primary header is damaged, the backup is looked for at the
// last LBA of the disk only; use RelocateBackupGPTFrom when the size of
// the image written on d is known.
func RelocateBackupGPT(ctx context.Context, d Disk) error {
	return RelocateBackupGPTFrom(ctx, d, 0)
}

// RelocateBackupGPTFrom is RelocateBackupGPT for a disk on which an image
// of imageSize bytes was written (0 if unknown). When the primary GPT
// (header or entry array) is damaged, the table is recovered from the
// backup, looked for where the primary header says (if it survived), at
// the last LBA of the image, and at the last LBA of the disk; the primary
// is then rebuilt from it, with its entry array at LBA 2.
func RelocateBackupGPTFrom(ctx context.Context, d Disk, imageSize int64) error {
	if err := relocate(ctx, d, imageSize); err != nil {
		return &RelocateError{Err: err}
	}
	return nil
}

func relocate(ctx context.Context, d Disk, imageSize int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ss, sectors, err := geometry(d)
	if err != nil {
		return err
	}
	lba0, isGPT, err := readHead(d, ss)
	if err != nil {
		return err
	}
	if !isGPT {
		if looksLikeMBR(lba0) {
			return nil // MBR: nothing at the end of the disk to move
		}
		return ErrNoTable
	}
	var extra []uint64
	if imageSize >= 2*ss {
		extra = append(extra, uint64(imageSize/ss)-1)
	}
	g, err := loadGPT(ctx, d, ss, sectors, extra)
	if err != nil {
		return err
	}
	src := g.src
	n := src.hdr.arraySectors(ss)

	// The new layout: backup header at the last LBA, its entry array just
	// before it, the usable area ending just before that (UEFI spec 2.10
	// section 5.3.2; sgdisk -e computes the same LastUsableLBA).
	if sectors < n+3 || sectors-n-2 < src.hdr.firstUsable {
		return fmt.Errorf("disk of %d sectors is too small for the GPT (first usable LBA %d, entry array of %d sectors)", sectors, src.hdr.firstUsable, n)
	}
	newAlt := sectors - 1
	newBackupArray := newAlt - n
	newLastUsable := newBackupArray - 1
	ents := src.hdr.entries(src.array)
	if err := checkEntries(ents, src.hdr.firstUsable, newLastUsable); err != nil {
		return err
	}

	primary := src.hdr.clone()
	primary.myLBA, primary.alternate, primary.lastUsable = 1, newAlt, newLastUsable
	if g.fromBackup {
		// The damaged primary's array position is unknown: put it where
		// every partitioning tool does, right after the header.
		primary.entryLBA = 2
	}
	if err := checkPrimaryLayout(primary, ss); err != nil {
		return err
	}
	primary.entriesCRC = crc32.Checksum(src.array, crcTable)
	backup := primary.clone()
	backup.myLBA, backup.alternate, backup.entryLBA = newAlt, 1, newBackupArray

	array := make([]byte, n*uint64(ss)) // the entries verbatim, zero padded to whole sectors
	copy(array, src.array)

	// Where the old backup was, to wipe it once it is no longer needed.
	var stale [][2]uint64 // LBA ranges [first, last]
	if g.fromBackup {
		stale = append(stale, [2]uint64{src.hdr.myLBA, src.hdr.myLBA}, [2]uint64{src.hdr.entryLBA, src.hdr.entryLBA + n - 1})
	} else if g.backup != nil {
		bh := g.backup.hdr
		stale = append(stale, [2]uint64{bh.myLBA, bh.myLBA}, [2]uint64{bh.entryLBA, bh.entryLBA + bh.arraySectors(ss) - 1})
	}

	newMBR := fixProtectiveMBR(lba0[:mbrSize], src.hdr.alternate+1, sectors)
	if g.fromBackup {
		newMBR = fixProtectiveMBR(lba0[:mbrSize], src.hdr.myLBA+1, sectors)
	}

	// Write order, chosen so a crash (or a cancelled context) between any
	// two steps leaves a disk that GPT tools read correctly:
	//
	//  1. The new backup array, then the new backup header, at the end of
	//     the disk; flush. The primary still points to the old backup,
	//     which is untouched (unless the disk is only slightly larger
	//     than the image and the areas overlap; the primary is then still
	//     intact and the table is read from it). The new copy sits beyond
	//     the old last usable LBA, in space no partition uses.
	//  2. When recovering from the backup, the primary array; then the
	//     primary header, one sector, which switches the table to the new
	//     backup; flush. If that single write is torn, the primary fails
	//     its CRC and tools fall back to the backup at the last LBA: the
	//     one written and flushed in step 1, complete and identical.
	//  3. The protective MBR's 0xEE size; flush. A stale size only makes
	//     tools warn.
	//  4. Zero the old backup header and array, now in free space inside
	//     the usable area, so nothing (a scan for "EFI PART", a later
	//     repair) finds a stale copy describing a smaller disk; flush.
	//     Before this step the stale copy is harmless: the primary and the
	//     new backup agree and point at each other.
	// Writes whose bytes are already on disk are skipped, so a GPT
	// already in place (a disk exactly the image's size) is not written.
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := writeIfChanged(d, array, int64(newBackupArray)*ss); err != nil {
		return fmt.Errorf("write backup GPT entries: %w", err)
	}
	if err := writeIfChanged(d, backup.encode(), int64(newAlt)*ss); err != nil {
		return fmt.Errorf("write backup GPT header: %w", err)
	}
	if err := flush(d); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if g.fromBackup {
		if err := writeIfChanged(d, array, int64(primary.entryLBA)*ss); err != nil {
			return fmt.Errorf("write primary GPT entries: %w", err)
		}
	}
	if err := writeIfChanged(d, primary.encode(), ss); err != nil {
		return fmt.Errorf("write primary GPT header: %w", err)
	}
	if err := flush(d); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := writeIfChanged(d, newMBR, 0); err != nil {
		return fmt.Errorf("write protective MBR: %w", err)
	}
	if err := flush(d); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	keep := [][2]uint64{{0, primary.firstUsable - 1}, {newBackupArray, newAlt}}
	for _, e := range ents {
		keep = append(keep, [2]uint64{e.first, e.last})
	}
	for _, r := range stale {
		if r[1] >= sectors || intersectsAny(r, keep) {
			continue
		}
		if err := writeIfChanged(d, make([]byte, (r[1]-r[0]+1)*uint64(ss)), int64(r[0])*ss); err != nil {
			return fmt.Errorf("wipe old backup GPT: %w", err)
		}
	}
	if err := flush(d); err != nil {
		return err
	}

	// Read back what was written, as the next boot will.
	v, err := loadGPT(ctx, d, ss, sectors, nil)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if v.fromBackup || v.backup == nil || len(v.problems) > 0 {
		return fmt.Errorf("verify: %s", errors.Join(stringErrs(v.problems)...))
	}
	return nil
}

// fixProtectiveMBR returns LBA 0 with the GPT protective entry (type 0xEE)
// covering the disk (UEFI spec 2.10 section 5.2.3 table 5-4: size
// min(sectors-1, 0xFFFFFFFF)). In a hybrid MBR only 0xEE entries that
// reached the end of the image (oldTotal sectors) are extended; the other
// entries are left alone. A sector with no table at all gets a protective
// MBR, keeping its boot code. An MBR with entries but no 0xEE entry is
// not ours to change.
func fixProtectiveMBR(lba0 []byte, oldTotal, sectors uint64) []byte {
	b := append([]byte(nil), lba0...)
	es := parseMBREntries(b)
	used := 0
	for _, e := range es {
		if !e.empty() {
			used++
		}
	}
	cover := func(e *mbrEntry) {
		if uint64(e.start) >= sectors {
			return
		}
		n := uint32(min(sectors-uint64(e.start), 0xFFFFFFFF))
		if n == e.sectors {
			return // already covers the disk: keep the image's bytes (CHS included)
		}
		e.sectors = n
		e.chsLast = chs(e.end() - 1)
		if (e.end()-1)/(255*63) > 1023 {
			// "Set to 0xFFFFFF if it is not possible to represent the
			// value" (UEFI spec 2.10 table 5-4), as sgdisk does.
			e.chsLast = [3]byte{0xff, 0xff, 0xff}
		}
	}
	if !hasBootSignature(b) || used == 0 {
		for i := range es {
			putMBREntry(b, i, mbrEntry{})
		}
		p := mbrEntry{chsFirst: chs(1), typ: mbrTypeProtective, start: 1}
		cover(&p)
		putMBREntry(b, 0, p)
		b[mbrOffBootSig], b[mbrOffBootSig+1] = 0x55, 0xAA
		return b
	}
	for i, e := range es {
		if e.empty() || e.typ != mbrTypeProtective {
			continue
		}
		if used == 1 || e.end() >= oldTotal || e.sectors == 0xFFFFFFFF {
			cover(&e)
			putMBREntry(b, i, e)
		}
	}
	return b
}

// writeIfChanged writes p at off unless the disk already holds those bytes.
func writeIfChanged(d Disk, p []byte, off int64) error {
	cur := make([]byte, len(p))
	if err := readFull(d, cur, off); err == nil && bytes.Equal(cur, p) {
		return nil
	}
	return writeFull(d, p, off)
}

func intersectsAny(r [2]uint64, set [][2]uint64) bool {
	for _, s := range set {
		if r[0] <= s[1] && s[0] <= r[1] {
			return true
		}
	}
	return false
}

func stringErrs(msgs []string) []error {
	var errs []error
	for _, m := range msgs {
		errs = append(errs, errors.New(m))
	}
	return errs
}
