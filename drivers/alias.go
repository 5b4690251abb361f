// Package drivers decides which kernel modules drive the devices a machine
// has, without udev: every device's modalias (PCI, USB, HID, SCSI,
// virtio, ...) in sysfs is matched against modules.alias, and the modules
// that match are loaded with their dependencies first (modules.dep),
// again and again until no new modalias appears (sd_mod binds only after
// the HBA has probed; hid-generic only after usbhid). The rescue system's
// init runs it (`byoi drivers load`) before the network comes up.
//
// It also tells the devices no driver claimed: a NIC or a storage
// controller without a driver cannot be used, and the agent reports them
// (Unclaimed) so that the operator sees "PCI 8086:1572 Ethernet controller:
// no driver in the rescue" instead of a server that lacks a disk group.
package drivers

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Alias is one line of modules.alias: a glob pattern and its module.
type Alias struct {
	Pattern, Module string
}

// Aliases is a parsed modules.alias.
type Aliases struct {
	list []Alias
}

// ParseAliases reads modules.alias ("alias PATTERN MODULE" lines; comments
// and blank lines are skipped). Module names are normalised ('-' → '_').
func ParseAliases(r io.Reader) (*Aliases, error) {
	a := &Aliases{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("modules.alias line %d: want \"alias PATTERN MODULE\": %.80q", n, line)
		}
		a.list = append(a.list, Alias{Pattern: f[1], Module: Normalize(f[2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.alias: %w", err)
	}
	return a, nil
}

// Len is the number of aliases.
func (a *Aliases) Len() int { return len(a.list) }

// Match returns the modules whose aliases match modalias, in file order,
// each once.
func (a *Aliases) Match(modalias string) []string {
	var out []string
	seen := map[string]bool{}
	for _, al := range a.list {
		if !seen[al.Module] && Glob(al.Pattern, modalias) {
			seen[al.Module] = true
			out = append(out, al.Module)
		}
	}
	return out
}

// Normalize is a module's name as the kernel knows it: '-' and '_' are the
// same ("hid-generic" is hid_generic).
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// Glob matches s against an fnmatch(3) pattern as kmod does (no flags):
// '*' any run, '?' one byte, '[...]' a set with ranges and '!' or '^'
// negation, '\' escapes the next byte.
func Glob(pattern, s string) bool {
	// Iterative matching with one backtrack point for the last '*': linear
	// in practice, never exponential.
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pattern) {
			switch c := pattern[p]; c {
			case '*':
				starP, starI = p, i
				p++
				continue
			case '?':
				p++
				i++
				continue
			case '[':
				if ok, next, valid := matchSet(pattern, p, s[i]); valid {
					if ok {
						p = next
						i++
						continue
					}
				} else if s[i] == '[' { // a lone '[' is literal
					p++
					i++
					continue
				}
			case '\\':
				if p+1 < len(pattern) && pattern[p+1] == s[i] {
					p += 2
					i++
					continue
				}
			default:
				if c == s[i] {
					p++
					i++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starI++
		p, i = starP+1, starI
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// matchSet matches c against the set starting at pattern[p] == '['. It
// returns whether c is in it, the index after the set, and whether the set
// is well formed (has its closing ']').
func matchSet(pattern string, p int, c byte) (ok bool, next int, valid bool) {
	j := p + 1
	neg := false
	if j < len(pattern) && (pattern[j] == '!' || pattern[j] == '^') {
		neg = true
		j++
	}
	first := true
	for j < len(pattern) {
		if pattern[j] == ']' && !first {
			return ok != neg, j + 1, true
		}
		first = false
		lo := pattern[j]
		if lo == '\\' && j+1 < len(pattern) {
			j++
			lo = pattern[j]
		}
		hi := lo
		if j+2 < len(pattern) && pattern[j+1] == '-' && pattern[j+2] != ']' {
			hi = pattern[j+2]
			j += 2
		}
		if lo <= c && c <= hi {
			ok = true
		}
		j++
	}
	return false, 0, false
}
