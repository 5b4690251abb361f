package logtail

import (
	"regexp"
	"sort"
	"strings"
)

// Limits of the literal secrets a Redactor takes: enough for a 16 MiB user
// data, bounded so that a hostile one cannot make it grow without end.
const (
	minSecret     = 4
	minSecretLine = 8
	minSecretWord = 10
	maxNeedles    = 1 << 20
	maxNeedleSize = 64 << 20
)

// Redactor removes secrets from log lines.
type Redactor struct {
	short map[string][]string // needles of 4 to 7 bytes by their first 4 bytes
	long  map[string][]string // needles of 8 bytes and more by their first 8 bytes
}

// NewRedactor returns a Redactor for the given secrets (see
// Options.Secrets) and the built-in patterns.
func NewRedactor(secrets ...string) *Redactor {
	r := &Redactor{short: map[string][]string{}, long: map[string][]string{}}
	seen := map[string]bool{}
	count, total := 0, 0
	add := func(s string) {
		if len(s) < minSecret || seen[s] || count >= maxNeedles || total+len(s) > maxNeedleSize {
			return
		}
		seen[s] = true
		count++
		total += len(s)
		if len(s) >= 8 {
			r.long[s[:8]] = append(r.long[s[:8]], s)
		} else {
			r.short[s[:4]] = append(r.short[s[:4]], s)
		}
	}
	for _, s := range secrets {
		add(s)
		if strings.ContainsAny(s, "\r\n") {
			for _, l := range strings.FieldsFunc(s, func(c rune) bool { return c == '\n' || c == '\r' }) {
				if l = strings.TrimSpace(l); len(l) >= minSecretLine {
					add(l)
				}
			}
		}
		if t := strings.TrimSpace(s); t != s {
			add(t)
		}
		// The words of a secret, alone: a password inside the user data,
		// the token of a "Bearer ..." header value.
		for _, w := range strings.FieldsFunc(s, isWordBreak) {
			if len(w) >= minSecretWord {
				add(w)
			}
		}
	}
	// Longest first, so that a secret containing another is replaced whole.
	for _, m := range []map[string][]string{r.short, r.long} {
		for k := range m {
			sort.Slice(m[k], func(i, j int) bool { return len(m[k][i]) > len(m[k][j]) })
		}
	}
	return r
}

var (
	// name=value where the name ends like a token or a password:
	// byoi.token=..., password=..., access_token=...
	paramSecret = regexp.MustCompile(`(?i)(\b[a-z0-9_.-]*(?:token|password|passwd|passphrase|secret|apikey|api_key))=("[^"]*"|\S+)`)
	// "Authorization: Bearer ...", "Cookie: ..." to the end of the line.
	headerSecret = regexp.MustCompile(`(?i)(\b(?:proxy-)?authorization|\bcookie|\bset-cookie|\bx-ovh-consumer|\bx-ovh-signature|\bx-auth-token|\bx-api-key)(\s*:\s*)\S.*$`)
	// JSON: "token": "...", "password":"..."
	jsonSecret = regexp.MustCompile(`(?i)("[a-z0-9_.-]*(?:token|password|passwd|secret|apikey|api_key)"\s*:\s*)"(?:[^"\\]|\\.)*"`)
)

// Redact returns line without the secrets, and how many it replaced.
func (r *Redactor) Redact(line string) (string, int) {
	n := 0
	if len(r.short)+len(r.long) > 0 {
		line, n = r.literal(line)
	}
	count := func(re *regexp.Regexp, repl string) {
		line = re.ReplaceAllStringFunc(line, func(m string) string {
			out := re.ReplaceAllString(m, repl)
			if out != m {
				n++
			}
			return out
		})
	}
	count(headerSecret, "${1}${2}"+Marker)
	count(jsonSecret, `${1}"`+Marker+`"`)
	count(paramSecret, "${1}="+Marker)
	return line, n
}

// literal replaces every occurrence of a needle, scanning the line once
// and looking candidates up by their first bytes.
func (r *Redactor) literal(line string) (string, int) {
	var b strings.Builder
	n, last := 0, 0
	for i := 0; i+minSecret <= len(line); {
		match := ""
		if i+8 <= len(line) {
			for _, nd := range r.long[line[i:i+8]] {
				if strings.HasPrefix(line[i:], nd) {
					match = nd
					break
				}
			}
		}
		if match == "" {
			for _, nd := range r.short[line[i:i+4]] {
				if strings.HasPrefix(line[i:], nd) {
					match = nd
					break
				}
			}
		}
		if match == "" {
			i++
			continue
		}
		b.WriteString(line[last:i])
		b.WriteString(Marker)
		i += len(match)
		last = i
		n++
	}
	if n == 0 {
		return line, 0
	}
	b.WriteString(line[last:])
	return b.String(), n
}

func isWordBreak(c rune) bool {
	return c <= ' ' || strings.ContainsRune("\"'`,;:=()[]{}<>", c)
}
