package power

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// DefaultIPMIPort is the RMCP port (IPMI 2.0 §13.1.2): UDP 623.
const DefaultIPMIPort = 623

// Limits of IPMI 2.0 credentials (§22.26 Set User Name: 16 bytes; §22.30
// Set User Password: 20 bytes for IPMI 2.0).
const (
	MaxUserLen     = 16
	MaxPasswordLen = 20
)

// maxSpecLen bounds a BMC spec: a DNS name (253) plus user, scheme and port.
const maxSpecLen = 320

// ErrBadSpec is wrapped by every ParseBMC error. The messages say what is
// wrong without repeating the input, which could hold a password.
var ErrBadSpec = errors.New("invalid BMC")

// ErrBadPassword is wrapped by every password error; the messages never
// repeat the password.
var ErrBadPassword = errors.New("invalid BMC password")

// BMC is where a server's BMC answers and who byoi logs in as: the part of
// a power driver's configuration that is not secret (it may be shown,
// logged and stored in clear). The password is a Password, kept apart.
type BMC struct {
	Driver string // "none" or "ipmi"
	User   string // IPMI user name (ipmi only)
	Host   string // IP address or DNS name, without brackets (ipmi only)
	Port   int    // UDP port (ipmi only; 623 unless given)
}

// Driver names.
const (
	DriverNone = "none"
	DriverIPMI = "ipmi"
)

// IsNone reports whether b is the "none" driver (no BMC: someone reboots
// the server by hand).
func (b BMC) IsNone() bool { return b.Driver == DriverNone || b.Driver == "" }

// String is the canonical form ParseBMC accepts back: "none" or
// "ipmi://USER@HOST:PORT" (IPv6 in brackets, the user percent-encoded
// where needed). It never holds a password: a BMC has none.
func (b BMC) String() string {
	if b.IsNone() {
		return DriverNone
	}
	return b.Driver + "://" + escapeUser(b.User) + "@" + net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
}

// escapeUser percent-encodes what ParseBMC would not take literally in a
// user name.
func escapeUser(u string) string {
	var sb strings.Builder
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c <= 0x20 || c >= 0x7f || strings.IndexByte("@:%/?#", c) >= 0 {
			fmt.Fprintf(&sb, "%%%02X", c)
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// Addr is the host and port to send datagrams to ("host:port").
func (b BMC) Addr() string { return net.JoinHostPort(b.Host, strconv.Itoa(b.Port)) }

func badSpec(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadSpec}, args...)...)
}

// ParseBMC parses an operator's BMC spec: "none", or
// "ipmi://USER@HOST[:PORT]" (HOST an IPv4 address, a bracketed IPv6
// address or a DNS name; PORT 623 by default; USER percent-encoded if it
// holds '@', ':' or '%'). A password in the URL ("USER:PASS@") is refused:
// it would end up in shell histories, process lists and logs; it comes from
// a file or stdin (ReadPassword). Errors never repeat the input.
func ParseBMC(s string) (BMC, error) {
	if len(s) > maxSpecLen {
		return BMC{}, badSpec("longer than %d bytes", maxSpecLen)
	}
	if s == DriverNone {
		return BMC{Driver: DriverNone}, nil
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return BMC{}, badSpec(`want "none" or ipmi://USER@HOST[:PORT]`)
	}
	if !strings.EqualFold(scheme, DriverIPMI) {
		if strings.EqualFold(scheme, "redfish") || strings.EqualFold(scheme, "https") {
			return BMC{}, badSpec("only IPMI (ipmi://USER@HOST[:PORT]) is supported; Redfish is not yet")
		}
		return BMC{}, badSpec("unknown driver: want ipmi://USER@HOST[:PORT] or none")
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		return BMC{}, badSpec("ipmi://USER@HOST[:PORT] takes no path, query or fragment")
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return BMC{}, badSpec("the user is missing: ipmi://USER@HOST[:PORT]")
	}
	userinfo, hostport := rest[:at], rest[at+1:]
	if strings.IndexByte(userinfo, ':') >= 0 {
		return BMC{}, badSpec("a password does not belong in the BMC URL: give it in a file or on stdin")
	}
	if strings.IndexByte(userinfo, '@') >= 0 {
		return BMC{}, badSpec("an '@' in the user name must be written %%40")
	}
	user, err := url.PathUnescape(userinfo)
	if err != nil {
		return BMC{}, badSpec("the user name has a bad %%-escape")
	}
	if err := checkUser(user); err != nil {
		return BMC{}, err
	}
	host, port, err := parseHostPort(hostport)
	if err != nil {
		return BMC{}, err
	}
	return BMC{Driver: DriverIPMI, User: user, Host: host, Port: port}, nil
}

func checkUser(user string) error {
	if user == "" {
		return badSpec("the user name is empty")
	}
	if len(user) > MaxUserLen {
		return badSpec("the user name is %d bytes, IPMI allows at most %d", len(user), MaxUserLen)
	}
	for i := 0; i < len(user); i++ {
		if c := user[i]; c < 0x21 || c > 0x7e {
			return badSpec("the user name may hold only printable ASCII characters, no spaces")
		}
	}
	return nil
}

