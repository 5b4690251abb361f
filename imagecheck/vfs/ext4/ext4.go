// Package ext4 reads ext2, ext3 and ext4 filesystems, read-only and enough
// to look files up, list directories, read files and symbolic links (the
// kernel's "ext4 Data Structures and Algorithms" layout). The bytes are
// untrusted: nothing is sized from the superblock (group descriptors are
// read one at a time, when an inode of that group is needed), extent trees
// are bounded in depth, nodes and extents, directories in bytes scanned,
// symbolic links in length; no method recurses on the image's data.
//
// Not supported (lookups fail with an error, never a wrong answer): inline
// data longer than the inode's 60 bytes, encrypted names (they never
// match), the journal (a filesystem that needs recovery is read as it is
// on disk).
package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/byoi/byoi/imagecheck/vfs"
)

// ErrNotExt is returned by Open for bytes that are not an ext2/3/4
// filesystem.
var ErrNotExt = errors.New("not an ext2/3/4 filesystem")

const (
	incompatFiletype = 0x2
	incompatMetaBG   = 0x10
	incompat64bit    = 0x80
	roSparseSuper    = 0x1

	flagExtents = 0x80000
	flagInline  = 0x10000000

	rootIno = 2

	// Bounds against hostile filesystems.
	maxExtents     = 1 << 16 // leaf extents of one file
	maxExtentNodes = 4096    // extent tree blocks read for one file
	maxDirBytes    = 64 << 20
	maxLink        = 4096
)

var le = binary.LittleEndian

// FS is an opened ext2/3/4 filesystem.
type FS struct {
	r              io.ReaderAt
	size           int64
	bs             int64
	inodes         uint32
	ipg            uint32
	bpg            uint32
	inodeSize      int64
	descSize       int64
	firstDataBlock uint32
	firstMetaBG    uint32
	incompat       uint32
	rocompat       uint32
	// UUID and Label are the superblock's, as blkid shows them.
	UUID, Label string

	// the extents of the file last read
	extIno uint64
	ext    []extent
}

// Open reads the superblock of the filesystem in r (size bytes).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return nil, fmt.Errorf("ext4: read superblock: %w", err)
	}
	if le.Uint16(sb[56:]) != 0xEF53 {
		return nil, ErrNotExt
	}
	f := &FS{r: r, size: size}
	logBS := le.Uint32(sb[24:])
	if logBS > 6 {
		return nil, fmt.Errorf("%w: block size 2^%d KiB", ErrNotExt, logBS)
	}
	f.bs = 1024 << logBS
	f.inodes = le.Uint32(sb[0:])
	f.firstDataBlock = le.Uint32(sb[20:])
	f.bpg = le.Uint32(sb[32:])
	f.ipg = le.Uint32(sb[40:])
	f.incompat = le.Uint32(sb[96:])
	f.rocompat = le.Uint32(sb[100:])
	f.firstMetaBG = le.Uint32(sb[260:])
	f.inodeSize = 128
	if le.Uint32(sb[76:]) >= 1 { // dynamic revision
		f.inodeSize = int64(le.Uint16(sb[88:]))
	}
	if is := f.inodeSize; is < 128 || is > f.bs || is&(is-1) != 0 {
		return nil, fmt.Errorf("%w: inode size %d", ErrNotExt, is)
	}
	f.descSize = 32
	if f.incompat&incompat64bit != 0 {
		f.descSize = int64(le.Uint16(sb[254:]))
		if ds := f.descSize; ds < 32 || ds > 1024 || ds&(ds-1) != 0 {
			return nil, fmt.Errorf("%w: group descriptor size %d", ErrNotExt, ds)
		}
	}
	if f.ipg == 0 || f.bpg == 0 || f.inodes == 0 {
		return nil, fmt.Errorf("%w: zero inodes or blocks per group", ErrNotExt)
	}
	if f.firstDataBlock > 1 {
		return nil, fmt.Errorf("%w: first data block %d", ErrNotExt, f.firstDataBlock)
	}
	f.UUID = uuid(sb[104:120])
	f.Label = cstr(sb[120:136])
	return f, nil
}

func (f *FS) Kind() string { return "ext4" }

func (f *FS) readFull(p []byte, off int64) error {
	if off < 0 || off > f.size || int64(len(p)) > f.size-off {
		return fmt.Errorf("ext4: read of %d bytes at %d outside the filesystem", len(p), off)
	}
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("ext4: read at %d: %w", off, err)
}

// hasSuper tells whether group g holds a superblock backup.
func (f *FS) hasSuper(g uint64) bool {
	if g <= 1 || f.rocompat&roSparseSuper == 0 {
		return true
	}
	for _, b := range []uint64{3, 5, 7} {
		p := b
		for p < g {
			p *= b
		}
		if p == g {
			return true
		}
	}
	return false
}

