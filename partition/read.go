package partition

import (
	"bytes"
	"context"
	"fmt"
	"sort"
)

// Read reads the partition table of d. A GPT is read from its primary
// header, or from the backup at the end of the disk when the primary is
// damaged. It also reads a truncated image whose primary is good (the
// backup is then missing): what is wrong without preventing the read is
// listed in Table.Problems. A GPT made for another sector size than d's
// gives a *SectorSizeError; a disk with no table ErrNoTable.
func Read(d Disk) (*Table, error) {
	ctx := context.Background()
	ss, sectors, err := geometry(d)
	if err != nil {
		return nil, err
	}
	lba0, isGPT, err := readHead(d, ss)
	if err != nil {
		return nil, err
	}
	if !isGPT {
		return readMBR(d, ss, sectors, lba0)
	}
	g, err := loadGPT(ctx, d, ss, sectors, nil)
	if err != nil {
		return nil, err
	}
	return g.table(lba0), nil
}

// readHead reads LBA 0 and tells whether the disk holds a GPT (a signature
// at LBA 1, or a protective MBR). It returns a *SectorSizeError when the
// signature sits at LBA 1 of another sector size.
func readHead(d Disk, ss int64) (lba0 []byte, isGPT bool, err error) {
	head := make([]byte, 2*ss)
	if err := readFull(d, head, 0); err != nil {
		return nil, false, fmt.Errorf("read partition table: %w", err)
	}
	lba0 = head[:ss]
	if string(head[ss:ss+8]) == gptSignature {
		return lba0, true, nil
	}
	// The other sector size's LBA 1: 4096 on a 512 disk, 512 on a 4Kn one.
	other := int64(4096)
	if ss != 512 {
		other = 512
	}
	sig := make([]byte, 8)
	if other+8 <= d.Size() && readFull(d, sig, other) == nil && string(sig) == gptSignature {
		return nil, false, &SectorSizeError{ImageSectorSize: other, DiskSectorSize: ss}
	}
	if looksLikeMBR(lba0) {
		for _, e := range parseMBREntries(lba0) {
			if !e.empty() && e.typ == mbrTypeProtective {
				return lba0, true, nil
			}
		}
	}
	return lba0, false, nil
}

func readMBR(d Disk, ss int64, sectors uint64, lba0 []byte) (*Table, error) {
	if !looksLikeMBR(lba0) {
		return nil, ErrNoTable
	}
	parts, problems := mbrPartitions(d, ss, sectors, lba0)
	return &Table{
		Type:          "mbr",
		SectorSize:    ss,
		DiskSignature: uint32(lba0[mbrOffSignature]) | uint32(lba0[mbrOffSignature+1])<<8 | uint32(lba0[mbrOffSignature+2])<<16 | uint32(lba0[mbrOffSignature+3])<<24,
		Partitions:    parts,
		Problems:      problems,
	}, nil
}

// gptLoad is what loadGPT found: the copy to trust (src) and what is wrong
// with the other one.
type gptLoad struct {
	ss         int64
	sectors    uint64
	src        *gptCopy // the primary, or the backup when fromBackup
	fromBackup bool
	primary    *gptCopy // nil when damaged
	backup     *gptCopy // nil when missing or damaged
	problems   []string
}

// loadGPT reads the primary GPT and its backup. When the primary (header
// or array) is damaged, the backup is looked for where the primary's
// AlternateLBA says (if its header survived), at the LBAs in extra (the
// last LBA of the image written to the disk), and at the last LBA of the
// disk. It fails only when no good copy is found.
func loadGPT(ctx context.Context, d Disk, ss int64, sectors uint64, extra []uint64) (*gptLoad, error) {
	g := &gptLoad{ss: ss, sectors: sectors}
	ph, pc, perr := readGPTAt(ctx, d, ss, sectors, 1)
	if perr == nil {
		if err := checkPrimaryLayout(ph, ss); err != nil {
			pc, perr = nil, err
		}
	}
	if perr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		g.problems = append(g.problems, fmt.Sprintf("primary GPT is damaged: %v", perr))
		var cands []uint64
		if ph != nil {
			cands = append(cands, ph.alternate)
		}
		cands = append(cands, extra...)
		cands = append(cands, sectors-1)
		var berr error
		tried := map[uint64]bool{}
		for _, lba := range cands {
			if lba < 2 || lba >= sectors || tried[lba] {
				continue
			}
			tried[lba] = true
			_, bc, err := readGPTAt(ctx, d, ss, sectors, lba)
			if err == nil {
				err = checkBackupLayout(bc.hdr, ss)
			}
			if err == nil {
				g.src, g.backup, g.fromBackup = bc, bc, true
				g.problems = append(g.problems, fmt.Sprintf("table read from the backup GPT at LBA %d", lba))
				return g, nil
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			berr = fmt.Errorf("LBA %d: %w", lba, err)
		}
		if berr == nil {
			berr = fmt.Errorf("no candidate LBA inside the disk")
		}
		return nil, fmt.Errorf("primary GPT is damaged (%w) and no good backup GPT was found (%w)", perr, berr)
	}
	g.src, g.primary = pc, pc
	alt := ph.alternate
	switch {
	case alt >= sectors:
		g.problems = append(g.problems, fmt.Sprintf("backup GPT header at LBA %d is beyond the end of the disk (%d sectors): the image is truncated or the disk is smaller than the image", alt, sectors))
		return g, nil
	case alt <= ph.lastUsable:
		g.problems = append(g.problems, fmt.Sprintf("backup GPT header LBA %d is inside the usable area (last usable LBA %d)", alt, ph.lastUsable))
		return g, nil
	}
	_, bc, err := readGPTAt(ctx, d, ss, sectors, alt)
	if err == nil {
		err = checkBackupLayout(bc.hdr, ss)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		g.problems = append(g.problems, fmt.Sprintf("backup GPT at LBA %d is damaged or missing: %v", alt, err))
	} else {
		g.backup = bc
		if msg := compareCopies(pc, bc); msg != "" {
			g.problems = append(g.problems, msg)
		}
	}
	if alt != sectors-1 {
		g.problems = append(g.problems, fmt.Sprintf("backup GPT header is at LBA %d, not at the last LBA %d of the disk", alt, sectors-1))
	}
	return g, nil
}

