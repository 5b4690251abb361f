package job

import (
	"encoding/base64"
	"encoding/binary"
	"strconv"
	"strings"
)

// Limits on the ConfigDrive sshKey field. An RSA 16384-bit key line is about
// 2.8 KiB, so these leave room for every real key while bounding the work
// done on untrusted input.
const (
	maxSSHKeyFieldLen = 64 << 10
	maxSSHKeys        = 64
	minRSABits        = 1024 // OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE: sshd refuses smaller keys
)

// SSHPublicKey is one OpenSSH public key line, "type base64 [comment]", as
// written by ssh-keygen into a .pub file (sshd(8) AUTHORIZED_KEYS FILE FORMAT,
// without the options prefix, which is refused).
type SSHPublicKey struct {
	// Type is the key type name, e.g. "ssh-ed25519".
	Type string
	// Blob is the decoded key in SSH wire format (RFC 4253 6.6); its first
	// length-prefixed string is Type.
	Blob []byte
	// Comment is the free text after the key, "" when absent.
	Comment string
}

// String gives the canonical line: type, standard padded base64, comment.
func (k SSHPublicKey) String() string {
	s := k.Type + " " + base64.StdEncoding.EncodeToString(k.Blob)
	if k.Comment != "" {
		s += " " + k.Comment
	}
	return s
}

// sshKeyLayouts describes, for each accepted key type, the wire-format fields
// that follow the type string (RFC 4253 6.6, RFC 5656 3.1, OpenSSH PROTOCOL.u2f):
// 'm' an mpint, 's' a string, 'e' the Ed25519 32-byte public key, 'c' the
// ECDSA curve name, 'q' the ECDSA point. The blob must hold exactly these.
var sshKeyLayouts = map[string]string{
	"ssh-ed25519":                        "e",
	"sk-ssh-ed25519@openssh.com":         "es", // key, application
	"ssh-rsa":                            "mm", // e, n
	"ssh-dss":                            "mmmm",
	"ecdsa-sha2-nistp256":                "cq",
	"ecdsa-sha2-nistp384":                "cq",
	"ecdsa-sha2-nistp521":                "cq",
	"sk-ecdsa-sha2-nistp256@openssh.com": "cqs", // curve, point, application
}

// ecdsaPointLen is the length of an uncompressed point (0x04 || X || Y) per
// curve (SEC 1 2.3.3), the only form OpenSSH writes.
var ecdsaPointLen = map[string]int{"nistp256": 65, "nistp384": 97, "nistp521": 133}

// ParseSSHPublicKey parses one OpenSSH public key line. The base64 must
// decode, its first length-prefixed string must equal the type, and the rest
// of the blob must have the layout of that type. Errors never quote the key
// material.
func ParseSSHPublicKey(line string) (SSHPublicKey, error) {
	for i := 0; i < len(line); i++ {
		if c := line[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return SSHPublicKey{}, sshErr(SSHKeyControl)
		}
	}
	line = strings.Trim(line, " \t")
	typ, rest := line, ""
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		typ, rest = line[:i], strings.TrimLeft(line[i:], " \t")
	}
	b64, comment := rest, ""
	if i := strings.IndexAny(rest, " \t"); i >= 0 {
		b64, comment = rest[:i], strings.Trim(rest[i+1:], " \t")
	}
	if typ == "" {
		return SSHPublicKey{}, sshErr(SSHKeyEmpty)
	}
	layout, ok := sshKeyLayouts[typ]
	if !ok {
		return SSHPublicKey{}, sshErr(SSHKeyType, quoteShort(typ))
	}
	if b64 == "" {
		return SSHPublicKey{}, sshErr(SSHKeyNoData, typ)
	}
	blob, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return SSHPublicKey{}, sshErr(SSHKeyBase64, typ)
	}
	r := wireReader{b: blob}
	inner, ok := r.str()
	if !ok || string(inner) != typ {
		return SSHPublicKey{}, sshErr(SSHKeyTypeMismatch, typ)
	}
	var curve string
	for _, f := range layout {
		v, ok := r.str()
		if !ok {
			return SSHPublicKey{}, sshErr(SSHKeyTruncated, typ)
		}
		switch f {
		case 'e':
			if len(v) != 32 {
				return SSHPublicKey{}, sshErr(SSHKeyEd25519Size, typ, len(v))
			}
		case 'c':
			curve = string(v)
			if !strings.Contains(typ, "-"+curve) {
				return SSHPublicKey{}, sshErr(SSHKeyCurve, typ)
			}
		case 'q':
			if len(v) != ecdsaPointLen[curve] || v[0] != 4 {
				return SSHPublicKey{}, sshErr(SSHKeyECDSAPoint, typ)
			}
		case 'm':
			if len(v) == 0 {
				return SSHPublicKey{}, sshErr(SSHKeyEmptyInt, typ)
			}
		}
	}
	if r.len() != 0 {
		return SSHPublicKey{}, sshErr(SSHKeyTrailing, typ, r.len())
	}
	if typ == "ssh-rsa" {
		// The second mpint is the modulus n.
		rr := wireReader{b: blob}
		rr.str()
		rr.str()
		n, _ := rr.str()
		for len(n) > 0 && n[0] == 0 {
			n = n[1:]
		}
		bits := 0
		if len(n) > 0 {
			bits = (len(n)-1)*8 + bitLen(n[0])
		}
		if bits < minRSABits {
			return SSHPublicKey{}, sshErr(SSHKeyRSASmall, bits, minRSABits)
		}
	}
	return SSHPublicKey{Type: typ, Blob: blob, Comment: comment}, nil
}