// descOffset is the byte offset of group g's descriptor.
func (f *FS) descOffset(g uint64) int64 {
	dpb := uint64(f.bs / f.descSize)
	if f.incompat&incompatMetaBG != 0 && g/dpb >= uint64(f.firstMetaBG) {
		first := g / dpb * dpb
		blk := uint64(f.firstDataBlock) + first*uint64(f.bpg)
		if f.hasSuper(first) {
			blk++
		}
		return int64(blk)*f.bs + int64(g%dpb)*f.descSize
	}
	return int64(f.firstDataBlock+1)*f.bs + int64(g)*f.descSize
}

type inode struct {
	mode  uint16
	flags uint32
	size  int64
	block [60]byte
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
	if ino == 0 || ino > uint64(f.inodes) {
		return nil, fmt.Errorf("ext4: inode %d out of range", ino)
	}
	g, idx := (ino-1)/uint64(f.ipg), (ino-1)%uint64(f.ipg)
	d := make([]byte, min(f.descSize, 64))
	off := f.descOffset(g)
	if off > f.size {
		return nil, fmt.Errorf("ext4: group %d descriptor outside the filesystem", g)
	}
	if err := f.readFull(d, off); err != nil {
		return nil, err
	}
	table := uint64(le.Uint32(d[8:]))
	if f.descSize >= 64 {
		table |= uint64(le.Uint32(d[0x28:])) << 32
	}
	if table == 0 || table > uint64(f.size/f.bs) {
		return nil, fmt.Errorf("ext4: group %d inode table at block %d", g, table)
	}
	b := make([]byte, 128)
	if err := f.readFull(b, int64(table)*f.bs+int64(idx)*f.inodeSize); err != nil {
		return nil, err
	}
	in := &inode{mode: le.Uint16(b[0:]), flags: le.Uint32(b[0x20:])}
	size := uint64(le.Uint32(b[4:])) | uint64(le.Uint32(b[0x6C:]))<<32
	if size > 1<<50 {
		return nil, fmt.Errorf("ext4: inode %d size %d", ino, size)
	}
	in.size = int64(size)
	copy(in.block[:], b[0x28:0x28+60])
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
	n, _, err := f.node(rootIno)
	if err == nil && n.Type != vfs.TypeDir {
		err = errors.New("ext4: root inode is not a directory")
	}
	return n, err
}

type extent struct {
	lblk   uint64
	length uint64
	pblk   uint64
	uninit bool
}

// extents collects the leaf extents of an extent-mapped inode, sorted.
func (f *FS) extents(in *inode) ([]extent, error) {
	var out []extent
	nodes := 0
	type item struct {
		b     []byte
		depth int // expected depth, -1 at the root
	}
	stack := []item{{in.block[:], -1}}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		b := it.b
		if len(b) < 12 || le.Uint16(b[0:]) != 0xF30A {
			return nil, errors.New("ext4: bad extent header")
		}
		entries, max, depth := int(le.Uint16(b[2:])), int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
		if depth > 5 || (it.depth >= 0 && depth != it.depth) {
			return nil, fmt.Errorf("ext4: extent tree depth %d", depth)
		}
		if entries > max || 12+12*max > len(b) {
			return nil, fmt.Errorf("ext4: extent node of %d/%d entries", entries, max)
		}
		for i := entries - 1; i >= 0; i-- { // pushed in reverse: popped in order
			e := b[12+12*i : 24+12*i]
			if depth == 0 {
				n := uint64(le.Uint16(e[4:]))
				x := extent{lblk: uint64(le.Uint32(e[0:])), pblk: uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))}
				if n > 32768 {
					n, x.uninit = n-32768, true
				}
				x.length = n
				if len(out) >= maxExtents {
					return nil, fmt.Errorf("ext4: more than %d extents", maxExtents)
				}
				out = append(out, x)
				continue
			}
			nodes++
			if nodes > maxExtentNodes {
				return nil, fmt.Errorf("ext4: more than %d extent tree blocks", maxExtentNodes)
			}
			leaf := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
			nb := make([]byte, f.bs)
			if err := f.readFull(nb, int64(leaf)*f.bs); err != nil {
				return nil, err
			}
			stack = append(stack, item{nb, depth - 1})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].lblk < out[j].lblk })
	return out, nil
}

