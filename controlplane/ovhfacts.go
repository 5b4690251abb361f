package controlplane

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Facts are what an operator knows about servers and byoi-api cannot learn
// (where a server stands, how it is reached, what it was sold as), for the
// fields of OVH's GET /dedicated/server/{sn} and its network
// specifications. Every field is optional: one not given is answered
// null, never invented. Field names are OVH's.
type Facts struct {
	AvailabilityZone string `json:"availabilityZone,omitempty"` // "eu-west-gra-a"
	CommercialRange  string `json:"commercialRange,omitempty"`
	Datacenter       string `json:"datacenter,omitempty"` // OVH's datacenter names (gra1, rbx8...) or your own
	Rack             string `json:"rack,omitempty"`
	Region           string `json:"region,omitempty"` // "eu-west-gra"
	SupportLevel     string `json:"supportLevel,omitempty"`
	// IP is the server's main IPv4 address (ip); Reverse its reverse DNS
	// name; Gateway and Network its IPv4 routing (specifications/network).
	IP      string `json:"ip,omitempty"`
	Reverse string `json:"reverse,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	Network string `json:"network,omitempty"` // CIDR, e.g. 192.0.2.0/24
	// IPs are more blocks routed to the server (GET .../ips lists IP as a
	// /32 first, then these).
	IPs []string `json:"ips,omitempty"`
	// LinkSpeed is the public link's speed in Mbit/s (linkSpeed; the
	// connection of specifications/network).
	LinkSpeed int64 `json:"linkSpeed,omitempty"`
}

// FactsFile is the --server-facts file: defaults for every server, and
// per server (by name) the facts that differ. A server's facts are the
// defaults with its own non-empty fields over them.
type FactsFile struct {
	Defaults Facts            `json:"defaults"`
	Servers  map[string]Facts `json:"servers"`
}

// maxFactsFile bounds the facts file (a fleet of 10,000 servers with a few
// hundred bytes each fits).
const maxFactsFile = 16 << 20

// supportLevels is OVH's dedicated.server.SupportLevelEnum.
var supportLevels = map[string]bool{"critical": true, "fastpath": true, "gs": true, "pro": true}

// LoadFacts reads and checks a facts file.
func LoadFacts(path string) (*FactsFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFactsFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFactsFile {
		return nil, fmt.Errorf("server facts %s: larger than %d MiB", path, maxFactsFile>>20)
	}
	ff, err := ParseFacts(data)
	if err != nil {
		return nil, fmt.Errorf("server facts %s: %w", path, err)
	}
	return ff, nil
}

// ParseFacts parses and checks the JSON of a facts file (strictly: a
// misspelt field is an error, not a fact silently left out).
func ParseFacts(data []byte) (*FactsFile, error) {
	var ff FactsFile
	if err := decodeStrict(data, &ff); err != nil {
		return nil, err
	}
	if err := ff.Defaults.check(); err != nil {
		return nil, fmt.Errorf("defaults: %w", err)
	}
	for name, f := range ff.Servers {
		if !ValidName(name) {
			return nil, fmt.Errorf("servers: %q is not a server name", truncate(name, 64))
		}
		if err := f.check(); err != nil {
			return nil, fmt.Errorf("servers.%s: %w", name, err)
		}
	}
	return &ff, nil
}

func (f Facts) check() error {
	for name, v := range map[string]string{"availabilityZone": f.AvailabilityZone, "commercialRange": f.CommercialRange, "datacenter": f.Datacenter,
		"rack": f.Rack, "region": f.Region, "reverse": f.Reverse} {
		if len(v) > 255 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("%s: at most 255 characters, no control character", name)
		}
	}
	if f.SupportLevel != "" && !supportLevels[f.SupportLevel] {
		return fmt.Errorf("supportLevel: one of critical, fastpath, gs, pro")
	}
	for name, v := range map[string]string{"ip": f.IP, "gateway": f.Gateway} {
		if v == "" {
			continue
		}
		if a, err := netip.ParseAddr(v); err != nil || !a.Is4() {
			return fmt.Errorf("%s: an IPv4 address", name)
		}
	}
	if f.Network != "" {
		if p, err := netip.ParsePrefix(f.Network); err != nil || !p.Addr().Is4() {
			return fmt.Errorf("network: an IPv4 block (CIDR)")
		}
	}
	if len(f.IPs) > 256 {
		return fmt.Errorf("ips: at most 256 blocks")
	}
	for _, b := range f.IPs {
		if _, err := netip.ParsePrefix(b); err != nil {
			return fmt.Errorf("ips: %q is not an IP block (CIDR)", truncate(b, 64))
		}
	}
	if f.LinkSpeed < 0 {
		return fmt.Errorf("linkSpeed: Mbit/s, positive")
	}
	return nil
}

// For returns the facts of server name: the defaults, then its own.
func (ff *FactsFile) For(name string) Facts {
	if ff == nil {
		return Facts{}
	}
	f := ff.Defaults
	own, ok := ff.Servers[name]
	if !ok {
		return f
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&f.AvailabilityZone, own.AvailabilityZone)
	set(&f.CommercialRange, own.CommercialRange)
	set(&f.Datacenter, own.Datacenter)
	set(&f.Rack, own.Rack)
	set(&f.Region, own.Region)
	set(&f.SupportLevel, own.SupportLevel)
	set(&f.IP, own.IP)
	set(&f.Reverse, own.Reverse)
	set(&f.Gateway, own.Gateway)
	set(&f.Network, own.Network)
	if own.IPs != nil {
		f.IPs = own.IPs
	}
	if own.LinkSpeed != 0 {
		f.LinkSpeed = own.LinkSpeed
	}
	return f
}

// ipBlocks is GET .../ips: the main IP as a /32, then the other blocks.
func (f Facts) ipBlocks() []string {
	out := []string{}
	if f.IP != "" {
		out = append(out, f.IP+"/32")
	}
	for _, b := range f.IPs {
		if b != f.IP+"/32" {
			out = append(out, b)
		}
	}
	return out
}
