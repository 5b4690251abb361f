package partition

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Limits of AddPartition.
const (
	addAlign   = 1 << 20  // partition start and size alignment
	maxAddSize = 64 << 20 // the config-2 ConfigDrive needs far less
	mbrMaxLBA  = 1 << 32  // MBR LBAs and sizes are 32-bit: 2 TiB with 512-byte sectors
)

// AddPartition creates a partition of size bytes (rounded up to 1 MiB, at
// most 64 MiB) at the end of d, after every existing partition, starting
// and ending on 1 MiB boundaries. On a GPT it ends before the backup
// entries (run RelocateBackupGPT first so that is the end of the disk),
// takes the entry after the last used one (or else the first free one),
// and gets the name, the Linux filesystem data type GUID and a fresh
// random unique GUID. On an MBR it takes the first free primary slot with
// type 0x83 and ends below the MBR's 2^32-sector limit (2 TiB with
// 512-byte sectors); name is not stored. It returns the new partition.
func AddPartition(ctx context.Context, d Disk, name string, size int64) (Partition, error) {
	if err := ctx.Err(); err != nil {
		return Partition{}, err
	}
	if size <= 0 || size > maxAddSize {
		return Partition{}, fmt.Errorf("partition size %d is not in 1..%d bytes", size, maxAddSize)
	}
	size = (size + addAlign - 1) / addAlign * addAlign
	ss, sectors, err := geometry(d)
	if err != nil {
		return Partition{}, err
	}
	lba0, isGPT, err := readHead(d, ss)
	if err != nil {
		return Partition{}, err
	}
	if isGPT {
		return addGPT(ctx, d, ss, sectors, name, size)
	}
	if !looksLikeMBR(lba0) {
		return Partition{}, ErrNoTable
	}
	return addMBR(d, ss, sectors, lba0, size)
}

// placeAtEnd finds [first, last] for a partition of n sectors ending on the
// last 1 MiB boundary at or below limit (exclusive), starting at or after
// low. align is 1 MiB in sectors.
func placeAtEnd(low, limit, n, align uint64) (first, last uint64, ok bool) {
	end := limit / align * align
	if end < n {
		return 0, 0, false
	}
	first = end - n
	if first < low {
		return 0, 0, false
	}
	return first, end - 1, true
}

