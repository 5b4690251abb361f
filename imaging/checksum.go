package imaging

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
)

// ErrChecksumType is returned by NewHash for a checksum type byoi does not
// know.
var ErrChecksumType = errors.New("unknown checksum type (want md5, sha1, sha256 or sha512)")

// ErrChecksum is matched (errors.Is) by every *ChecksumError.
var ErrChecksum = errors.New("checksum mismatch")

// checksumSizes maps each supported type to its digest size in bytes.
var checksumSizes = map[string]int{
	"md5":    md5.Size,
	"sha1":   sha1.Size,
	"sha256": sha256.Size,
	"sha512": sha512.Size,
}

// normType lower-cases and trims a checksum type ("SHA256 " is sha256).
func normType(t string) string { return strings.ToLower(strings.TrimSpace(t)) }

// NewHash returns a new hash for checksumType: md5, sha1, sha256 or sha512
// (case-insensitive). Any other type is ErrChecksumType.
func NewHash(checksumType string) (hash.Hash, error) {
	switch normType(checksumType) {
	case "md5":
		return md5.New(), nil
	case "sha1":
		return sha1.New(), nil
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, ErrChecksumType
}

// ChecksumError is a downloaded image whose checksum is not the expected
// one. Got and Want are hex digests; Type is the checksum type as given.
type ChecksumError struct {
	Type, Got, Want string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("%s checksum mismatch: got %s, want %s", e.Type, e.Got, e.Want)
}

// Is makes errors.Is(err, ErrChecksum) true.
func (e *ChecksumError) Is(target error) bool { return target == ErrChecksum }

// VerifyChecksum compares the digest of h with want, a hex string compared
// case-insensitively (surrounding spaces ignored). It returns nil when want
// is empty (no checksum asked for), a *ChecksumError on mismatch, and
// ErrChecksumType when checksumType is unknown or h is not a hash of that
// type.
func VerifyChecksum(checksumType, want string, h hash.Hash) error {
	want = strings.TrimSpace(want)
	if want == "" {
		return nil
	}
	size, ok := checksumSizes[normType(checksumType)]
	if !ok || h == nil {
		return ErrChecksumType
	}
	if h.Size() != size {
		return fmt.Errorf("%w (a %d-byte hash for %s)", ErrChecksumType, h.Size(), normType(checksumType))
	}
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, want) {
		return &ChecksumError{Type: checksumType, Got: got, Want: want}
	}
	return nil
}

// HashingReader returns a reader that feeds h with every byte read from r,
// so the checksum is computed while the bytes flow.
func HashingReader(r io.Reader, h hash.Hash) io.Reader { return io.TeeReader(r, h) }
