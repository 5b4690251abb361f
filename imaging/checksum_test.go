package imaging

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

// Vectors of "abc": RFC 1321 (md5), FIPS 180-2 appendices (sha1, sha256,
// sha512).
var abcSums = map[string]string{
	"md5":    "900150983cd24fb0d6963f7d28e17f72",
	"sha1":   "a9993e364706816aba3e25717850c26c9cd0d89d",
	"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	"sha512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
}

func TestChecksumVectors(t *testing.T) {
	for typ, want := range abcSums {
		for _, name := range []string{typ, strings.ToUpper(typ)} {
			h, err := NewHash(name)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, HashingReader(strings.NewReader("abc"), h)); err != nil {
				t.Fatal(err)
			}
			if err := VerifyChecksum(name, want, h); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if err := VerifyChecksum(name, " "+strings.ToUpper(want)+"\n", h); err != nil {
				t.Errorf("%s upper case: %v", name, err)
			}
		}
	}
}

func TestChecksumMismatch(t *testing.T) {
	h, _ := NewHash("sha256")
	h.Write([]byte("abd"))
	err := VerifyChecksum("sha256", abcSums["sha256"], h)
	got := sha256.Sum256([]byte("abd"))
	// The customer's text (OVH's "Bad sha256 for downloaded file, got : ...")
	// is the agent's: TestErrorTable.
	want := "sha256 checksum mismatch: got " + hex.EncodeToString(got[:]) + ", want " + abcSums["sha256"]
	if err == nil || err.Error() != want {
		t.Fatalf("error\n%v, want\n%s", err, want)
	}
	var ce *ChecksumError
	if !errors.As(err, &ce) || !errors.Is(err, ErrChecksum) {
		t.Errorf("not a *ChecksumError / ErrChecksum: %T", err)
	}
}

func TestChecksumTypes(t *testing.T) {
	for _, bad := range []string{"", "crc32", "sha384", "sha-256"} {
		if _, err := NewHash(bad); !errors.Is(err, ErrChecksumType) {
			t.Errorf("NewHash(%q): %v", bad, err)
		}
	}
	if ErrChecksumType.Error() != "unknown checksum type (want md5, sha1, sha256 or sha512)" {
		t.Errorf("message %q", ErrChecksumType)
	}
	h, _ := NewHash("md5")
	if err := VerifyChecksum("sha256", abcSums["sha256"], h); !errors.Is(err, ErrChecksumType) {
		t.Errorf("md5 hash checked as sha256: %v", err)
	}
	if err := VerifyChecksum("sha256", "", h); err != nil {
		t.Errorf("empty want: %v", err)
	}
	if err := VerifyChecksum("bogus", "00", h); !errors.Is(err, ErrChecksumType) {
		t.Errorf("bogus type: %v", err)
	}
}
