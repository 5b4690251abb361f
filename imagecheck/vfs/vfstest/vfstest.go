// Package vfstest builds directory trees for filesystem tests and checks a
// vfs.Driver against them.
package vfstest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/byoi/byoi/imagecheck/vfs"
)

// Entry is a file of a test tree: a regular file (Data), a directory (Dir)
// or a symbolic link (Link).
type Entry struct {
	Data []byte
	Dir  bool
	Link string
}

// Tree maps slash paths (no leading slash) to entries.
type Tree map[string]Entry

// Sample is a tree that exercises the readers: nested directories, a
// merged /usr (lib -> usr/lib), fast and slow symbolic links, a relative
// link through "..", a link loop, a large directory (hashed in ext4, a
// node directory in XFS) and a file of several MiB.
func Sample() Tree {
	t := Tree{
		"etc/fstab":                       {Data: []byte("UUID=x / ext4 defaults 0 1\n")},
		"etc/hostname":                    {Data: []byte("host\n")},
		"usr/lib/modules/6.1.0/a.ko":      {Data: []byte("module")},
		"lib":                             {Link: "usr/lib"},
		"bin":                             {Link: "/usr/bin"},
		"usr/bin/sh":                      {Data: []byte("#!")},
		"boot/vmlinuz-6.1.0":              {Data: bytes.Repeat([]byte("K"), 5000)},
		"vmlinuz":                         {Link: "boot/vmlinuz-6.1.0"},
		"usr/share/long":                  {Link: "../../" + strings.Repeat("d/", 40) + "file"},
		strings.Repeat("d/", 40) + "file": {Data: []byte("deep")},
		"loop/a":                          {Link: "b"},
		"loop/b":                          {Link: "a"},
		"empty":                           {Dir: true},
	}
	big := make([]byte, 5<<20+123)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	t["boot/initrd.img"] = Entry{Data: big}
	for i := 0; i < 800; i++ {
		t[fmt.Sprintf("many/file-with-a-longish-name-%04d", i)] = Entry{Data: []byte(fmt.Sprint(i))}
	}
	return t
}

