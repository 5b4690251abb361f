package drivers

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// Modules is a module directory's index: each module's file (relative to
// /lib/modules/<version>) and dependencies (modules.dep), and the modules
// built into the kernel (modules.builtin), which need no loading.
type Modules struct {
	Path    map[string]string   // module name → file
	Deps    map[string][]string // module name → the modules it needs (all of them, as depmod lists them)
	Builtin map[string]bool
}

// ModuleName is the module name of a .ko file path ("kernel/drivers/hid/hid-generic.ko.xz" → "hid_generic").
func ModuleName(file string) string {
	b := path.Base(file)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return Normalize(b)
}

// ParseDeps reads modules.dep ("FILE: DEP DEP ..." lines).
func ParseDeps(r io.Reader) (*Modules, error) {
	m := &Modules{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(file) == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"FILE: DEPS\": %.80q", n, line)
		}
		name := ModuleName(file)
		m.Path[name] = strings.TrimSpace(file)
		for _, d := range strings.Fields(deps) {
			m.Deps[name] = append(m.Deps[name], ModuleName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return m, nil
}

// AddBuiltin reads modules.builtin (one file path a line).
func (m *Modules) AddBuiltin(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			m.Builtin[ModuleName(l)] = true
		}
	}
	return sc.Err()
}

// Order is the modules to load for name, dependencies first, name last;
// built-in modules and those in loaded are left out. A module that is
// neither in modules.dep nor built in is an error.
func (m *Modules) Order(name string, loaded map[string]bool) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var visit func(n string, depth int) error
	visit = func(n string, depth int) error {
		n = Normalize(n)
		if seen[n] || loaded[n] || m.Builtin[n] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("module %s: dependencies nest too deep (a cycle?)", name)
		}
		seen[n] = true
		if _, ok := m.Path[n]; !ok {
			return fmt.Errorf("module %s is not in modules.dep", n)
		}
		for _, d := range m.Deps[n] {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		out = append(out, n)
		return nil
	}
	if err := visit(name, 0); err != nil {
		return nil, err
	}
	return out, nil
}