func parseHostPort(hp string) (string, int, error) {
	if hp == "" {
		return "", 0, badSpec("the host is missing")
	}
	host, portStr := hp, ""
	if hp[0] == '[' {
		end := strings.IndexByte(hp, ']')
		if end < 0 {
			return "", 0, badSpec("an IPv6 address in brackets lacks its ']'")
		}
		host = hp[1:end]
		switch after := hp[end+1:]; {
		case after == "":
		case after[0] == ':':
			portStr = after[1:]
			if portStr == "" {
				return "", 0, badSpec("the port after ':' is empty")
			}
		default:
			return "", 0, badSpec("unexpected text after the IPv6 address")
		}
		ip := net.ParseIP(host)
		if ip == nil || ip.To4() != nil || strings.IndexByte(host, '%') >= 0 {
			return "", 0, badSpec("the text in brackets is not an IPv6 address")
		}
		host = ip.String()
	} else {
		if c := strings.Count(hp, ":"); c > 1 {
			return "", 0, badSpec("an IPv6 address must be written in brackets: ipmi://USER@[ADDR]:PORT")
		} else if c == 1 {
			host, portStr, _ = strings.Cut(hp, ":")
			if portStr == "" {
				return "", 0, badSpec("the port after ':' is empty")
			}
		}
		if err := checkHostName(host); err != nil {
			return "", 0, err
		}
		host = strings.ToLower(host)
	}
	port := DefaultIPMIPort
	if portStr != "" {
		for i := 0; i < len(portStr); i++ {
			if portStr[i] < '0' || portStr[i] > '9' {
				return "", 0, badSpec("the port must be a number from 1 to 65535")
			}
		}
		p, err := strconv.Atoi(portStr)
		if err != nil || p < 1 || p > 65535 || len(portStr) > 5 {
			return "", 0, badSpec("the port must be a number from 1 to 65535")
		}
		port = p
	}
	return host, port, nil
}

// checkHostName accepts an IPv4 address or a DNS name (RFC 1123 labels).
func checkHostName(h string) error {
	if h == "" {
		return badSpec("the host is missing")
	}
	if ip := net.ParseIP(h); ip != nil {
		if ip.To4() == nil {
			return badSpec("an IPv6 address must be written in brackets: ipmi://USER@[ADDR]:PORT")
		}
		return nil
	}
	if len(h) > 253 {
		return badSpec("the host name is longer than 253 characters")
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return badSpec("the host is not a valid name (labels of 1 to 63 letters, digits and hyphens)")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(label)-1
			if !ok {
				return badSpec("the host is not a valid name (labels of 1 to 63 letters, digits and hyphens)")
			}
		}
	}
	return nil
}

// Password is a BMC password. Every way of printing it (fmt's verbs,
// slog, JSON) shows "[redacted]"; only Reveal gives the bytes, for the
// login itself and for sealing it at rest.
//
// The bytes sit behind a pointer: even where fmt cannot call these methods
// (an unexported field of a struct printed with %v), it prints an address,
// not the password.
type Password struct{ p *string }

const redacted = "[redacted]"

// NewPassword checks p (1 to 20 bytes, IPMI 2.0's limit; no NUL, CR or LF)
// and wraps it. The error never repeats p.
func NewPassword(p string) (Password, error) {
	switch {
	case p == "":
		return Password{}, fmt.Errorf("%w: it is empty", ErrBadPassword)
	case len(p) > MaxPasswordLen:
		return Password{}, fmt.Errorf("%w: it is %d bytes, IPMI 2.0 allows at most %d", ErrBadPassword, len(p), MaxPasswordLen)
	case strings.ContainsAny(p, "\x00\r\n"):
		return Password{}, fmt.Errorf("%w: it holds a NUL or a line break", ErrBadPassword)
	}
	return Password{p: &p}, nil
}

// ReadPassword reads a password from r (a file, or stdin): its first line,
// without the line ending; anything after that line is refused, so a file
// holding something else than one password is an error, not a surprise.
// At most 1 KiB is read.
func ReadPassword(r io.Reader) (Password, error) {
	const limit = 1024
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return Password{}, fmt.Errorf("read the BMC password: %w", err)
	}
	if len(b) > limit {
		return Password{}, fmt.Errorf("%w: the input is longer than %d bytes", ErrBadPassword, limit)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if bytes.ContainsAny(b, "\r\n") {
		return Password{}, fmt.Errorf("%w: the input holds more than one line", ErrBadPassword)
	}
	// IPMI passwords are bytes: invalid UTF-8 is kept as it is.
	return NewPassword(string(b))
}

// Reveal returns the password itself. Callers hand it to the BMC login or
// to the sealing of secrets at rest, never to a log or a message.
func (p Password) Reveal() string {
	if p.p == nil {
		return ""
	}
	return *p.p
}

// IsZero reports whether p holds no password.
func (p Password) IsZero() bool { return p.Reveal() == "" }

// String returns "[redacted]".
func (p Password) String() string { return redacted }

// GoString returns "[redacted]".
func (p Password) GoString() string { return redacted }

// Format prints "[redacted]" for every verb (%v, %+v, %#v, %s, %q, %x...).
func (p Password) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) } //nolint:errcheck

// LogValue makes slog print "[redacted]".
func (p Password) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON writes "[redacted]": a password never leaves in JSON by
// accident.
func (p Password) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText writes "[redacted]".
func (p Password) MarshalText() ([]byte, error) { return []byte(redacted), nil }
