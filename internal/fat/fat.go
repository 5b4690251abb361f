// Package fat reads FAT12, FAT16 and FAT32 filesystems (Microsoft's FAT
// specification, "FAT: General Overview of On-Disk Format", 2000), enough
// to look up files by path in an image's EFI System Partition. The bytes are
// untrusted: every offset is checked, cluster chains are bounded, and
// nothing panics.
package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf16"
)

// ErrNotFAT means the bytes are not a FAT filesystem.
var ErrNotFAT = errors.New("not a FAT filesystem")

// FS is an opened FAT filesystem.
type FS struct {
	r                 io.ReaderAt
	size              int64
	bytesPerSector    int64
	sectorsPerCluster int64
	clusterSize       int64
	fatOffset         int64
	fatSize           int64 // bytes of one FAT
	rootOffset        int64 // FAT12/16 fixed root directory
	rootEntries       int64
	rootCluster       uint32 // FAT32
	dataOffset        int64
	clusters          uint32 // count of data clusters
	Type              int    // 12, 16 or 32
	Label             string

	dirBytes int64              // directory bytes read so far (maxDirTotal)
	listings map[uint32][]Entry // ReadDir's, by first cluster (0: the root)
}

// Open reads the boot sector of the filesystem in r (size bytes).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	bs := make([]byte, 512)
	if _, err := r.ReadAt(bs, 0); err != nil {
		return nil, fmt.Errorf("read FAT boot sector: %w", err)
	}
	le := binary.LittleEndian
	if bs[510] != 0x55 || bs[511] != 0xAA {
		return nil, fmt.Errorf("%w: no boot sector signature", ErrNotFAT)
	}
	fs := &FS{r: r, size: size}
	fs.bytesPerSector = int64(le.Uint16(bs[11:]))
	fs.sectorsPerCluster = int64(bs[13])
	reserved := int64(le.Uint16(bs[14:]))
	numFATs := int64(bs[16])
	fs.rootEntries = int64(le.Uint16(bs[17:]))
	totalSectors := int64(le.Uint16(bs[19:]))
	if totalSectors == 0 {
		totalSectors = int64(le.Uint32(bs[32:]))
	}
	fatSectors := int64(le.Uint16(bs[22:]))
	if fatSectors == 0 {
		fatSectors = int64(le.Uint32(bs[36:]))
	}
	switch fs.bytesPerSector {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("%w: %d bytes per sector", ErrNotFAT, fs.bytesPerSector)
	}
	if spc := fs.sectorsPerCluster; spc == 0 || spc&(spc-1) != 0 || spc > 128 {
		return nil, fmt.Errorf("%w: %d sectors per cluster", ErrNotFAT, spc)
	}
	if reserved == 0 || numFATs == 0 || numFATs > 4 || fatSectors == 0 || totalSectors == 0 {
		return nil, fmt.Errorf("%w: bad geometry", ErrNotFAT)
	}
	fs.clusterSize = fs.bytesPerSector * fs.sectorsPerCluster
	fs.fatOffset = reserved * fs.bytesPerSector
	fs.fatSize = fatSectors * fs.bytesPerSector
	rootSectors := (fs.rootEntries*32 + fs.bytesPerSector - 1) / fs.bytesPerSector
	fs.rootOffset = fs.fatOffset + numFATs*fs.fatSize
	fs.dataOffset = fs.rootOffset + rootSectors*fs.bytesPerSector
	dataSectors := totalSectors - (fs.dataOffset / fs.bytesPerSector)
	if dataSectors <= 0 {
		return nil, fmt.Errorf("%w: no data area", ErrNotFAT)
	}
	fs.clusters = uint32(min(dataSectors/fs.sectorsPerCluster, 0x0FFFFFF5))
	labelAt := 43
	switch {
	case fs.clusters < 4085:
		fs.Type = 12
	case fs.clusters < 65525:
		fs.Type = 16
	default:
		fs.Type = 32
		fs.rootCluster = le.Uint32(bs[44:])
		labelAt = 71
	}
	if fs.Type != 32 && fs.rootEntries == 0 {
		return nil, fmt.Errorf("%w: FAT%d without a root directory", ErrNotFAT, fs.Type)
	}
	fs.Label = strings.TrimRight(string(bs[labelAt:labelAt+11]), " \x00")
	// FAT sizes must hold an entry for every cluster.
	need := (int64(fs.clusters) + 2) * int64(fs.Type) / 8
	if fs.fatSize < need {
		return nil, fmt.Errorf("%w: FAT of %d bytes for %d clusters", ErrNotFAT, fs.fatSize, fs.clusters)
	}
	return fs, nil
}

