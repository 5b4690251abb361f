package configdrive

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

// A minimal FAT12/FAT16 writer with VFAT long names and 4096-byte sectors.
//
// Why not go-diskfs: v1.9.4's fat12 and fat16 packages only accept 512-byte
// sectors, and its fat32 package (which takes 4096) cannot make a valid FAT32
// this small: FAT32 needs at least 65525 clusters, 256 MiB at 4 KiB clusters,
// beyond MaxSize.
//
// Why 4096-byte sectors: VFAT is only used on 4Kn disks (FormatFor), and
// Linux refuses a FAT whose bytes-per-sector is smaller than the device's
// logical block size ("logical sector size too small for device"). A FAT
// with 4096-byte sectors reads on 512-byte devices too; fsck.fat, mtools and
// blkid handle it.
//
// Layout (Microsoft FAT specification, "FAT: General Overview of On-Disk
// Format" 1.03; the same shape mkfs.fat -S 4096 -s 1 produces):
// one reserved sector (the boot sector), two FATs, a one-sector root
// directory (128 entries), then data clusters of one sector each. The FAT type
// follows from the cluster count alone, as every reader computes it: fewer
// than 4085 clusters is FAT12, else FAT16.
const (
	fatSector      = 4096
	fatReserved    = 1
	fatCopies      = 2
	fatRootEntries = fatSector / dirEntrySize // one sector
	dirEntrySize   = 32
	fat12Max       = 4084  // most clusters of a FAT12 (spec: count < 4085)
	fat16Max       = 65524 // most clusters of a FAT16 (spec: count < 65525)
	fatMedia       = 0xF8  // fixed disk

	attrReadOnly  = 0x01
	attrHidden    = 0x02
	attrSystem    = 0x04
	attrVolumeID  = 0x08
	attrDirectory = 0x10
	attrArchive   = 0x20
	attrLongName  = attrReadOnly | attrHidden | attrSystem | attrVolumeID

	lfnCharsPerEntry = 13
	lfnLast          = 0x40 // sequence number flag of the last (first stored) LFN entry

	// fatDate is 1980-01-01 in FAT date format ((year-1980)<<9 | month<<5 | day);
	// the time is 00:00:00. A fixed stamp keeps the image reproducible.
	fatDate = 0<<9 | 1<<5 | 1
)

// fatNode is a file or directory of the image being written.
type fatNode struct {
	name     string
	short    [11]byte // 8.3 name, space padded, no dot
	dir      bool
	data     []byte
	children []*fatNode
	first    uint32 // first cluster, 0 if none
	clusters uint32
}

// buildFAT writes files into a FAT12/FAT16 image labelled config-2.
func buildFAT(ctx context.Context, files []file) ([]byte, error) {
	return buildFATLabel(ctx, files, Label)
}

