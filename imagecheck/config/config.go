package config

import (
	"sort"
	"strconv"
	"strings"
)

const maxLines = 100000

func lines(b []byte) []string {
	ls := strings.Split(string(b), "\n")
	if len(ls) > maxLines {
		ls = ls[:maxLines]
	}
	for i := range ls {
		ls[i] = strings.TrimRight(ls[i], "\r")
	}
	return ls
}

// FstabEntry is one line of /etc/fstab.
type FstabEntry struct {
	Spec, File, Type string
	Options          []string
	Line             int
}

// HasOption tells whether the entry has option o.
func (e FstabEntry) HasOption(o string) bool {
	for _, x := range e.Options {
		if x == o || strings.HasPrefix(x, o+"=") {
			return true
		}
	}
	return false
}

// ParseFstab parses fstab(5): whitespace-separated fields, "#" comments,
// octal escapes (\040) in the fields.
func ParseFstab(b []byte) []FstabEntry {
	var out []FstabEntry
	for n, l := range lines(b) {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		e := FstabEntry{Spec: unescapeOctal(f[0]), File: unescapeOctal(f[1]), Type: "auto", Line: n + 1}
		if len(f) > 2 {
			e.Type = f[2]
		}
		if len(f) > 3 {
			e.Options = strings.Split(f[3], ",")
		}
		out = append(out, e)
	}
	return out
}

func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s)+0 && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Param is one kernel command line parameter.
type Param struct{ Key, Value string }

// ParseCmdline splits a kernel command line as the kernel does (spaces
// outside double quotes; the quotes removed).
func ParseCmdline(s string) []Param {
	var out []Param
	var cur strings.Builder
	inq := false
	flush := func() {
		if cur.Len() == 0 {
			return
		}
		w := cur.String()
		cur.Reset()
		k, v, _ := strings.Cut(w, "=")
		out = append(out, Param{k, v})
	}
	for i := 0; i < len(s) && len(out) < 4096; i++ {
		c := s[i]
		switch {
		case c == '"':
			inq = !inq
		case (c == ' ' || c == '\t' || c == '\n') && !inq:
			flush()
		default:
			cur.WriteByte(c)
		}
	}
	flush()
	return out
}

// Get returns the last value of key (the one the kernel uses).
func Get(ps []Param, key string) (string, bool) {
	v, ok := "", false
	for _, p := range ps {
		if p.Key == key {
			v, ok = p.Value, true
		}
	}
	return v, ok
}

// GrubEntry is a menuentry of grub.cfg.
type GrubEntry struct {
	// Title is the entry's title, Path its place ("submenu>title"), ID
	// its --id (or $menuentry_id_option) when given.
	Title, Path, ID string
	Index           string // "N" or "N>M" for an entry in a submenu
	Linux           string // the kernel path, as written
	Args            string // the kernel command line
	Initrds         []string
	Line            int
}

// GrubConfig is what grub.cfg says about booting.
type GrubConfig struct {
	Default string // set default=...
	Entries []GrubEntry
	// BLS is true when the configuration loads Boot Loader Specification
	// entries (blscfg), as Fedora, RHEL and their kin do.
	BLS bool
}

// ParseGrub reads the menu entries of a grub.cfg: their titles, ids,
// linux and initrd lines, nested in submenus, and "set default".
func ParseGrub(b []byte) *GrubConfig {
	c := &GrubConfig{}
	stack := []*grubFrame{{kind: "top", entry: -1}}
	for n, raw := range lines(b) {
		l := strings.TrimSpace(raw)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		w := grubWords(l)
		if len(w) == 0 {
			continue
		}
		top := stack[len(stack)-1]
		switch w[0] {
		case "menuentry", "submenu":
			f := &grubFrame{kind: w[0], index: top.kids, entry: -1}
			top.kids++
			if len(w) > 1 {
				f.title = w[1]
			}
			if w[0] == "menuentry" && len(c.Entries) < 1000 {
				e := GrubEntry{Title: f.title, Line: n + 1}
				var path, idx []string
				for _, s := range stack[1:] {
					if s.kind == "submenu" {
						path = append(path, s.title)
						idx = append(idx, strconv.Itoa(s.index))
					}
				}
				e.Path = strings.Join(append(path, f.title), ">")
				e.Index = strings.Join(append(idx, strconv.Itoa(f.index)), ">")
				for i := 2; i+1 < len(w); i++ {
					if w[i] == "--id" || w[i] == "$menuentry_id_option" {
						e.ID = w[i+1]
					}
				}
				c.Entries = append(c.Entries, e)
				f.entry = len(c.Entries) - 1
			}
			if strings.HasSuffix(l, "{") && len(stack) < 64 {
				stack = append(stack, f)
			}
		case "}":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
		case "if", "function", "for", "while":
			if strings.HasSuffix(l, "{") && len(stack) < 64 {
				stack = append(stack, &grubFrame{kind: "other", entry: -1})
			}
		case "set":
			if len(w) > 1 && strings.HasPrefix(w[1], "default=") && len(stack) == 1 {
				c.Default = strings.Trim(strings.TrimPrefix(w[1], "default="), `"'`)
			}
		case "blscfg":
			c.BLS = true
		case "linux", "linuxefi", "linux16":
			if e := innerEntry(c, stack); e != nil && len(w) > 1 {
				e.Linux = w[1]
				e.Args = strings.Join(w[2:], " ")
			}
		case "initrd", "initrdefi", "initrd16":
			if e := innerEntry(c, stack); e != nil && len(e.Initrds) < 16 {
				e.Initrds = append(e.Initrds, w[1:]...)
			}
		}
	}
	return c
}