// next returns the cluster after c in its chain (>= 0x0FFFFFF8 = end).
func (fs *FS) next(c uint32) (uint32, error) {
	var off int64
	var n int
	switch fs.Type {
	case 12:
		off, n = int64(c)+int64(c)/2, 2
	case 16:
		off, n = int64(c)*2, 2
	default:
		off, n = int64(c)*4, 4
	}
	b := make([]byte, 4)
	if _, err := fs.r.ReadAt(b[:n], fs.fatOffset+off); err != nil {
		return 0, fmt.Errorf("read FAT: %w", err)
	}
	v := binary.LittleEndian.Uint32(b)
	switch fs.Type {
	case 12:
		if c&1 == 1 {
			v >>= 4
		}
		v &= 0xFFF
		if v >= 0xFF8 {
			return 0x0FFFFFFF, nil
		}
	case 16:
		v &= 0xFFFF
		if v >= 0xFFF8 {
			return 0x0FFFFFFF, nil
		}
	default:
		v &= 0x0FFFFFFF
	}
	return v, nil
}

// readChain reads the clusters of a chain starting at c, at most limit
// bytes (a loop in a hostile FAT ends at the limit). On an error, what was
// read before it is returned with it.
func (fs *FS) readChain(c uint32, limit int64) ([]byte, error) {
	var out []byte
	for c >= 2 && c < 0x0FFFFFF8 {
		if c >= fs.clusters+2 {
			return out, fmt.Errorf("cluster %d outside the filesystem", c)
		}
		if int64(len(out))+fs.clusterSize > limit {
			return out, fmt.Errorf("directory larger than %d bytes (a loop in the FAT?)", limit)
		}
		buf := make([]byte, fs.clusterSize)
		if _, err := fs.r.ReadAt(buf, fs.dataOffset+int64(c-2)*fs.clusterSize); err != nil {
			return out, fmt.Errorf("read cluster %d: %w", c, err)
		}
		out = append(out, buf...)
		var err error
		if c, err = fs.next(c); err != nil {
			return out, err
		}
	}
	return out, nil
}

// Entry is a directory entry.
type Entry struct {
	Name    string
	Dir     bool
	Size    int64
	cluster uint32
}

const maxDirBytes = 4 << 20

// maxDirTotal bounds the directory bytes read over an FS's life: hostile
// directories that share one long cluster chain are each read in full, and
// a walk of many of them would otherwise copy gigabytes from a cache.
const maxDirTotal = 64 << 20

// dirChain reads the directory whose chain starts at c, within both bounds.
func (fs *FS) dirChain(c uint32) ([]byte, error) {
	limit := min(maxDirBytes, maxDirTotal-fs.dirBytes)
	b, err := fs.readChain(c, limit)
	fs.dirBytes += int64(len(b)) // what was read, even when it failed
	if err != nil {
		if limit < maxDirBytes {
			return nil, fmt.Errorf("directories of more than %d MiB in all (cluster chains shared or looping)", maxDirTotal>>20)
		}
		return nil, err
	}
	return b, nil
}

func (fs *FS) rootDir() ([]byte, error) {
	if fs.Type == 32 {
		return fs.dirChain(fs.rootCluster)
	}
	b := make([]byte, fs.rootEntries*32)
	if _, err := fs.r.ReadAt(b, fs.rootOffset); err != nil {
		return nil, fmt.Errorf("read root directory: %w", err)
	}
	return b, nil
}

