package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Type is the type of a file.
type Type uint8

const (
	TypeOther Type = iota
	TypeRegular
	TypeDir
	TypeSymlink
)

func (t Type) String() string {
	return [...]string{"other", "file", "directory", "symlink"}[min(int(t), 3)]
}

// Node is a file of one filesystem: the driver's handle (an inode number),
// its type and size.
type Node struct {
	ID   uint64
	Type Type
	Size int64
}

// DirEntry is a directory entry.
type DirEntry struct {
	Name string
	Node Node
}

// Driver reads one filesystem. Each method bounds its own work (directory
// bytes scanned, extents, link length); the Reader below it bounds the
// bytes and the time.
type Driver interface {
	// Kind names the filesystem type: ext4, xfs, vfat.
	Kind() string
	Root() (Node, error)
	// Lookup finds one name (no "/", not "." or "..") in directory dir.
	Lookup(dir Node, name string) (Node, bool, error)
	// ReadDir lists directory dir, at most max entries ("." and ".."
	// left out); more is an error.
	ReadDir(dir Node, max int) ([]DirEntry, error)
	// Readlink returns the target of symlink n.
	Readlink(n Node) (string, error)
	// ReadAt reads the content of regular file n.
	ReadAt(n Node, p []byte, off int64) (int, error)
}

// ErrLoop is returned when resolving a path follows more than MaxLinks
// symbolic links.
var ErrLoop = errors.New("too many levels of symbolic links")

// ErrTooMany is returned by ReadDir when a directory holds more entries
// than asked for.
var ErrTooMany = errors.New("too many directory entries")

const (
	// MaxLinks is Linux's limit of symbolic links followed in one path
	// resolution (MAXSYMLINKS).
	MaxLinks = 40
	// MaxPath is the longest path resolved (PATH_MAX).
	MaxPath = 4096
)

// Tree is a set of filesystems mounted at paths: the image's system as its
// fstab would assemble it.
type Tree struct {
	mounts map[string]Driver // cleaned absolute path -> driver
}

// NewTree returns a tree with root mounted at "/".
func NewTree(root Driver) *Tree { return &Tree{mounts: map[string]Driver{"/": root}} }

// Mount mounts d at the absolute path at (which must exist as a
// directory for lookups to reach it, as with a real mount).
func (t *Tree) Mount(at string, d Driver) { t.mounts[path.Clean("/"+at)] = d }

// MountedAt returns the driver mounted at path p (nil when none).
func (t *Tree) MountedAt(p string) Driver { return t.mounts[path.Clean("/"+p)] }

// Loc is a resolved file: its filesystem, node and canonical path.
type Loc struct {
	FS   Driver
	Node Node
	Path string
}

type step struct {
	fs   Driver
	node Node
	name string
}

