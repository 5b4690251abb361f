// Package xfs reads XFS filesystems (v4 and v5), read-only and enough to
// look files up, list directories, read files and symbolic links (the
// layout of "XFS Algorithms & Data Structures", 3rd edition). The bytes
// are untrusted: nothing is sized from the superblock (no per-AG table is
// built; an inode's place is computed from its number), B+trees are bounded
// in depth and blocks, extent lists in length, directories in bytes
// scanned, symbolic links in length; no method recurses on the image's data.
//
// Directories of every format are read: short form (in the inode), block,
// leaf and node (their data blocks; the hash index is not needed for a
// lookup that scans). The realtime device and the log are not read.
package xfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/byoi/byoi/imagecheck/vfs"
)

// ErrNotXFS is returned by Open for bytes that are not XFS.
var ErrNotXFS = errors.New("not an XFS filesystem")

var be = binary.BigEndian

const (
	fmtLocal   = 1
	fmtExtents = 2
	fmtBtree   = 3

	// Bounds against hostile filesystems.
	maxExtents    = 1 << 16
	maxBtreeNodes = 4096
	maxBtreeLevel = 9
	maxDirBytes   = 64 << 20
	maxLink       = 1024 // XFS_SYMLINK_MAXLEN
)

// FS is an opened XFS filesystem.
type FS struct {
	r         io.ReaderAt
	size      int64
	bs        int64
	dirbs     int64
	agblocks  uint64
	agcount   uint64
	inodeSize int64
	inopblog  uint
	agblklog  uint
	rootIno   uint64
	v5        bool
	ftype     bool
	// UUID and Label are the superblock's, as blkid shows them.
	UUID, Label string

	extIno uint64 // the extents of the file last read
	ext    []extent
}

// Open reads the superblock of the filesystem in r (size bytes).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	sb := make([]byte, 512)
	if _, err := r.ReadAt(sb, 0); err != nil {
		return nil, fmt.Errorf("xfs: read superblock: %w", err)
	}
	if string(sb[0:4]) != "XFSB" {
		return nil, ErrNotXFS
	}
	f := &FS{r: r, size: size}
	f.bs = int64(be.Uint32(sb[4:]))
	blocklog := uint(sb[120])
	if blocklog < 9 || blocklog > 16 || f.bs != 1<<blocklog {
		return nil, fmt.Errorf("%w: block size %d", ErrNotXFS, f.bs)
	}
	f.rootIno = be.Uint64(sb[56:])
	f.agblocks = uint64(be.Uint32(sb[84:]))
	f.agcount = uint64(be.Uint32(sb[88:]))
	version := be.Uint16(sb[100:])
	f.inodeSize = int64(be.Uint16(sb[104:]))
	inopblock := int64(be.Uint16(sb[106:]))
	f.inopblog = uint(sb[123])
	f.agblklog = uint(sb[124])
	dirblklog := uint(sb[192])
	features2 := be.Uint32(sb[200:])
	incompat := be.Uint32(sb[216:])
	f.v5 = version&0xF == 5
	if v := version & 0xF; v != 4 && v != 5 {
		return nil, fmt.Errorf("%w: version %d", ErrNotXFS, v)
	}
	if is := f.inodeSize; is < 256 || is > 2048 || is&(is-1) != 0 || inopblock*is != f.bs || 1<<f.inopblog != inopblock {
		return nil, fmt.Errorf("%w: inode size %d, %d per block", ErrNotXFS, is, inopblock)
	}
	if f.agblocks == 0 || f.agcount == 0 || f.agblklog > 31 || f.agblocks > 1<<f.agblklog {
		return nil, fmt.Errorf("%w: allocation groups of %d blocks", ErrNotXFS, f.agblocks)
	}
	if dirblklog > 8 || f.bs<<dirblklog > 64<<10 {
		return nil, fmt.Errorf("%w: directory block log %d", ErrNotXFS, dirblklog)
	}
	f.dirbs = f.bs << dirblklog
	f.ftype = (f.v5 && incompat&0x1 != 0) || (!f.v5 && features2&0x200 != 0)
	f.UUID = fmt.Sprintf("%x-%x-%x-%x-%x", sb[32:36], sb[36:38], sb[38:40], sb[40:42], sb[42:48])
	f.Label = cstr(sb[108:120])
	return f, nil
}