// ParseSSHPublicKeys parses the ConfigDrive sshKey field. byoi accepts
// several keys, one per line (LF or CRLF), because users paste the contents
// of an authorized_keys-style file; blank lines are skipped, every other line
// must be a valid key, and at least one key is required. The field is at most
// 64 KiB and holds at most 64 keys.
func ParseSSHPublicKeys(s string) ([]SSHPublicKey, error) {
	if len(s) > maxSSHKeyFieldLen {
		return nil, sshErr(SSHKeyFieldTooLong, len(s), maxSSHKeyFieldLen>>10)
	}
	var keys []SSHPublicKey
	lines := strings.Split(s, "\n")
	for i, line := range lines {
		line = strings.TrimSuffix(line, "\r")
		if strings.Trim(line, " \t") == "" {
			continue
		}
		if len(keys) == maxSSHKeys {
			return nil, sshErr(SSHKeyTooMany, maxSSHKeys)
		}
		k, err := ParseSSHPublicKey(line)
		if err != nil {
			line := 0
			if len(lines) > 1 {
				line = i + 1
			}
			return nil, err.(*SSHKeyError).at(line)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, sshErr(SSHKeyNone)
	}
	return keys, nil
}

// wireReader reads SSH wire-format strings (uint32 length, then bytes).
type wireReader struct{ b []byte }

func (r *wireReader) len() int { return len(r.b) }

func (r *wireReader) str() ([]byte, bool) {
	if len(r.b) < 4 {
		return nil, false
	}
	n := binary.BigEndian.Uint32(r.b)
	if uint64(n) > uint64(len(r.b)-4) {
		return nil, false
	}
	v := r.b[4 : 4+n]
	r.b = r.b[4+n:]
	return v, true
}

func bitLen(b byte) int {
	n := 0
	for ; b != 0; b >>= 1 {
		n++
	}
	return n
}

// SSHKeyError is an SSH public key refused by ParseSSHPublicKey(s). Its
// text is the catalog message for Code; errors about one key of the sshKey
// field are prefixed with where it is ("sshKey: ", "sshKey line 2: ").
type SSHKeyError struct {
	Code Code
	Args []any
	// Line is the 1-based line of the sshKey field the key is on, 0 when
	// the field has a single line or the error is about the whole field.
	Line int
	// InField: returned by ParseSSHPublicKeys (the text names the field).
	InField bool
}

func sshErr(code Code, args ...any) *SSHKeyError { return &SSHKeyError{Code: code, Args: args} }

// at marks a key's error as found on line (0: the field's only line).
func (e *SSHKeyError) at(line int) *SSHKeyError {
	c := *e
	c.Line, c.InField = line, true
	return &c
}

func (e *SSHKeyError) Error() string {
	msg := Text(e.Code, e.Args...)
	switch {
	case e.Line > 0:
		return "sshKey line " + strconv.Itoa(e.Line) + ": " + msg
	case e.InField:
		return "sshKey: " + msg
	}
	return msg
}

// MessageCode returns the catalog code.
func (e *SSHKeyError) MessageCode() Code { return e.Code }

// sshKeyInvalid turns an SSH key parse error into the ValidationError of the
// ConfigDrive's sshKey field.
func sshKeyInvalid(err error) error {
	code := Internal
	if se, ok := err.(*SSHKeyError); ok {
		code = se.Code
	}
	return &ValidationError{Code: code, Field: "ConfigDrive.SSHKey", Message: err.Error()}
}
