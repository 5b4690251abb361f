// Package config parses the configuration files of an image's system that
// decide whether it boots and comes up on a server: fstab, the kernel
// command line, grub.cfg, Boot Loader Specification entries, grubenv,
// cloud-init's cloud.cfg (a YAML subset), netplan, ifupdown,
// systemd-networkd and NetworkManager files, udev's persistent net rules.
// The bytes are untrusted: every parser bounds its input, depth and output,
// and returns what it understood; nothing here panics or fails on odd
// input.
package config

import (
	"strings"
)

// The YAML subset: block mappings and sequences by indentation, flow
// sequences and mappings ([a, b], {k: v}, over several lines), plain,
// single- and double-quoted scalars, comments, "---"; block scalars (| >)
// are read as strings. Anchors, aliases and tags are kept as plain text
// (never expanded). Values are map[string]any, []any or string.

const (
	maxYAMLBytes = 1 << 20
	maxYAMLDepth = 32
	maxYAMLNodes = 20000
)

type yline struct {
	indent int
	text   string // without indentation and comment
	num    int
}

type yparser struct {
	lines []yline
	i     int
	nodes int
}

// ParseYAML parses the subset; what it cannot read is left out.
func ParseYAML(b []byte) any {
	if len(b) > maxYAMLBytes {
		b = b[:maxYAMLBytes]
	}
	p := &yparser{}
	for n, l := range strings.Split(string(b), "\n") {
		l = strings.TrimRight(l, "\r")
		t := strings.TrimLeft(l, " ")
		if strings.HasPrefix(t, "\t") {
			t = strings.TrimLeft(t, " \t") // tabs are not YAML indentation; be lenient
		}
		t = strings.TrimSpace(stripComment(t))
		if t == "" || t == "---" || t == "..." || strings.HasPrefix(t, "%") {
			continue
		}
		p.lines = append(p.lines, yline{indent: len(l) - len(strings.TrimLeft(l, " \t")), text: t, num: n + 1})
	}
	if len(p.lines) == 0 {
		return nil
	}
	return p.block(p.lines[0].indent, 0)
}

// stripComment drops a " #" comment outside quotes.
func stripComment(s string) string {
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '\'' || c == '"':
			if i == 0 || s[i-1] == ' ' || s[i-1] == '[' || s[i-1] == '{' || s[i-1] == ',' || s[i-1] == ':' {
				q = c
			}
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i]
		}
	}
	return s
}

func (p *yparser) budget(depth int) bool {
	p.nodes++
	return depth <= maxYAMLDepth && p.nodes <= maxYAMLNodes
}

// block parses the lines at indentation ind.
func (p *yparser) block(ind, depth int) any {
	if p.i >= len(p.lines) || !p.budget(depth) {
		return nil
	}
	if isSeqItem(p.lines[p.i].text) {
		return p.seq(ind, depth)
	}
	return p.mapping(ind, depth)
}

func isSeqItem(t string) bool { return t == "-" || strings.HasPrefix(t, "- ") }

func (p *yparser) seq(ind, depth int) []any {
	var out []any
	for p.i < len(p.lines) && p.lines[p.i].indent == ind && isSeqItem(p.lines[p.i].text) && p.budget(depth) {
		rest := strings.TrimSpace(strings.TrimPrefix(p.lines[p.i].text, "-"))
		if rest == "" {
			p.i++
			if p.i < len(p.lines) && p.lines[p.i].indent > ind {
				out = append(out, p.block(p.lines[p.i].indent, depth+1))
			} else {
				out = append(out, nil)
			}
			continue
		}
		if k, _, ok := splitKey(rest); ok && k != "" && !strings.HasPrefix(rest, "[") && !strings.HasPrefix(rest, "{") {
			// "- key: v": a mapping whose keys sit past the dash.
			sub := ind + len(p.lines[p.i].text) - len(rest)
			p.lines[p.i].indent, p.lines[p.i].text = sub, rest
			out = append(out, p.mapping(sub, depth+1))
			continue
		}
		p.i++
		out = append(out, p.value(rest, ind, depth+1))
	}
	return out
}

func (p *yparser) mapping(ind, depth int) map[string]any {
	m := map[string]any{}
	for p.i < len(p.lines) && p.budget(depth) {
		l := p.lines[p.i]
		if l.indent > ind { // a stray deeper line: skip it
			p.i++
			continue
		}
		if l.indent < ind {
			break
		}
		if isSeqItem(l.text) {
			break
		}
		k, rest, ok := splitKey(l.text)
		if !ok {
			p.i++ // not a mapping line: skip it
			continue
		}
		p.i++
		if rest == "" {
			switch {
			case p.i < len(p.lines) && p.lines[p.i].indent > ind:
				m[k] = p.block(p.lines[p.i].indent, depth+1)
			case p.i < len(p.lines) && p.lines[p.i].indent == ind && isSeqItem(p.lines[p.i].text):
				m[k] = p.seq(ind, depth+1)
			default:
				m[k] = nil
			}
			continue
		}
		m[k] = p.value(rest, ind, depth+1)
	}
	return m
}