// Write creates the tree under dir.
func Write(t testing.TB, dir string, tree Tree) {
	t.Helper()
	for p, e := range tree {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case e.Dir:
			err = os.MkdirAll(full, 0o755)
		case e.Link != "":
			err = os.Symlink(e.Link, full)
		default:
			err = os.WriteFile(full, e.Data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Check reads every file of tree through d (mounted alone) and compares.
func Check(t *testing.T, d vfs.Driver, tree Tree) {
	t.Helper()
	tr := vfs.NewTree(d)
	for p, e := range tree {
		switch {
		case e.Dir:
			ents, err := tr.ReadDir(p, 10)
			if err != nil || len(ents) != 0 {
				t.Errorf("%s: %v, %v", p, ents, err)
			}
		case e.Link != "":
			l, err := tr.Lstat(p)
			if err != nil || l.Node.Type != vfs.TypeSymlink {
				t.Errorf("lstat %s: %+v %v", p, l, err)
				continue
			}
			target, err := d.Readlink(l.Node)
			if err != nil || target != e.Link {
				t.Errorf("readlink %s = %q, %v; want %q", p, target, err, e.Link)
			}
		default:
			b, err := tr.ReadFile(p, 64<<20)
			if err != nil || !bytes.Equal(b, e.Data) {
				t.Errorf("%s: %d bytes, %v; want %d", p, len(b), err, len(e.Data))
			}
		}
	}
	// Through links.
	for p, want := range map[string]string{
		"lib/modules/6.1.0/a.ko": "module", "/bin/sh": "#!", "usr/share/long": "deep",
		"/usr/lib/../lib/modules/6.1.0/a.ko": "module", "../../etc/hostname": "host\n",
	} {
		b, err := tr.ReadFile(p, 1<<20)
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", p, b, err, want)
		}
	}
	if b, err := tr.ReadFile("vmlinuz", 1<<20); err != nil || len(b) != 5000 {
		t.Errorf("vmlinuz: %d, %v", len(b), err)
	}
	if _, err := tr.Stat("loop/a"); err == nil || !strings.Contains(err.Error(), vfs.ErrLoop.Error()) {
		t.Errorf("loop: %v", err)
	}
	if _, err := tr.Stat("etc/nothing"); !vfs.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := tr.Stat("etc/fstab/x"); !vfs.IsNotExist(err) {
		t.Errorf("file as directory: %v", err)
	}
	ents, err := tr.ReadDir("many", 3000)
	if err != nil || len(ents) != 800 {
		t.Errorf("many: %d entries, %v", len(ents), err)
	}
	if _, err := tr.ReadDir("many", 100); err == nil {
		t.Error("ReadDir max not enforced")
	}
	if l, err := tr.Stat("many/file-with-a-longish-name-0799"); err != nil || l.Node.Type != vfs.TypeRegular {
		t.Errorf("lookup in a large directory: %v", err)
	}
	// Sequential reads of the large file in odd chunks.
	l, err := tr.Stat("boot/initrd.img")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.LimitReader(vfs.Open(l), 64<<20))
	if err != nil || !bytes.Equal(got, tree["boot/initrd.img"].Data) {
		t.Errorf("initrd.img through Open: %d bytes, %v", len(got), err)
	}
}

// Exercise walks whatever d holds (for fuzzing): lookups, listings, reads
// and links, every error accepted.
func Exercise(d vfs.Driver) {
	tr := vfs.NewTree(d)
	for _, p := range []string{"/", "etc", "lib", "boot", "many"} {
		ents, err := tr.ReadDir(p, 64)
		if err != nil {
			continue
		}
		for _, e := range ents {
			full := p + "/" + e.Name
			switch e.Node.Type {
			case vfs.TypeRegular:
				tr.ReadFile(full, 1<<20)
			case vfs.TypeSymlink:
				d.Readlink(e.Node)
				tr.Stat(full)
			}
		}
	}
	tr.ReadFile("etc/fstab", 1<<20)
	tr.Stat("lib/modules/6.1.0/a.ko")
}

// Budget wraps b in a vfs.Reader with a small budget, for fuzzing.
func Budget(b []byte) *vfs.Reader {
	return vfs.NewReader(context.Background(), bytes.NewReader(b), int64(len(b)), vfs.Limits{MaxBytes: 64 << 20})
}

// Proto writes mkfs.xfs's protofile for tree, whose files are under src.
func Proto(tree Tree, src string) string {
	type node struct {
		kids map[string]*node
		path string
		e    Entry
	}
	root := &node{kids: map[string]*node{}}
	for p, e := range tree {
		cur := root
		parts := strings.Split(p, "/")
		for i, c := range parts {
			k, ok := cur.kids[c]
			if !ok {
				k = &node{kids: map[string]*node{}, path: strings.Join(parts[:i+1], "/"), e: Entry{Dir: true}}
				cur.kids[c] = k
			}
			if i == len(parts)-1 {
				k.e = e
			}
			cur = k
		}
	}
	var b strings.Builder
	b.WriteString("/dev/null\n0 0\nd--755 0 0\n")
	var walk func(n *node)
	walk = func(n *node) {
		names := make([]string, 0, len(n.kids))
		for k := range n.kids {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, name := range names {
			k := n.kids[name]
			switch {
			case k.e.Link != "":
				fmt.Fprintf(&b, "%s l--777 0 0 %s\n", name, k.e.Link)
			case k.e.Dir:
				fmt.Fprintf(&b, "%s d--755 0 0\n", name)
				walk(k)
				b.WriteString("$\n")
			default:
				fmt.Fprintf(&b, "%s ---644 0 0 %s\n", name, filepath.Join(src, k.path))
			}
		}
	}
	walk(root)
	b.WriteString("$\n")
	return b.String()
}