func (f *FS) Kind() string { return "xfs" }

func (f *FS) readFull(p []byte, off int64) error {
	if off < 0 || off > f.size || int64(len(p)) > f.size-off {
		return fmt.Errorf("xfs: read of %d bytes at %d outside the filesystem", len(p), off)
	}
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("xfs: read at %d: %w", off, err)
}

// fsbOffset is the byte offset of filesystem block fsb (AG number in the
// high bits, AG block in the low agblklog bits).
func (f *FS) fsbOffset(fsb uint64) (int64, error) {
	ag, agb := fsb>>f.agblklog, fsb&(1<<f.agblklog-1)
	if ag >= f.agcount || agb >= f.agblocks {
		return 0, fmt.Errorf("xfs: block %d outside the filesystem", fsb)
	}
	return int64(ag*f.agblocks+agb) * f.bs, nil
}

type inode struct {
	mode     uint16
	format   uint8
	size     int64
	nextents uint32
	fork     []byte // the data fork
}

func (in *inode) typ() vfs.Type {
	switch in.mode & 0xF000 {
	case 0x4000:
		return vfs.TypeDir
	case 0x8000:
		return vfs.TypeRegular
	case 0xA000:
		return vfs.TypeSymlink
	}
	return vfs.TypeOther
}

func (f *FS) inode(ino uint64) (*inode, error) {
	agino := ino & (1<<(f.agblklog+f.inopblog) - 1)
	ag := ino >> (f.agblklog + f.inopblog)
	agb, idx := agino>>f.inopblog, agino&(1<<f.inopblog-1)
	if ag >= f.agcount || agb >= f.agblocks {
		return nil, fmt.Errorf("xfs: inode %d outside the filesystem", ino)
	}
	b := make([]byte, f.inodeSize)
	if err := f.readFull(b, int64(ag*f.agblocks+agb)*f.bs+int64(idx)*f.inodeSize); err != nil {
		return nil, err
	}
	if string(b[0:2]) != "IN" {
		return nil, fmt.Errorf("xfs: inode %d: bad magic", ino)
	}
	in := &inode{mode: be.Uint16(b[2:]), format: b[5], nextents: be.Uint32(b[76:])}
	version := b[4]
	core := 100
	switch version {
	case 1, 2:
	case 3:
		core = 176
		if be.Uint64(b[120:])&(1<<4) != 0 { // NREXT64: the 64-bit count
			in.nextents = uint32(min(be.Uint64(b[24:]), 1<<31))
		}
		if be.Uint64(b[152:]) != ino {
			return nil, fmt.Errorf("xfs: inode %d claims to be %d", ino, be.Uint64(b[152:]))
		}
	default:
		return nil, fmt.Errorf("xfs: inode %d version %d", ino, version)
	}
	size := be.Uint64(b[56:])
	if size > 1<<50 {
		return nil, fmt.Errorf("xfs: inode %d size %d", ino, size)
	}
	in.size = int64(size)
	end := len(b)
	if fo := int(b[82]) * 8; fo != 0 {
		end = core + fo
		if end > len(b) {
			return nil, fmt.Errorf("xfs: inode %d fork offset %d", ino, fo)
		}
	}
	in.fork = b[core:end]
	return in, nil
}

func (f *FS) node(ino uint64) (vfs.Node, *inode, error) {
	in, err := f.inode(ino)
	if err != nil {
		return vfs.Node{}, nil, err
	}
	return vfs.Node{ID: ino, Type: in.typ(), Size: in.size}, in, nil
}

func (f *FS) Root() (vfs.Node, error) {
	n, _, err := f.node(f.rootIno)
	if err == nil && n.Type != vfs.TypeDir {
		err = errors.New("xfs: root inode is not a directory")
	}
	return n, err
}

type extent struct {
	off, fsb, count uint64
	unwritten       bool
}

func unpack(r []byte) extent {
	l0, l1 := be.Uint64(r[0:]), be.Uint64(r[8:])
	return extent{
		unwritten: l0>>63 != 0,
		off:       (l0 >> 9) & (1<<54 - 1),
		fsb:       (l0&0x1FF)<<43 | l1>>21,
		count:     l1 & (1<<21 - 1),
	}
}