type grubFrame struct {
	kind  string // top, menuentry, submenu, other
	title string
	index int // among its parent's entries
	kids  int
	entry int // index in Entries of a menuentry, -1 otherwise
}

// innerEntry is the menuentry the current line belongs to.
func innerEntry(c *GrubConfig, stack []*grubFrame) *GrubEntry {
	for i := len(stack) - 1; i > 0; i-- {
		if stack[i].kind == "menuentry" {
			if stack[i].entry < 0 {
				return nil
			}
			return &c.Entries[stack[i].entry]
		}
	}
	return nil
}

// grubWords splits a grub.cfg line into words (quotes removed).
func grubWords(l string) []string {
	var out []string
	var cur strings.Builder
	var q byte
	has := false
	for i := 0; i < len(l) && len(out) < 256; i++ {
		c := l[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\'' || c == '"':
			q, has = c, true
		case c == ' ' || c == '\t':
			if cur.Len() > 0 || has {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
		case c == '\\' && i+1 < len(l):
			i++
			cur.WriteByte(l[i])
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 || has {
		out = append(out, cur.String())
	}
	return out
}

// DefaultEntry is the entry GRUB boots: "set default" by index ("1",
// "1>0"), title, path or id; the first entry when unset, a variable
// ("${saved_entry}") or not found.
func (c *GrubConfig) DefaultEntry(env map[string]string) *GrubEntry {
	if len(c.Entries) == 0 {
		return nil
	}
	d := c.Default
	if strings.HasPrefix(d, "$") {
		d = env[strings.Trim(d, "${}")]
	}
	if d != "" {
		for i := range c.Entries {
			e := &c.Entries[i]
			if e.Index == d || e.Title == d || e.Path == d || (e.ID != "" && e.ID == d) {
				return e
			}
		}
	}
	return &c.Entries[0]
}

// BLSEntry is a Boot Loader Specification entry (loader/entries/*.conf).
type BLSEntry struct {
	ID                    string // the file name without .conf
	Title, Version, Linux string
	Options               string
	Initrds               []string
	LinuxLine, InitrdLine int
}

// ParseBLS parses one entry file.
func ParseBLS(id string, b []byte) BLSEntry {
	e := BLSEntry{ID: id}
	var opts []string
	for n, l := range lines(b) {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, _ := strings.Cut(l, " ")
		v = strings.TrimSpace(v)
		switch k {
		case "title":
			e.Title = v
		case "version":
			e.Version = v
		case "linux":
			e.Linux, e.LinuxLine = v, n+1
		case "initrd":
			if len(e.Initrds) < 16 {
				e.Initrds = append(e.Initrds, strings.Fields(v)...)
			}
			e.InitrdLine = n + 1
		case "options":
			opts = append(opts, v)
		}
	}
	e.Options = strings.Join(opts, " ")
	return e
}

// SortBLS sorts entries as GRUB's blscfg and systemd-boot show them:
// newest version first (then by id).
func SortBLS(es []BLSEntry) {
	sort.SliceStable(es, func(i, j int) bool {
		if c := VersionCompare(es[i].Version, es[j].Version); c != 0 {
			return c > 0
		}
		return VersionCompare(es[i].ID, es[j].ID) > 0
	})
}

// VersionCompare compares versions as rpmvercmp-like strings: runs of
// digits numerically, other runs bytewise.
func VersionCompare(a, b string) int {
	for a != "" || b != "" {
		ra, rest1 := run(a)
		rb, rest2 := run(b)
		a, b = rest1, rest2
		da, db := ra != "" && isDigit(ra[0]), rb != "" && isDigit(rb[0])
		switch {
		case da && db:
			x, y := strings.TrimLeft(ra, "0"), strings.TrimLeft(rb, "0")
			if len(x) != len(y) {
				return cmp(len(x), len(y))
			}
			if x != y {
				return strings.Compare(x, y)
			}
		case ra != rb:
			if da {
				return 1
			}
			if db {
				return -1
			}
			return strings.Compare(ra, rb)
		}
	}
	return 0
}

func cmp(a, b int) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func run(s string) (string, string) {
	s = strings.TrimLeft(s, ".-_~+")
	if s == "" {
		return "", ""
	}
	d := isDigit(s[0])
	i := 0
	for i < len(s) && isDigit(s[i]) == d && !strings.ContainsRune(".-_~+", rune(s[i])) {
		i++
	}
	return s[:i], s[i:]
}

// ParseEnv reads a grubenv (or any key=value file).
func ParseEnv(b []byte) map[string]string {
	m := map[string]string{}
	for _, l := range lines(b) {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && len(m) < 1000 {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}