// value reads an inline value, pulling continuation lines of a flow
// collection or a block scalar.
func (p *yparser) value(rest string, ind, depth int) any {
	if rest == "|" || rest == ">" || strings.HasPrefix(rest, "|") || strings.HasPrefix(rest, ">") {
		var parts []string
		for p.i < len(p.lines) && p.lines[p.i].indent > ind {
			parts = append(parts, p.lines[p.i].text)
			p.i++
		}
		return strings.Join(parts, "\n")
	}
	if strings.HasPrefix(rest, "[") || strings.HasPrefix(rest, "{") {
		for !balanced(rest) && p.i < len(p.lines) && len(rest) < maxYAMLBytes {
			rest += " " + p.lines[p.i].text
			p.i++
		}
		fp := &flow{s: rest, p: p}
		return fp.value(depth)
	}
	return unquote(rest)
}

func balanced(s string) bool {
	d := 0
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '[' || c == '{':
			d++
		case c == ']' || c == '}':
			d--
		}
	}
	return d <= 0
}

// splitKey splits "key: rest" (the key maybe quoted).
func splitKey(t string) (string, string, bool) {
	if strings.HasPrefix(t, `"`) || strings.HasPrefix(t, "'") {
		q := t[0]
		j := strings.IndexByte(t[1:], q)
		if j < 0 {
			return "", "", false
		}
		k, after := t[1:1+j], t[2+j:]
		if !strings.HasPrefix(after, ":") {
			return "", "", false
		}
		return k, strings.TrimSpace(after[1:]), true
	}
	for i := 0; i < len(t); i++ {
		if t[i] == ':' && (i == len(t)-1 || t[i+1] == ' ' || t[i+1] == '\t') {
			return strings.TrimSpace(t[:i]), strings.TrimSpace(t[i+1:]), true
		}
	}
	return "", "", false
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return s[1 : len(s)-1]
	}
	return s
}

// flow parses a flow collection.
type flow struct {
	s string
	i int
	p *yparser
}

func (f *flow) ws() {
	for f.i < len(f.s) && (f.s[f.i] == ' ' || f.s[f.i] == '\t') {
		f.i++
	}
}

func (f *flow) value(depth int) any {
	f.ws()
	if f.i >= len(f.s) || !f.p.budget(depth) {
		return nil
	}
	switch f.s[f.i] {
	case '[':
		f.i++
		var out []any
		for f.i < len(f.s) {
			f.ws()
			if f.i < len(f.s) && f.s[f.i] == ']' {
				f.i++
				return out
			}
			start := f.i
			out = append(out, f.value(depth+1))
			f.ws()
			if f.i < len(f.s) && f.s[f.i] == ',' {
				f.i++
			} else if f.i == start || (f.i < len(f.s) && f.s[f.i] != ']') {
				f.i++ // no progress or junk: skip a byte
			}
			if !f.p.budget(depth) {
				break
			}
		}
		return out
	case '{':
		f.i++
		m := map[string]any{}
		for f.i < len(f.s) {
			f.ws()
			if f.i < len(f.s) && f.s[f.i] == '}' {
				f.i++
				return m
			}
			start := f.i
			k, _ := f.scalar(true).(string)
			f.ws()
			var v any
			if f.i < len(f.s) && f.s[f.i] == ':' {
				f.i++
				v = f.value(depth + 1)
			}
			if k != "" {
				m[k] = v
			}
			f.ws()
			if f.i < len(f.s) && f.s[f.i] == ',' {
				f.i++
			} else if f.i == start || (f.i < len(f.s) && f.s[f.i] != '}') {
				f.i++
			}
			if !f.p.budget(depth) {
				break
			}
		}
		return m
	}
	return f.scalar(false)
}

func (f *flow) scalar(key bool) any {
	f.ws()
	if f.i < len(f.s) && (f.s[f.i] == '"' || f.s[f.i] == '\'') {
		q := f.s[f.i]
		j := strings.IndexByte(f.s[f.i+1:], q)
		if j < 0 {
			v := f.s[f.i+1:]
			f.i = len(f.s)
			return v
		}
		v := f.s[f.i+1 : f.i+1+j]
		f.i += j + 2
		return v
	}
	start := f.i
	for f.i < len(f.s) {
		c := f.s[f.i]
		if c == ',' || c == ']' || c == '}' || (key && c == ':') || (c == ':' && f.i+1 < len(f.s) && f.s[f.i+1] == ' ') {
			break
		}
		f.i++
	}
	return strings.TrimSpace(f.s[start:f.i])
}

// Path walks nested mappings by keys.
func Path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// Strings returns the strings of a sequence (or a lone string).
func Strings(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