// resolve walks p. With follow, a final symlink is followed too.
func (t *Tree) resolve(p string, follow bool) (Loc, error) {
	if len(p) > MaxPath {
		return Loc{}, fmt.Errorf("%.64s...: path too long", p)
	}
	root, ok := t.mounts["/"]
	if !ok {
		return Loc{}, errors.New("no root filesystem")
	}
	rn, err := root.Root()
	if err != nil {
		return Loc{}, err
	}
	stack := []step{{fs: root, node: rn}}
	queue := split(p)
	links := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := stack[len(stack)-1]
		if cur.node.Type != TypeDir {
			return Loc{}, fmt.Errorf("%s: %w", canonical(stack), errNotDir)
		}
		n, found, err := cur.fs.Lookup(cur.node, c)
		if err != nil {
			return Loc{}, fmt.Errorf("%s/%s: %w", canonical(stack[1:]), c, err)
		}
		if !found {
			return Loc{}, fmt.Errorf("%s: %w", path.Join(canonical(stack), c), fs.ErrNotExist)
		}
		next := step{fs: cur.fs, node: n, name: c}
		if n.Type == TypeSymlink && (len(queue) > 0 || follow) {
			links++
			if links > MaxLinks {
				return Loc{}, fmt.Errorf("%s: %w", p, ErrLoop)
			}
			target, err := cur.fs.Readlink(n)
			if err != nil {
				return Loc{}, fmt.Errorf("%s: readlink: %w", path.Join(canonical(stack), c), err)
			}
			if target == "" {
				return Loc{}, fmt.Errorf("%s: empty symlink", path.Join(canonical(stack), c))
			}
			if strings.HasPrefix(target, "/") {
				stack = stack[:1]
			}
			queue = append(split(target), queue...)
			if len(queue) > MaxPath {
				return Loc{}, fmt.Errorf("%s: path too long", p)
			}
			continue
		}
		stack = append(stack, next)
		if d, ok := t.mounts[canonical(stack)]; ok && n.Type == TypeDir {
			dn, err := d.Root()
			if err != nil {
				return Loc{}, fmt.Errorf("%s (mounted %s): %w", canonical(stack), d.Kind(), err)
			}
			stack[len(stack)-1] = step{fs: d, node: dn, name: c}
		}
	}
	last := stack[len(stack)-1]
	return Loc{FS: last.fs, Node: last.node, Path: canonical(stack)}, nil
}

var errNotDir = errors.New("not a directory")

func split(p string) []string { return strings.Split(p, "/") }

func canonical(stack []step) string {
	var b strings.Builder
	for _, s := range stack {
		if s.name != "" {
			b.WriteString("/")
			b.WriteString(s.name)
		}
	}
	if b.Len() == 0 {
		return "/"
	}
	return b.String()
}

// Stat resolves p, following symbolic links.
func (t *Tree) Stat(p string) (Loc, error) { return t.resolve(p, true) }

// Lstat resolves p without following a final symbolic link.
func (t *Tree) Lstat(p string) (Loc, error) { return t.resolve(p, false) }

// Exists tells whether p resolves (errors other than "does not exist"
// are returned).
func (t *Tree) Exists(p string) (bool, error) {
	_, err := t.Stat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
		return false, nil
	}
	return err == nil, err
}

// IsNotExist tells whether err means a path does not exist.
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) }

// ReadFile reads the regular file p (symbolic links followed), refusing
// files larger than limit bytes.
func (t *Tree) ReadFile(p string, limit int64) ([]byte, error) {
	l, err := t.Stat(p)
	if err != nil {
		return nil, err
	}
	return ReadAll(l, limit)
}

// ReadAll reads the regular file l, refusing files larger than limit.
func ReadAll(l Loc, limit int64) ([]byte, error) {
	if l.Node.Type != TypeRegular {
		return nil, fmt.Errorf("%s is a %s, not a file", l.Path, l.Node.Type)
	}
	if l.Node.Size > limit {
		return nil, fmt.Errorf("%s is %d bytes, over the limit of %d", l.Path, l.Node.Size, limit)
	}
	b := make([]byte, l.Node.Size)
	n, err := l.FS.ReadAt(l.Node, b, 0)
	if n == len(b) {
		return b, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("%s: %w", l.Path, err)
}

// Open returns a reader of the regular file l.
func Open(l Loc) io.Reader {
	return io.NewSectionReader(fileReaderAt{l}, 0, l.Node.Size)
}

type fileReaderAt struct{ l Loc }

func (f fileReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return f.l.FS.ReadAt(f.l.Node, p, off)
}

// ReadDir lists the directory p (symbolic links followed), sorted by name,
// at most max entries. Entries that are symbolic links are reported as such.
func (t *Tree) ReadDir(p string, max int) ([]DirEntry, error) {
	l, err := t.Stat(p)
	if err != nil {
		return nil, err
	}
	if l.Node.Type != TypeDir {
		return nil, fmt.Errorf("%s: %w", l.Path, errNotDir)
	}
	ents, err := l.FS.ReadDir(l.Node, max)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.Path, err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	return ents, nil
}