// extents lists the data fork's extents, sorted by file offset.
func (f *FS) extents(in *inode) ([]extent, error) {
	var out []extent
	switch in.format {
	case fmtExtents:
		n := int(in.nextents)
		if n > len(in.fork)/16 {
			return nil, fmt.Errorf("xfs: %d extents in a fork of %d bytes", n, len(in.fork))
		}
		for i := 0; i < n; i++ {
			out = append(out, unpack(in.fork[16*i:]))
		}
	case fmtBtree:
		if len(in.fork) < 4 {
			return nil, errors.New("xfs: btree root too small")
		}
		level, numrecs := int(be.Uint16(in.fork[0:])), int(be.Uint16(in.fork[2:]))
		maxrecs := (len(in.fork) - 4) / 16
		if level < 1 || level > maxBtreeLevel || numrecs > maxrecs {
			return nil, fmt.Errorf("xfs: btree root level %d with %d records", level, numrecs)
		}
		type item struct {
			fsb   uint64
			level int
		}
		var stack []item
		for i := numrecs - 1; i >= 0; i-- {
			stack = append(stack, item{be.Uint64(in.fork[4+8*maxrecs+8*i:]), level - 1})
		}
		hdr := 24
		magic := "BMAP"
		if f.v5 {
			hdr, magic = 72, "BMA3"
		}
		nodes := 0
		blk := make([]byte, f.bs)
		for len(stack) > 0 {
			it := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if nodes++; nodes > maxBtreeNodes {
				return nil, fmt.Errorf("xfs: more than %d btree blocks", maxBtreeNodes)
			}
			off, err := f.fsbOffset(it.fsb)
			if err != nil {
				return nil, err
			}
			if err := f.readFull(blk, off); err != nil {
				return nil, err
			}
			lv, nr := int(be.Uint16(blk[4:])), int(be.Uint16(blk[6:]))
			if string(blk[0:4]) != magic || lv != it.level {
				return nil, fmt.Errorf("xfs: bad btree block at %d", it.fsb)
			}
			if lv == 0 {
				if nr > (len(blk)-hdr)/16 {
					return nil, fmt.Errorf("xfs: btree leaf of %d records", nr)
				}
				for i := 0; i < nr; i++ {
					if len(out) >= maxExtents {
						return nil, fmt.Errorf("xfs: more than %d extents", maxExtents)
					}
					out = append(out, unpack(blk[hdr+16*i:]))
				}
				continue
			}
			mr := (len(blk) - hdr) / 16
			if nr > mr {
				return nil, fmt.Errorf("xfs: btree node of %d records", nr)
			}
			for i := nr - 1; i >= 0; i-- {
				stack = append(stack, item{be.Uint64(blk[hdr+8*mr+8*i:]), lv - 1})
			}
		}
	default:
		return nil, fmt.Errorf("xfs: data fork format %d has no extents", in.format)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].off < out[j].off })
	return out, nil
}

// mapBlock finds file block l: its byte offset on disk (-1 for a hole or
// unwritten extent, reading as zeros) and how many blocks follow it
// contiguously.
func (f *FS) mapBlock(ino uint64, in *inode, l uint64) (int64, uint64, error) {
	if f.extIno != ino || f.ext == nil {
		ext, err := f.extents(in)
		if err != nil {
			return 0, 0, err
		}
		f.extIno, f.ext = ino, ext
	}
	ext := f.ext
	i := sort.Search(len(ext), func(i int) bool { return ext[i].off+ext[i].count > l })
	if i == len(ext) {
		return -1, 1 << 32, nil
	}
	e := ext[i]
	if e.off > l {
		return -1, e.off - l, nil
	}
	run := e.off + e.count - l
	if e.unwritten {
		return -1, run, nil
	}
	// An extent does not cross an AG: the AG block must stay in range.
	fsb := e.fsb + (l - e.off)
	off, err := f.fsbOffset(fsb)
	if err != nil {
		return 0, 0, err
	}
	run = min(run, f.agblocks-(fsb&(1<<f.agblklog-1)))
	return off, run, nil
}

