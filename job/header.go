package job

import (
	"log/slog"
	"strings"
)

// Header is one HTTP header sent with the image download. Its Value is a
// secret (tokens, pre-signed credentials): it is never logged, printed or
// put in an error.
type Header struct {
	Name  string
	Value string
}

// String shows the header name only.
func (h Header) String() string { return h.Name + ": <redacted>" }

// GoString is String: %#v must not dump the value either.
func (h Header) GoString() string { return h.String() }

// LogValue keeps the value out of structured logs.
func (h Header) LogValue() slog.Value { return slog.StringValue(h.String()) }

// ValidHeaderName reports whether s is an RFC 9110 5.6.2 token, the only
// valid header field name. It is the one check of header names in byoi:
// the job's validation, the CLI flag and the downloader use it.
// (golang.org/x/net/http/httpguts has the same check; this package stays on
// the standard library so that the control plane validates jobs without
// extra dependencies.)
func ValidHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isLetter(c) || isDigit(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// ValidHeaderValue refuses CR, LF, NUL and the other control characters
// except horizontal tab (RFC 9110 5.5), as net/http would at request time.
func ValidHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// ParseHeaderFlag parses a --header command-line argument, "Name: value"
// (as curl takes it). Spaces and tabs around the value are dropped; the
// value may be empty. The error never contains the value, nor the argument
// when it has no colon (it may be a bare secret).
func ParseHeaderFlag(s string) (Header, error) {
	name, value, ok := strings.Cut(s, ":")
	if !ok {
		return Header{}, invalid("header", HeaderFlagNoColon)
	}
	if !ValidHeaderName(name) {
		return Header{}, invalid("header", HeaderFlagName)
	}
	value = strings.Trim(value, " \t")
	if len(value) > MaxHeaderValueLen {
		return Header{}, invalid("header", HeaderValueTooLong, name, MaxHeaderValueLen>>10)
	}
	if !ValidHeaderValue(value) {
		return Header{}, invalid("header", HeaderValueControl, name)
	}
	return Header{Name: name, Value: value}, nil
}