func addGPT(ctx context.Context, d Disk, ss int64, sectors uint64, name string, size int64) (Partition, error) {
	nameBytes, err := encodeName(name)
	if err != nil {
		return Partition{}, err
	}
	g, err := loadGPT(ctx, d, ss, sectors, nil)
	if err != nil {
		return Partition{}, err
	}
	if g.fromBackup || g.backup == nil {
		return Partition{}, fmt.Errorf("the GPT needs repair first: %w", errors.Join(stringErrs(g.problems)...))
	}
	h := g.src.hdr
	ents := h.entries(g.src.array)
	if err := checkEntries(ents, h.firstUsable, h.lastUsable); err != nil {
		return Partition{}, err
	}
	// The first free entry after the last used one, so the partition at
	// the end of the disk also comes last in the table (sfdisk, the kernel
	// number partitions by entry); else the first free entry.
	slot, lastUsed := -1, -1
	for _, e := range ents {
		lastUsed = max(lastUsed, e.index)
	}
	if lastUsed+1 < int(h.numEntries) {
		slot = lastUsed + 1
	} else {
		for i := 0; i < int(h.numEntries); i++ {
			var t guid
			copy(t[:], g.src.array[i*int(h.entrySize):])
			if t.isZero() {
				slot = i
				break
			}
		}
	}
	if slot < 0 {
		return Partition{}, fmt.Errorf("the GPT partition entry array is full (%d entries)", h.numEntries)
	}
	low := h.firstUsable
	for _, e := range ents {
		low = max(low, e.last+1)
	}
	align := uint64(addAlign / ss)
	first, last, ok := placeAtEnd(low, h.lastUsable+1, uint64(size/ss), align)
	if !ok {
		return Partition{}, fmt.Errorf("no room for %d MiB at the end of the disk: the last partition ends at LBA %d, the last usable LBA is %d", size>>20, low-1, h.lastUsable)
	}
	typ, err := parseGUID(LinuxFilesystemGUID)
	if err != nil {
		return Partition{}, err
	}
	var uniq guid
	for tries := 0; ; tries++ {
		if uniq, err = newGUID(); err != nil {
			return Partition{}, err
		}
		if uniq != h.diskGUID && !guidUsed(ents, uniq) {
			break
		}
		if tries > 8 {
			return Partition{}, errors.New("could not draw a unique partition GUID")
		}
	}

	array := append([]byte(nil), g.src.array...)
	e := array[slot*int(h.entrySize) : (slot+1)*int(h.entrySize)]
	clear(e)
	copy(e[entOffType:], typ[:])
	copy(e[entOffGUID:], uniq[:])
	binary.LittleEndian.PutUint64(e[entOffFirst:], first)
	binary.LittleEndian.PutUint64(e[entOffLast:], last)
	copy(e[entOffName:], nameBytes)
	crc := crc32.Checksum(array, crcTable)

	ph := h.clone()
	ph.entriesCRC = crc
	bh := g.backup.hdr.clone()
	bh.entriesCRC = crc
	n := h.arraySectors(ss)
	padded := make([]byte, n*uint64(ss))
	copy(padded, array)

	// Backup first, then primary (as go-diskfs and sgdisk do): until the
	// primary header is rewritten it describes the old table with its old
	// array CRC, and tools trust it; a crash in between leaves the old
	// table (the new partition is simply not there). Once the backup is
	// flushed, a torn primary write is recovered from the backup, which
	// already has the new partition.
	if err := writeFull(d, padded, int64(bh.entryLBA)*ss); err != nil {
		return Partition{}, fmt.Errorf("write backup GPT entries: %w", err)
	}
	if err := writeFull(d, bh.encode(), int64(bh.myLBA)*ss); err != nil {
		return Partition{}, fmt.Errorf("write backup GPT header: %w", err)
	}
	if err := flush(d); err != nil {
		return Partition{}, err
	}
	if err := writeFull(d, padded, int64(ph.entryLBA)*ss); err != nil {
		return Partition{}, fmt.Errorf("write primary GPT entries: %w", err)
	}
	if err := writeFull(d, ph.encode(), ss); err != nil {
		return Partition{}, fmt.Errorf("write primary GPT header: %w", err)
	}
	if err := flush(d); err != nil {
		return Partition{}, err
	}
	return Partition{
		Number:   slot + 1,
		Start:    int64(first) * ss,
		Size:     int64(last-first+1) * ss,
		TypeGUID: LinuxFilesystemGUID,
		TypeName: gptTypeNames[LinuxFilesystemGUID],
		Name:     name,
		GUID:     uniq.String(),
	}, nil
}

func guidUsed(ents []gptEntry, g guid) bool {
	for _, e := range ents {
		if e.uniqueGUID == g {
			return true
		}
	}
	return false
}

func addMBR(d Disk, ss int64, sectors uint64, lba0 []byte, size int64) (Partition, error) {
	es := parseMBREntries(lba0)
	slot := -1
	align := uint64(addAlign / ss)
	low := align // keep the first MiB for the MBR and boot loader
	for i, e := range es {
		if e.empty() {
			if slot < 0 {
				slot = i
			}
			continue
		}
		low = max(low, e.end())
	}
	if slot < 0 {
		return Partition{}, errors.New("all 4 primary MBR partition slots are in use")
	}
	limit := min(sectors, mbrMaxLBA)
	first, last, ok := placeAtEnd(low, limit, uint64(size/ss), align)
	if !ok {
		if sectors > mbrMaxLBA {
			return Partition{}, fmt.Errorf("no room for %d MiB below the MBR limit of %d sectors: the last partition ends at LBA %d", size>>20, uint64(mbrMaxLBA), low-1)
		}
		return Partition{}, fmt.Errorf("no room for %d MiB at the end of the disk: the last partition ends at LBA %d of %d", size>>20, low-1, sectors)
	}
	b := append([]byte(nil), lba0[:mbrSize]...)
	putMBREntry(b, slot, mbrEntry{
		chsFirst: chs(first),
		typ:      mbrTypeLinux,
		chsLast:  chs(last),
		start:    uint32(first),
		sectors:  uint32(last - first + 1),
	})
	// One sector write: it is atomic on the disks we know, and a torn one
	// only loses the new entry.
	if err := writeFull(d, b, 0); err != nil {
		return Partition{}, fmt.Errorf("write MBR: %w", err)
	}
	if err := flush(d); err != nil {
		return Partition{}, err
	}
	return Partition{
		Number:   slot + 1,
		Start:    int64(first) * ss,
		Size:     int64(last-first+1) * ss,
		TypeName: mbrTypeNames[mbrTypeLinux],
		MBRType:  mbrTypeLinux,
	}, nil
}
