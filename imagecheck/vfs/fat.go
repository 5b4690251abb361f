package vfs

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/internal/fat"
)

// FAT is a Driver over byoi's FAT reader (internal/fat). Names are
// matched without regard to case, as FAT does. Files are read whole (up to
// MaxFATFile) on first access, one at a time.
type FAT struct {
	fs      *fat.FS
	entries []fat.Entry // Node.ID indexes this table
	cur     int         // the file whose content is held, -1 none
	content []byte
}

// MaxFATFile is the largest file the FAT driver reads (a kernel or an
// initramfs on an EFI System Partition, for systemd-boot).
const MaxFATFile = 128 << 20

// maxFATNodes bounds the node table.
const maxFATNodes = 1 << 16

// OpenFAT opens the FAT filesystem in r (size bytes).
func OpenFAT(r io.ReaderAt, size int64) (*FAT, error) {
	f, err := fat.Open(r, size)
	if err != nil {
		return nil, err
	}
	root, _, err := f.Lookup("/")
	if err != nil {
		return nil, err
	}
	return &FAT{fs: f, entries: []fat.Entry{root}, cur: -1}, nil
}

func (f *FAT) Kind() string { return "vfat" }

// Label is the boot sector's volume label.
func (f *FAT) Label() string { return f.fs.Label }

func (f *FAT) node(e fat.Entry) (Node, error) {
	if len(f.entries) >= maxFATNodes {
		return Node{}, errors.New("vfat: too many files looked up")
	}
	f.entries = append(f.entries, e)
	t := TypeRegular
	if e.Dir {
		t = TypeDir
	}
	return Node{ID: uint64(len(f.entries) - 1), Type: t, Size: e.Size}, nil
}

func (f *FAT) entry(n Node) (fat.Entry, error) {
	if n.ID >= uint64(len(f.entries)) {
		return fat.Entry{}, fmt.Errorf("vfat: no node %d", n.ID)
	}
	return f.entries[n.ID], nil
}

func (f *FAT) Root() (Node, error) { return Node{ID: 0, Type: TypeDir}, nil }

func (f *FAT) Lookup(dir Node, name string) (Node, bool, error) {
	e, err := f.entry(dir)
	if err != nil {
		return Node{}, false, err
	}
	ents, err := f.fs.ReadDir(e)
	if err != nil {
		return Node{}, false, err
	}
	for _, d := range ents {
		if strings.EqualFold(d.Name, name) {
			n, err := f.node(d)
			return n, err == nil, err
		}
	}
	return Node{}, false, nil
}

func (f *FAT) ReadDir(dir Node, max int) ([]DirEntry, error) {
	e, err := f.entry(dir)
	if err != nil {
		return nil, err
	}
	ents, err := f.fs.ReadDir(e)
	if err != nil {
		return nil, err
	}
	if len(ents) > max {
		return nil, fmt.Errorf("%w: more than %d", ErrTooMany, max)
	}
	out := make([]DirEntry, 0, len(ents))
	for _, d := range ents {
		n, err := f.node(d)
		if err != nil {
			return nil, err
		}
		out = append(out, DirEntry{Name: d.Name, Node: n})
	}
	return out, nil
}

func (f *FAT) Readlink(Node) (string, error) { return "", errors.New("vfat has no symbolic links") }

func (f *FAT) ReadAt(n Node, p []byte, off int64) (int, error) {
	if int(n.ID) != f.cur {
		e, err := f.entry(n)
		if err != nil {
			return 0, err
		}
		b, err := f.fs.ReadFile(e, MaxFATFile)
		if err != nil {
			return 0, err
		}
		f.cur, f.content = int(n.ID), b
	}
	if off >= int64(len(f.content)) {
		return 0, io.EOF
	}
	k := copy(p, f.content[off:])
	if k < len(p) {
		return k, io.EOF
	}
	return k, nil
}
