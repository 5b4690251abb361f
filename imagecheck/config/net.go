package config

import (
	"path"
	"sort"
	"strings"
)

// Binding is a network configuration's tie to an interface: by name
// (maybe a glob), or by MAC address.
type Binding struct {
	Name string // interface name or glob ("" when bound by MAC only)
	MAC  string // lower-case, colon-separated ("" when bound by name)
	Line int
	// Rename is the name the configuration gives the interface it
	// matches (netplan set-name, a .link file's Name=, a udev rule's
	// NAME=).
	Rename string
}

// NormalizeMAC returns a MAC as six lower-case colon-separated hex pairs
// ("" when s is none).
func NormalizeMAC(s string) string {
	s = strings.ToLower(strings.Trim(s, `"' `))
	s = strings.ReplaceAll(s, "-", ":")
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return ""
	}
	for _, p := range parts {
		if len(p) != 2 || strings.Trim(p, "0123456789abcdef") != "" {
			return ""
		}
	}
	return s
}

// Netplan returns the bindings of a netplan document's ethernets (and the
// physical members named in bonds and bridges are ethernets too).
func Netplan(doc any) []Binding {
	eth, _ := Path(doc, "network", "ethernets").(map[string]any)
	ids := make([]string, 0, len(eth))
	for id := range eth {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []Binding
	for _, id := range ids {
		b := Binding{}
		cfg, _ := eth[id].(map[string]any)
		match, hasMatch := cfg["match"].(map[string]any)
		if hasMatch {
			if m, ok := match["macaddress"].(string); ok {
				b.MAC = NormalizeMAC(m)
			}
			if n, ok := match["name"].(string); ok {
				b.Name = n
			}
			if b.MAC == "" && b.Name == "" {
				continue // matched by driver or path: nothing to judge
			}
		} else {
			b.Name = id
		}
		if s, ok := cfg["set-name"].(string); ok {
			b.Rename = s
		}
		out = append(out, b)
	}
	return out
}

// Interfaces parses ifupdown's interfaces(5): the interfaces brought up
// (auto, allow-hotplug, iface stanzas) and their hwaddress, and the files
// it sources.
func Interfaces(b []byte) (binds []Binding, sources []string) {
	seen := map[string]int{}
	add := func(name string, line int) {
		if name == "lo" || name == "" || strings.ContainsAny(name, "=") {
			return
		}
		if _, ok := seen[name]; !ok && len(binds) < 1000 {
			seen[name] = len(binds)
			binds = append(binds, Binding{Name: name, Line: line})
		}
	}
	cur := ""
	for n, l := range lines(b) {
		f := strings.Fields(stripComment(l))
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "auto", "allow-hotplug", "allow-auto":
			for _, name := range f[1:] {
				add(name, n+1)
			}
			cur = ""
		case "iface":
			if len(f) > 1 {
				cur = f[1]
				add(cur, n+1)
			}
		case "mapping":
			cur = ""
		case "source", "source-directory":
			if len(f) > 1 && len(sources) < 64 {
				s := f[1]
				if f[0] == "source-directory" {
					s = path.Join(s, "*")
				}
				sources = append(sources, s)
			}
		case "hwaddress":
			if i, ok := seen[cur]; ok && cur != "" {
				mac := f[len(f)-1]
				binds[i].MAC = NormalizeMAC(mac)
			}
		}
	}
	return binds, sources
}

// Section is one [section] of an INI-style file with its keys in order.
type Section struct {
	Name string
	Keys []KV
}

// KV is a key and its value, with its line.
type KV struct {
	Key, Value string
	Line       int
}

// ParseINI parses systemd unit-style and NetworkManager keyfiles.
func ParseINI(b []byte) []Section {
	var out []Section
	for n, l := range lines(b) {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			if len(out) < 1000 {
				out = append(out, Section{Name: strings.TrimSpace(l[1 : len(l)-1])})
			}
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || len(out) == 0 {
			continue
		}
		s := &out[len(out)-1]
		if len(s.Keys) < 1000 {
			s.Keys = append(s.Keys, KV{strings.TrimSpace(k), strings.TrimSpace(v), n + 1})
		}
	}
	return out
}

// Networkd returns the bindings of a systemd-networkd .network or .link
// file: its [Match] Name= and MACAddress= (PermanentMACAddress=), and for a
// .link file the [Link] Name= it gives.
func Networkd(b []byte) []Binding {
	var names, macs []KV
	rename := ""
	for _, s := range ParseINI(b) {
		for _, kv := range s.Keys {
			switch {
			case s.Name == "Match" && kv.Key == "Name":
				names = append(names, kv)
			case s.Name == "Match" && (kv.Key == "MACAddress" || kv.Key == "PermanentMACAddress"):
				macs = append(macs, kv)
			case s.Name == "Link" && kv.Key == "Name":
				rename = kv.Value
			}
		}
	}
	var out []Binding
	for _, kv := range macs {
		for _, m := range strings.Fields(kv.Value) {
			if mac := NormalizeMAC(m); mac != "" {
				out = append(out, Binding{MAC: mac, Line: kv.Line, Rename: rename})
			}
		}
	}
	if len(macs) == 0 {
		for _, kv := range names {
			for _, n := range strings.Fields(kv.Value) {
				if !strings.HasPrefix(n, "!") {
					out = append(out, Binding{Name: n, Line: kv.Line, Rename: rename})
				}
			}
		}
	}
	return out
}

// NetworkManager returns the binding of a NetworkManager keyfile
// connection: interface-name= and the ethernet mac-address=.
func NetworkManager(b []byte) []Binding {
	var bd Binding
	for _, s := range ParseINI(b) {
		for _, kv := range s.Keys {
			switch {
			case s.Name == "connection" && kv.Key == "interface-name":
				bd.Name, bd.Line = kv.Value, kv.Line
			case (s.Name == "ethernet" || s.Name == "802-3-ethernet") && kv.Key == "mac-address":
				bd.MAC = NormalizeMAC(kv.Value)
				if bd.Line == 0 {
					bd.Line = kv.Line
				}
			}
		}
	}
	if bd.Name == "" && bd.MAC == "" {
		return nil
	}
	return []Binding{bd}
}

// UdevNetRules returns the renames of udev's persistent net rules
// (70-persistent-net.rules): ATTR{address}=="MAC" ... NAME="eth0".
func UdevNetRules(b []byte) []Binding {
	var out []Binding
	for n, l := range lines(b) {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || !strings.Contains(l, "NAME=") {
			continue
		}
		var bd Binding
		for _, part := range strings.Split(l, ",") {
			part = strings.TrimSpace(part)
			switch {
			case strings.HasPrefix(part, "ATTR{address}=="):
				bd.MAC = NormalizeMAC(strings.TrimPrefix(part, "ATTR{address}=="))
			case strings.HasPrefix(part, "NAME="):
				bd.Rename = strings.Trim(strings.TrimPrefix(part, "NAME="), `"`)
			}
		}
		if bd.MAC != "" && len(out) < 1000 {
			bd.Line = n + 1
			out = append(out, bd)
		}
	}
	return out
}

// DatasourceList returns cloud-init's datasource_list of a cloud.cfg
// document, and whether it sets one.
func DatasourceList(doc any) ([]string, bool) {
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, false
	}
	v, ok := m["datasource_list"]
	if !ok {
		return nil, false
	}
	var out []string
	for _, s := range Strings(v) {
		for _, p := range strings.Split(s, ",") { // "a, b" as one plain scalar
			if p = strings.Trim(strings.TrimSpace(p), `"'`); p != "" {
				out = append(out, p)
			}
		}
	}
	return out, true
}