func (f *FS) ReadAt(n vfs.Node, p []byte, off int64) (int, error) {
	in, err := f.inode(n.ID)
	if err != nil {
		return 0, err
	}
	return f.readInode(n.ID, in, p, off)
}

func (f *FS) readInode(ino uint64, in *inode, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("xfs: negative offset")
	}
	if off >= in.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > in.size-off {
		p = p[:in.size-off]
	}
	if in.format == fmtLocal {
		if in.size > int64(len(in.fork)) {
			return 0, errors.New("xfs: local data larger than its fork")
		}
		k := copy(p, in.fork[off:in.size])
		return k, eofIf(k < want)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		at, run, err := f.mapBlock(ino, in, uint64(pos/f.bs))
		if err != nil {
			return done, err
		}
		inBlock := pos % f.bs
		avail := int64(min(run, 1<<20))*f.bs - inBlock
		chunk := p[done:min(len(p), done+int(min(avail, 1<<30)))]
		if at < 0 {
			clear(chunk)
		} else if err := f.readFull(chunk, at+inBlock); err != nil {
			return done, err
		}
		done += len(chunk)
	}
	return done, eofIf(len(p) < want)
}

func eofIf(b bool) error {
	if b {
		return io.EOF
	}
	return nil
}

// leafOffset is where a directory's data blocks end (XFS_DIR2_LEAF_OFFSET,
// 32 GiB into the directory's address space).
const leafOffset = 32 << 30