// buildFATLabel is buildFAT with another volume label (11 bytes at most).
func buildFATLabel(ctx context.Context, files []file, volLabel string) ([]byte, error) {
	root, err := fatTree(files)
	if err != nil {
		return nil, err
	}
	// The root has no "." and "..", but has the volume label entry.
	if entriesFor(root)-2+1 > fatRootEntries {
		return nil, fmt.Errorf("%w: too many entries in the root directory", ErrInvalid)
	}

	// Allocate clusters 2.. in tree order, each file and directory contiguous.
	next := uint32(2)
	var alloc func(n *fatNode) error
	alloc = func(n *fatNode) error {
		for _, c := range n.children {
			var size int64
			if c.dir {
				size = int64(entriesFor(c)) * dirEntrySize
			} else {
				size = int64(len(c.data))
			}
			nc := roundUp(size, fatSector) / fatSector
			if used := int64(next) - 2 + nc; used > MaxSize/fatSector {
				return tooLarge(used * fatSector)
			}
			c.clusters = uint32(nc)
			if c.clusters > 0 {
				c.first = next
				next += c.clusters
			}
		}
		for _, c := range n.children {
			if c.dir {
				if err := alloc(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := alloc(root); err != nil {
		return nil, err
	}

	clusters := next - 2
	// Keep clear of the FAT12/FAT16 boundary, where readers that count
	// slightly differently would disagree on the type.
	if clusters > fat12Max-16 && clusters <= fat12Max+16 {
		clusters = fat12Max + 17
	}
	bits := 16
	if clusters <= fat12Max {
		bits = 12
	}
	if clusters > fat16Max {
		return nil, tooLarge(int64(clusters) * fatSector)
	}
	fatBytes := roundUp(int64(clusters+2)*int64(bits)/8+1, fatSector)
	fatSectors := fatBytes / fatSector
	rootSectors := int64(fatRootEntries * dirEntrySize / fatSector)
	dataStart := fatReserved + fatCopies*fatSectors + rootSectors
	total := dataStart + int64(clusters)
	if total*fatSector > MaxSize {
		return nil, tooLarge(total * fatSector)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	img := make([]byte, total*fatSector)
	writeBootSector(img[:fatSector], bits, total, fatSectors, volumeID(files), volLabel)

	// FAT: entries 0 and 1 are reserved (media byte, end-of-chain), then one
	// chain per file and directory.
	fat := make([]uint32, clusters+2)
	eoc := uint32(0xFFF)
	if bits == 16 {
		eoc = 0xFFFF
	}
	fat[0] = eoc&^0xFF | fatMedia
	fat[1] = eoc
	var chain func(n *fatNode)
	chain = func(n *fatNode) {
		for _, c := range n.children {
			for i := uint32(0); i < c.clusters; i++ {
				cl := c.first + i
				if i+1 < c.clusters {
					fat[cl] = cl + 1
				} else {
					fat[cl] = eoc
				}
			}
			if c.dir {
				chain(c)
			}
		}
	}
	chain(root)
	fatImg := encodeFAT(fat, bits, fatBytes)
	for i := int64(0); i < fatCopies; i++ {
		copy(img[(fatReserved+i*fatSectors)*fatSector:], fatImg)
	}

	// Root directory: the volume label entry first (blkid and Linux read the
	// label from here), then the children.
	rootDir := img[(fatReserved+fatCopies*fatSectors)*fatSector : dataStart*fatSector]
	var label [11]byte
	copy(label[:], fmt.Sprintf("%-11s", volLabel))
	off := putShortEntry(rootDir, 0, label, attrVolumeID, 0, 0)
	writeDirEntries(rootDir[off:], root)

	clusterAt := func(cl uint32) int64 { return (dataStart + int64(cl) - 2) * fatSector }
	var fill func(n *fatNode)
	fill = func(n *fatNode) {
		for _, c := range n.children {
			if c.clusters == 0 {
				continue
			}
			b := img[clusterAt(c.first) : clusterAt(c.first)+int64(c.clusters)*fatSector]
			if !c.dir {
				copy(b, c.data)
				continue
			}
			// "." and ".." (".." of a first-level directory points to
			// cluster 0, the root).
			dot, dotdot := [11]byte{'.'}, [11]byte{'.', '.'}
			for i := 1; i < 11; i++ {
				dot[i] = ' '
				if i > 1 {
					dotdot[i] = ' '
				}
			}
			off := putShortEntry(b, 0, dot, attrDirectory, c.first, 0)
			off = putShortEntry(b, off, dotdot, attrDirectory, n.first, 0)
			writeDirEntries(b[off:], c)
			fill(c)
		}
	}
	fill(root)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return img, nil
}

// fatTree builds the directory tree of files, directories first seen first.
func fatTree(files []file) (*fatNode, error) {
	root := &fatNode{dir: true}
	for _, f := range files {
		parts := strings.Split(f.path, "/")
		n := root
		for i, p := range parts {
			if p == "" || p == "." || p == ".." {
				return nil, fmt.Errorf("%w: bad path %q", ErrInvalid, f.path)
			}
			var child *fatNode
			for _, c := range n.children {
				if strings.EqualFold(c.name, p) {
					child = c
				}
			}
			last := i == len(parts)-1
			if child == nil {
				child = &fatNode{name: p, dir: !last}
				if last {
					child.data = f.data
				}
				child.short = shortName(p, n.children)
				n.children = append(n.children, child)
			} else if last || !child.dir {
				return nil, fmt.Errorf("%w: duplicate path %q", ErrInvalid, f.path)
			}
			n = child
		}
	}
	return root, nil
}

// entriesFor counts the directory entries of directory n, "." and ".."
// included for a subdirectory (the root's label entry is counted apart).
func entriesFor(n *fatNode) int {
	e := 2
	for _, c := range n.children {
		e += 1 + lfnEntries(c)
	}
	return e
}

// lfnEntries is the number of long-name entries n needs: none when its short
// name already spells the name exactly.
func lfnEntries(n *fatNode) int {
	if shortString(n.short) == n.name {
		return 0
	}
	return (len(utf16.Encode([]rune(n.name))) + lfnCharsPerEntry - 1) / lfnCharsPerEntry
}

// writeDirEntries writes the entries of n's children into b.
func writeDirEntries(b []byte, n *fatNode) {
	off := 0
	for _, c := range n.children {
		off = putLongEntries(b, off, c)
		attr := byte(attrArchive)
		if c.dir {
			attr = attrDirectory
		}
		size := uint32(len(c.data))
		if c.dir {
			size = 0 // directories record size 0
		}
		off = putShortEntry(b, off, c.short, attr, c.first, size)
	}
}

// putShortEntry writes one 8.3 directory entry at off and returns the next
// offset. Layout: name[11], attr, NTRes, CrtTimeTenth, CrtTime, CrtDate,
// LstAccDate, FstClusHI, WrtTime, WrtDate, FstClusLO, FileSize.
func putShortEntry(b []byte, off int, name [11]byte, attr byte, cluster, size uint32) int {
	e := b[off : off+dirEntrySize]
	copy(e[0:11], name[:])
	e[11] = attr
	if attr != attrVolumeID {
		binary.LittleEndian.PutUint16(e[16:], fatDate) // creation date
		binary.LittleEndian.PutUint16(e[18:], fatDate) // last access date
	}
	binary.LittleEndian.PutUint16(e[20:], uint16(cluster>>16))
	binary.LittleEndian.PutUint16(e[24:], fatDate) // write date
	binary.LittleEndian.PutUint16(e[26:], uint16(cluster))
	binary.LittleEndian.PutUint32(e[28:], size)
	return off + dirEntrySize
}

// putLongEntries writes n's VFAT long-name entries at off, last part first,
// and returns the next offset. Each holds 13 UTF-16 units (at bytes 1-10,
// 14-25, 28-31), the name ends with 0x0000 and is padded with 0xFFFF.
func putLongEntries(b []byte, off int, n *fatNode) int {
	count := lfnEntries(n)
	if count == 0 {
		return off
	}
	units := utf16.Encode([]rune(n.name))
	sum := lfnChecksum(n.short)
	slots := [lfnCharsPerEntry]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
	for seq := count; seq >= 1; seq-- {
		e := b[off : off+dirEntrySize]
		e[0] = byte(seq)
		if seq == count {
			e[0] |= lfnLast
		}
		e[11] = attrLongName
		e[13] = sum
		for i, at := range slots {
			k := (seq-1)*lfnCharsPerEntry + i
			var u uint16
			switch {
			case k < len(units):
				u = units[k]
			case k == len(units):
				u = 0
			default:
				u = 0xFFFF
			}
			binary.LittleEndian.PutUint16(e[at:], u)
		}
		off += dirEntrySize
	}
	return off
}

// lfnChecksum is the checksum of a short name that ties its long-name
// entries to it (FAT spec, "ChkSum").
func lfnChecksum(short [11]byte) byte {
	var s byte
	for _, c := range short {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

// shortName makes the 8.3 name of name, unique among siblings: the name
// itself when it fits (upper-cased), else the first six valid characters of
// the base, "~N", and the first three of the extension (the "numeric tail"
// of the FAT spec's basis-name algorithm).
func shortName(name string, siblings []*fatNode) [11]byte {
	clean := func(s string) string {
		var sb strings.Builder
		for _, r := range strings.ToUpper(s) {
			switch {
			case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("$%'-_@~`!(){}^#&", r):
				sb.WriteRune(r)
			case r == ' ' || r == '.':
				// dropped
			default:
				sb.WriteByte('_')
			}
		}
		return sb.String()
	}
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	b, x := clean(base), clean(ext)
	lossy := b == "" || len(b) > 8 || len(x) > 3 || b+dotExt(x) != strings.ToUpper(name)
	if len(x) > 3 {
		x = x[:3]
	}
	taken := func(s [11]byte) bool {
		for _, c := range siblings {
			if c.short == s {
				return true
			}
		}
		return false
	}
	if !lossy {
		s := pad83(b, x)
		if !taken(s) {
			return s
		}
	}
	if len(b) > 6 {
		b = b[:6]
	}
	for i := 1; ; i++ {
		tail := fmt.Sprintf("~%d", i)
		bb := b
		if len(bb)+len(tail) > 8 {
			bb = bb[:8-len(tail)]
		}
		if s := pad83(bb+tail, x); !taken(s) {
			return s
		}
	}
}

func dotExt(x string) string {
	if x == "" {
		return ""
	}
	return "." + x
}

// pad83 lays out base and extension as the 11 bytes of a short entry.
func pad83(base, ext string) [11]byte {
	var s [11]byte
	copy(s[:], fmt.Sprintf("%-8s%-3s", base, ext))
	return s
}

// shortString renders an 11-byte short name as NAME.EXT.
func shortString(s [11]byte) string {
	return strings.TrimRight(string(s[:8]), " ") + dotExt(strings.TrimRight(string(s[8:]), " "))
}

// encodeFAT packs FAT entries: 12 bits (two entries in three bytes, low
// nibble first) or 16 bits little-endian.
func encodeFAT(fat []uint32, bits int, size int64) []byte {
	b := make([]byte, size)
	for i, v := range fat {
		if bits == 16 {
			binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
			continue
		}
		o := i * 3 / 2
		if i%2 == 0 {
			b[o] = byte(v)
			b[o+1] = b[o+1]&0xF0 | byte(v>>8)&0x0F
		} else {
			b[o] = b[o]&0x0F | byte(v<<4)
			b[o+1] = byte(v >> 4)
		}
	}
	return b
}

// writeBootSector fills the boot sector: jump, OEM name, BIOS parameter
// block (DOS 3.31) and the extended boot record (signature 0x29, volume id,
// label, type string), then 0x55AA at byte 510.
func writeBootSector(b []byte, bits int, total, fatSectors int64, volID uint32, volLabel string) {
	copy(b[0:3], []byte{0xEB, 0x3C, 0x90}) // jmp short 0x3E; nop
	copy(b[3:11], "BYOI    ")
	binary.LittleEndian.PutUint16(b[11:], fatSector)
	b[13] = 1 // sectors per cluster
	binary.LittleEndian.PutUint16(b[14:], fatReserved)
	b[16] = fatCopies
	binary.LittleEndian.PutUint16(b[17:], fatRootEntries)
	if total < 1<<16 {
		binary.LittleEndian.PutUint16(b[19:], uint16(total))
	} else {
		binary.LittleEndian.PutUint32(b[32:], uint32(total))
	}
	b[21] = fatMedia
	binary.LittleEndian.PutUint16(b[22:], uint16(fatSectors))
	binary.LittleEndian.PutUint16(b[24:], 32) // sectors per track (CHS, unused)
	binary.LittleEndian.PutUint16(b[26:], 64) // heads (CHS, unused)
	// hidden sectors (28..31) stay 0: the partition offset is not known here
	// and Linux ignores the field.
	b[36] = 0x80 // drive number
	b[38] = 0x29 // extended boot signature: the next three fields are valid
	binary.LittleEndian.PutUint32(b[39:], volID)
	copy(b[43:54], fmt.Sprintf("%-11s", volLabel))
	copy(b[54:62], fmt.Sprintf("FAT%-5d", bits))
	copy(b[62:], []byte{0xF4, 0xEB, 0xFD}) // not bootable: hlt; jmp back
	b[510], b[511] = 0x55, 0xAA
}

// volumeID derives the volume serial number from the content, so the same
// content gives the same image (mkfs.fat uses the time instead).
func volumeID(files []file) uint32 {
	h := crc32.NewIEEE()
	for _, f := range files {
		h.Write([]byte(f.path))
		h.Write([]byte{0})
		h.Write(f.data)
	}
	return h.Sum32()
}