// parseDir decodes the entries of a directory, with long names.
func parseDir(b []byte) []Entry {
	var out []Entry
	var lfn []uint16
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			lfn = nil
			continue
		}
		attr := e[11]
		if attr == 0x0F { // long name part, stored last part first
			var part []uint16
			for _, r := range [][2]int{{1, 11}, {14, 26}, {28, 32}} {
				for j := r[0]; j < r[1]; j += 2 {
					part = append(part, binary.LittleEndian.Uint16(e[j:]))
				}
			}
			if e[0]&0x40 != 0 {
				lfn = nil
			}
			lfn = append(part, lfn...)
			continue
		}
		if attr&0x08 != 0 { // volume label
			lfn = nil
			continue
		}
		name := ""
		if lfn != nil {
			for k, c := range lfn {
				if c == 0 || c == 0xFFFF {
					lfn = lfn[:k]
					break
				}
			}
			name = string(utf16.Decode(lfn))
		} else {
			base := strings.TrimRight(string(e[0:8]), " ")
			ext := strings.TrimRight(string(e[8:11]), " ")
			name = base
			if ext != "" {
				name += "." + ext
			}
		}
		lfn = nil
		le := binary.LittleEndian
		c := uint32(le.Uint16(e[26:])) | uint32(le.Uint16(e[20:]))<<16
		out = append(out, Entry{Name: name, Dir: attr&0x10 != 0, Size: int64(le.Uint32(e[28:])), cluster: c})
	}
	return out
}

// Lookup finds a file or directory by path, case-insensitively; both "/"
// and "\" separate components (EFI paths use backslashes).
func (fs *FS) Lookup(path string) (Entry, bool, error) {
	parts := strings.FieldsFunc(path, func(r rune) bool { return r == '/' || r == '\\' })
	dir, err := fs.rootDir()
	if err != nil {
		return Entry{}, false, err
	}
	cur := Entry{Name: "/", Dir: true}
	for i, p := range parts {
		found := false
		for _, e := range parseDir(dir) {
			if strings.EqualFold(e.Name, p) {
				cur, found = e, true
				break
			}
		}
		if !found {
			return Entry{}, false, nil
		}
		if i < len(parts)-1 {
			if !cur.Dir {
				return Entry{}, false, nil
			}
			if dir, err = fs.dirChain(cur.cluster); err != nil {
				return Entry{}, false, err
			}
		}
	}
	return cur, true, nil
}

// ReadFile returns the content of the file e (found by Lookup), refusing
// files larger than limit bytes.
func (fs *FS) ReadFile(e Entry, limit int64) ([]byte, error) {
	if e.Dir {
		return nil, fmt.Errorf("%s is a directory", e.Name)
	}
	if e.Size > limit {
		return nil, fmt.Errorf("%s: %d bytes is over the limit of %d", e.Name, e.Size, limit)
	}
	if e.Size == 0 {
		return nil, nil
	}
	b, err := fs.readChain(e.cluster, (e.Size+fs.clusterSize-1)/fs.clusterSize*fs.clusterSize)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) < e.Size {
		return nil, fmt.Errorf("%s: cluster chain holds %d of its %d bytes", e.Name, len(b), e.Size)
	}
	return b[:e.Size], nil
}

// ReadDir lists the directory e (found by Lookup; Lookup("/") is the root
// directory), without its "." and ".." entries. A directory is read up to
// the same bound as Lookup's (4 MiB), and once: its listing is kept (the
// caller must not change it).
func (fs *FS) ReadDir(e Entry) ([]Entry, error) {
	if !e.Dir {
		return nil, fmt.Errorf("%s is not a directory", e.Name)
	}
	if l, ok := fs.listings[e.cluster]; ok {
		return l, nil
	}
	var b []byte
	var err error
	if e.cluster == 0 { // the root, or a ".." that points to it
		b, err = fs.rootDir()
	} else {
		b, err = fs.dirChain(e.cluster)
	}
	if err != nil {
		return nil, err
	}
	out := []Entry{}
	for _, d := range parseDir(b) {
		if d.Name != "." && d.Name != ".." {
			out = append(out, d)
		}
	}
	if fs.listings == nil {
		fs.listings = map[uint32][]Entry{}
	}
	if len(fs.listings) < 1024 {
		fs.listings[e.cluster] = out
	}
	return out, nil
}