// walkDir calls fn for each entry of directory ino until fn returns true.
func (f *FS) walkDir(ino uint64, fn func(name string, child uint64) bool) error {
	in, err := f.inode(ino)
	if err != nil {
		return err
	}
	if in.typ() != vfs.TypeDir {
		return errors.New("xfs: not a directory")
	}
	if in.format == fmtLocal {
		return f.walkShortform(in.fork, fn)
	}
	if in.format != fmtExtents && in.format != fmtBtree {
		return fmt.Errorf("xfs: directory format %d", in.format)
	}
	end := min(in.size, leafOffset)
	if end > maxDirBytes {
		return fmt.Errorf("xfs: directory of %d bytes", in.size)
	}
	blk := make([]byte, f.dirbs)
	for off := int64(0); off < end; off += f.dirbs {
		at, _, err := f.mapBlock(ino, in, uint64(off/f.bs))
		if err != nil {
			return err
		}
		if at < 0 {
			continue // a hole between data blocks
		}
		if _, err := f.readInode(ino, in, blk, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if f.walkDataBlock(blk, fn) {
			return nil
		}
	}
	return nil
}

// walkShortform reads a short-form directory (xfs_dir2_sf).
func (f *FS) walkShortform(b []byte, fn func(string, uint64) bool) error {
	if len(b) < 6 {
		return errors.New("xfs: short-form directory too small")
	}
	count, i8 := int(b[0]), b[1] != 0 // with any 8-byte number, all are
	inoLen := 4
	pos := 6
	if i8 {
		inoLen, pos = 8, 10
	}
	for i := 0; i < count; i++ {
		if pos+3 > len(b) {
			return errors.New("xfs: short-form directory truncated")
		}
		nl := int(b[pos])
		pos += 3 // namelen, offset
		need := nl + inoLen
		if f.ftype {
			need++
		}
		if nl == 0 || pos+need > len(b) {
			return errors.New("xfs: short-form entry truncated")
		}
		name := string(b[pos : pos+nl])
		pos += nl
		if f.ftype {
			pos++
		}
		var child uint64
		if i8 {
			child = be.Uint64(b[pos:])
		} else {
			child = uint64(be.Uint32(b[pos:]))
		}
		pos += inoLen
		if fn(name, child) {
			return nil
		}
	}
	return nil
}

// walkDataBlock reads the entries of one directory data block (block
// form "XD2B"/"XDB3" or data form "XD2D"/"XDD3"); other blocks are
// skipped.
func (f *FS) walkDataBlock(b []byte, fn func(string, uint64) bool) bool {
	hdr := 16
	if f.v5 {
		hdr = 64
	}
	end := len(b)
	switch string(b[0:4]) {
	case "XD2B", "XDB3":
		// The block's tail: the leaf entries and their count.
		count := int(be.Uint32(b[len(b)-8:]))
		end = len(b) - 8 - 8*count
		if count < 0 || end < hdr {
			return false
		}
	case "XD2D", "XDD3":
	default:
		return false
	}
	for pos := hdr; pos+8 <= end; {
		if be.Uint16(b[pos:]) == 0xFFFF { // unused space
			l := int(be.Uint16(b[pos+2:]))
			if l < 8 || l%8 != 0 {
				return false
			}
			pos += l
			continue
		}
		child := be.Uint64(b[pos:])
		nl := int(b[pos+8])
		size := 8 + 1 + nl + 2
		if f.ftype {
			size++
		}
		size = (size + 7) &^ 7
		if nl == 0 || pos+size > end {
			return false
		}
		name := string(b[pos+9 : pos+9+nl])
		pos += size
		if name == "." || name == ".." {
			continue
		}
		if fn(name, child) {
			return true
		}
	}
	return false
}

func (f *FS) Lookup(dir vfs.Node, name string) (vfs.Node, bool, error) {
	var found uint64
	ok := false
	err := f.walkDir(dir.ID, func(n string, child uint64) bool {
		if n == name {
			found, ok = child, true
			return true
		}
		return false
	})
	if err != nil || !ok {
		return vfs.Node{}, false, err
	}
	n, _, err := f.node(found)
	return n, err == nil, err
}

func (f *FS) ReadDir(dir vfs.Node, max int) ([]vfs.DirEntry, error) {
	type ent struct {
		name string
		ino  uint64
	}
	var ents []ent
	tooMany := false
	err := f.walkDir(dir.ID, func(n string, child uint64) bool {
		if len(ents) >= max {
			tooMany = true
			return true
		}
		ents = append(ents, ent{n, child})
		return false
	})
	if err != nil {
		return nil, err
	}
	if tooMany {
		return nil, fmt.Errorf("%w: more than %d", vfs.ErrTooMany, max)
	}
	out := make([]vfs.DirEntry, 0, len(ents))
	for _, e := range ents {
		n, _, err := f.node(e.ino)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
		out = append(out, vfs.DirEntry{Name: e.name, Node: n})
	}
	return out, nil
}

func (f *FS) Readlink(n vfs.Node) (string, error) {
	in, err := f.inode(n.ID)
	if err != nil {
		return "", err
	}
	if in.typ() != vfs.TypeSymlink {
		return "", errors.New("xfs: not a symbolic link")
	}
	if in.size > maxLink || in.size == 0 {
		return "", fmt.Errorf("xfs: symbolic link of %d bytes", in.size)
	}
	if in.format == fmtLocal {
		if in.size > int64(len(in.fork)) {
			return "", errors.New("xfs: symbolic link larger than its fork")
		}
		return string(in.fork[:in.size]), nil
	}
	// Remote: v5 blocks start with a 56-byte "XSLM" header.
	if !f.v5 {
		b := make([]byte, in.size)
		if k, err := f.readInode(n.ID, in, b, 0); k != len(b) {
			return "", fmt.Errorf("xfs: symbolic link: %w", err)
		}
		return string(b), nil
	}
	var out []byte
	blk := make([]byte, f.bs)
	for l := int64(0); int64(len(out)) < in.size && l < 4; l++ {
		at, _, err := f.mapBlock(n.ID, in, uint64(l))
		if err != nil {
			return "", err
		}
		if at < 0 {
			return "", errors.New("xfs: hole in a symbolic link")
		}
		if err := f.readFull(blk, at); err != nil {
			return "", err
		}
		if string(blk[0:4]) != "XSLM" {
			return "", errors.New("xfs: bad symbolic link block")
		}
		nb := int64(be.Uint32(blk[8:]))
		if nb <= 0 || 56+nb > f.bs {
			return "", errors.New("xfs: bad symbolic link block length")
		}
		out = append(out, blk[56:56+nb]...)
	}
	if int64(len(out)) != in.size {
		return "", errors.New("xfs: symbolic link length mismatch")
	}
	return string(out), nil
}

func cstr(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