// mapBlock finds where logical block l of the inode is: the physical
// block and how many blocks follow it contiguously (0 physical: a hole,
// reading as zeros, for run blocks).
func (f *FS) mapBlock(ino uint64, in *inode, l uint64) (phys, run uint64, err error) {
	if in.flags&flagExtents != 0 {
		if f.extIno != ino || f.ext == nil {
			ext, err := f.extents(in)
			if err != nil {
				return 0, 0, err
			}
			f.extIno, f.ext = ino, ext
		}
		ext := f.ext
		i := sort.Search(len(ext), func(i int) bool { return ext[i].lblk+ext[i].length > l })
		if i == len(ext) {
			return 0, 1 << 32, nil
		}
		e := ext[i]
		if e.lblk > l {
			return 0, e.lblk - l, nil
		}
		if e.uninit {
			return 0, e.lblk + e.length - l, nil
		}
		return e.pblk + (l - e.lblk), e.lblk + e.length - l, nil
	}
	// Block map (ext2/3): 12 direct, then single, double, triple indirect.
	per := uint64(f.bs / 4)
	ptr := func(blk, i uint64) (uint64, error) {
		if blk == 0 {
			return 0, nil
		}
		b := make([]byte, 4)
		if err := f.readFull(b, int64(blk)*f.bs+int64(i)*4); err != nil {
			return 0, err
		}
		return uint64(le.Uint32(b)), nil
	}
	if l < 12 {
		return uint64(le.Uint32(in.block[4*l:])), 1, nil
	}
	l -= 12
	levels := []uint64{per, per * per, per * per * per}
	for depth, span := range levels {
		if l >= span {
			l -= span
			continue
		}
		blk := uint64(le.Uint32(in.block[4*(12+depth):]))
		for d := depth; d >= 0; d-- {
			unit := uint64(1)
			for k := 0; k < d; k++ {
				unit *= per
			}
			if blk, err = ptr(blk, l/unit); err != nil {
				return 0, 0, err
			}
			l %= unit
		}
		return blk, 1, nil
	}
	return 0, 0, errors.New("ext4: block beyond the triple indirect map")
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
		return 0, errors.New("ext4: negative offset")
	}
	if off >= in.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > in.size-off {
		p = p[:in.size-off]
	}
	if in.flags&flagInline != 0 {
		if in.size > 60 {
			return 0, errors.New("ext4: inline data beyond the inode is not supported")
		}
		k := copy(p, in.block[off:in.size])
		return k, eofIf(k < want)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		l := uint64(pos / f.bs)
		phys, run, err := f.mapBlock(ino, in, l)
		if err != nil {
			return done, err
		}
		inBlock := pos % f.bs
		avail := int64(min(run, 1<<20))*f.bs - inBlock
		chunk := p[done:min(len(p), done+int(min(avail, 1<<30)))]
		if phys == 0 {
			clear(chunk)
		} else if err := f.readFull(chunk, int64(phys)*f.bs+inBlock); err != nil {
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

// walkDir calls fn for each entry of directory ino until fn returns true.
func (f *FS) walkDir(ino uint64, fn func(name string, child uint64) bool) error {
	in, err := f.inode(ino)
	if err != nil {
		return err
	}
	if in.typ() != vfs.TypeDir {
		return errors.New("ext4: not a directory")
	}
	nameLen16 := f.incompat&incompatFiletype == 0
	parse := func(b []byte) bool {
		for off := 0; off+8 <= len(b); {
			child := le.Uint32(b[off:])
			rec := int(le.Uint16(b[off+4:]))
			nl := int(b[off+6])
			if nameLen16 {
				nl |= int(b[off+7]) << 8
			}
			if rec < 8 || rec%4 != 0 || off+rec > len(b) {
				return false // damaged block: skip its rest
			}
			if child != 0 && nl > 0 && 8+nl <= rec {
				name := string(b[off+8 : off+8+nl])
				if name != "." && name != ".." && fn(name, uint64(child)) {
					return true
				}
			}
			off += rec
		}
		return false
	}
	if in.flags&flagInline != 0 {
		if in.size > 60 {
			return errors.New("ext4: inline directory beyond the inode is not supported")
		}
		parse(in.block[4:60])
		return nil
	}
	if in.size > maxDirBytes {
		return fmt.Errorf("ext4: directory of %d bytes", in.size)
	}
	blk := make([]byte, f.bs)
	for off := int64(0); off < in.size; off += f.bs {
		n, err := f.readInode(ino, in, blk, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if parse(blk[:n]) {
			return nil
		}
	}
	return nil
}

func (f *FS) Lookup(dir vfs.Node, name string) (vfs.Node, bool, error) {
	var found uint64
	err := f.walkDir(dir.ID, func(n string, child uint64) bool {
		if n == name {
			found = child
			return true
		}
		return false
	})
	if err != nil || found == 0 {
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
		return "", errors.New("ext4: not a symbolic link")
	}
	if in.size > maxLink {
		return "", fmt.Errorf("ext4: symbolic link of %d bytes", in.size)
	}
	if in.size < 60 && in.flags&(flagExtents|flagInline) == 0 {
		return string(in.block[:in.size]), nil // fast symlink
	}
	b := make([]byte, in.size)
	k, err := f.readInode(n.ID, in, b, 0)
	if k != len(b) {
		return "", fmt.Errorf("ext4: symbolic link: %w", err)
	}
	return string(b), nil
}

func uuid(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func cstr(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