// checkBackupLayout checks a backup header puts its entry array after the
// usable area and before itself.
func checkBackupLayout(h *gptHeader, ss int64) error {
	n := h.arraySectors(ss)
	if h.entryLBA <= h.lastUsable || h.entryLBA+n > h.myLBA {
		return fmt.Errorf("backup GPT entry array at LBA %d (%d sectors) is not between the last usable LBA %d and the header at LBA %d", h.entryLBA, n, h.lastUsable, h.myLBA)
	}
	return nil
}

// compareCopies describes how a backup disagrees with its primary, or
// returns "".
func compareCopies(p, b *gptCopy) string {
	ph, bh := p.hdr, b.hdr
	switch {
	case bh.alternate != ph.myLBA:
		return fmt.Sprintf("backup GPT header points to LBA %d, not to the primary at LBA %d", bh.alternate, ph.myLBA)
	case bh.firstUsable != ph.firstUsable || bh.lastUsable != ph.lastUsable:
		return fmt.Sprintf("backup GPT usable range %d-%d differs from the primary's %d-%d", bh.firstUsable, bh.lastUsable, ph.firstUsable, ph.lastUsable)
	case bh.diskGUID != ph.diskGUID:
		return "backup GPT disk GUID differs from the primary's"
	case bh.numEntries != ph.numEntries || bh.entrySize != ph.entrySize || !bytes.Equal(p.array, b.array):
		return "backup GPT partition entries differ from the primary's"
	}
	return ""
}

// table turns what was loaded into a Table.
func (g *gptLoad) table(lba0 []byte) *Table {
	h := g.src.hdr
	t := &Table{
		Type:         "gpt",
		SectorSize:   g.ss,
		DiskGUID:     h.diskGUID.String(),
		FirstUsable:  h.firstUsable,
		LastUsable:   h.lastUsable,
		AlternateLBA: h.alternate,
		EntryLBA:     h.entryLBA,
		EntryCount:   h.numEntries,
		EntrySize:    h.entrySize,
		FromBackup:   g.fromBackup,
		Problems:     append([]string(nil), g.problems...),
	}
	ents := h.entries(g.src.array)
	for _, e := range ents {
		tg := e.typeGUID.String()
		t.Partitions = append(t.Partitions, Partition{
			Number:     e.index + 1,
			Start:      int64(e.first) * g.ss,
			Size:       int64(e.last-e.first+1) * g.ss,
			TypeGUID:   tg,
			TypeName:   gptTypeNames[tg],
			Name:       e.name,
			GUID:       e.uniqueGUID.String(),
			Attributes: e.attributes,
			Bootable:   e.attributes&attrLegacyBIO != 0,
		})
	}
	if err := checkEntries(ents, h.firstUsable, h.lastUsable); err != nil {
		t.Problems = append(t.Problems, err.Error())
	}
	if msg := overlaps(ents); msg != "" {
		t.Problems = append(t.Problems, msg)
	}
	if lba0 != nil {
		prot, other := 0, 0
		for _, e := range parseMBREntries(lba0) {
			switch {
			case e.empty():
			case e.typ == mbrTypeProtective:
				prot++
			default:
				other++
			}
		}
		t.HybridMBR = prot > 0 && other > 0
		if prot == 0 || !hasBootSignature(lba0) {
			t.Problems = append(t.Problems, "no protective MBR")
		}
	}
	return t
}

// overlaps describes the first pair of overlapping partitions, or "".
func overlaps(ents []gptEntry) string {
	s := append([]gptEntry(nil), ents...)
	sort.Slice(s, func(i, j int) bool { return s[i].first < s[j].first })
	for i := 1; i < len(s); i++ {
		if s[i].first <= s[i-1].last {
			return fmt.Sprintf("partitions %d and %d overlap", s[i-1].index+1, s[i].index+1)
		}
	}
	return ""
}
