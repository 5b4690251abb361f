package ova

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/vmdk"
)

// ManifestError is an OVA whose manifest (*.mf) does not vouch for its
// members: a digest that does not match (Got and Want set), or a manifest
// that cannot be trusted (Reason set: an unknown algorithm, a member it
// lists that is not in the archive, the disk it does not list). It matches
// errors.Is(err, ErrChecksum): to the customer it is a checksum mismatch.
type ManifestError struct {
	// Member is the archive member concerned ("" for the manifest itself).
	Member string
	// Algo is the digest algorithm as the manifest names it (SHA256).
	Algo string
	// Got and Want are hex digests, for a mismatch.
	Got, Want string
	// Reason explains any other refusal.
	Reason string
}

func (e *ManifestError) Error() string {
	if e.Reason != "" {
		if e.Member != "" {
			return fmt.Sprintf("OVA manifest refused: %q: %s", e.Member, e.Reason)
		}
		return "OVA manifest refused: " + e.Reason
	}
	return fmt.Sprintf("OVA manifest: the %s digest of %s is %s, the manifest says %s", strings.ToLower(e.Algo), e.Member, e.Got, e.Want)
}

// Is makes errors.Is(err, ErrChecksum) true.
func (e *ManifestError) Is(target error) bool { return target == imaging.ErrChecksum }

// algos are the manifest digest algorithms byoi checks (DSP0243: SHA1,
// SHA256, SHA512), in the order they are computed.
var algos = []string{"SHA1", "SHA256", "SHA512"}

func newHash(algo string) hash.Hash {
	switch algo {
	case "SHA1":
		return sha1.New()
	case "SHA256":
		return sha256.New()
	case "SHA512":
		return sha512.New()
	}
	return nil
}

// manifestEntry is one line of a manifest.
type manifestEntry struct {
	algo, want string
	checked    bool
}

// manifestFile maps member names to the digests the manifest lists.
type manifestFile struct {
	entries map[string][]*manifestEntry
	order   []string
}

// maxManifest bounds a manifest (one line per member).
const maxManifest = 1 << 20

// parseManifest reads manifest lines "SHA256(disk.vmdk)= <hex>"
// (ovftool, DSP0243 section 5.1), also with spaces around the parentheses
// and the "=" as VirtualBox and sha256sum --tag write them. Anything else
// is refused: a manifest byoi cannot read vouches for nothing.
func parseManifest(data []byte) (*manifestFile, error) {
	if len(data) > maxManifest {
		return nil, &ManifestError{Reason: fmt.Sprintf("manifest of %d bytes is larger than %d", len(data), maxManifest)}
	}
	m := &manifestFile{entries: map[string][]*manifestEntry{}}
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		open := strings.IndexByte(line, '(')
		eq := strings.LastIndexByte(line, '=')
		closeP := strings.LastIndexByte(line[:max(eq, 0)], ')')
		if open < 0 || eq < 0 || closeP < open {
			return nil, &ManifestError{Reason: fmt.Sprintf("line %d is not ALGO(file)= digest: %.80q", n+1, line)}
		}
		algo := strings.ToUpper(strings.TrimSpace(line[:open]))
		name := cleanName(line[open+1 : closeP])
		sum := strings.ToLower(strings.TrimSpace(line[eq+1:]))
		if strings.TrimSpace(line[closeP+1:eq]) != "" {
			return nil, &ManifestError{Reason: fmt.Sprintf("line %d is not ALGO(file)= digest: %.80q", n+1, line)}
		}
		h := newHash(algo)
		if h == nil {
			return nil, &ManifestError{Member: name, Algo: algo, Reason: fmt.Sprintf("digest algorithm %.20q is not one byoi checks (SHA1, SHA256, SHA512)", algo)}
		}
		if b, err := hex.DecodeString(sum); err != nil || len(b) != h.Size() {
			return nil, &ManifestError{Member: name, Algo: algo, Reason: fmt.Sprintf("%.140q is not a %s digest", sum, algo)}
		}
		if !vmdk.PlainName(name) {
			return nil, &ManifestError{Member: name, Algo: algo, Reason: "not a member name"}
		}
		for _, e := range m.entries[name] {
			if e.algo == algo {
				return nil, &ManifestError{Member: name, Algo: algo, Reason: "listed twice"}
			}
		}
		if len(m.entries[name]) == 0 {
			m.order = append(m.order, name)
		}
		m.entries[name] = append(m.entries[name], &manifestEntry{algo: algo, want: sum})
	}
	if len(m.order) == 0 {
		return nil, &ManifestError{Reason: "the manifest lists no file"}
	}
	return m, nil
}

// algos returns the algorithms the manifest lists for member.
func (m *manifestFile) algos(member string) []string {
	var a []string
	for _, e := range m.entries[member] {
		a = append(a, e.algo)
	}
	return a
}

// check compares the digests computed for member (algo -> hex) with the
// manifest's. A digest the manifest lists but that was not computed is an
// internal error: every listed algorithm is computed.
func (m *manifestFile) check(member string, sums map[string]string) error {
	for _, e := range m.entries[member] {
		got, ok := sums[e.algo]
		if !ok {
			return &ManifestError{Member: member, Algo: e.algo, Reason: "digest was not computed"}
		}
		if got != e.want {
			return &ManifestError{Member: member, Algo: e.algo, Got: got, Want: e.want}
		}
		e.checked = true
	}
	return nil
}
