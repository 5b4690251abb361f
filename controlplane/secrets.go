package controlplane

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/byoi/byoi/controlplane/store"
)

// Keyring seals what the control plane must read back but not keep in
// clear: application secrets (needed to verify signatures) and job bodies
// (they hold HTTP header values and user data). AES-256-GCM with a random
// nonce; the associated data binds a sealed value to its row (a credential
// to its application key, a job to its server), so values cannot be moved
// between rows.
type Keyring struct{ aead cipher.AEAD }

// sealVersion prefixes every sealed value, for a future key rotation.
const sealVersion = 1

// NewKeyring makes a keyring from a 32-byte key.
func NewKeyring(key []byte) (*Keyring, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("key is %d bytes, want 32 (AES-256)", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Keyring{aead: aead}, nil
}

// LoadOrCreateKey reads the key file (64 hex digits), creating it with a
// random key, mode 0600, when it does not exist. A key file readable by
// group or others is refused. (byoi-api opens its key through package
// store/open, which creates one only for an empty database.)
func LoadOrCreateKey(path string) (*Keyring, error) {
	k, err := LoadKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		k, err = CreateKey(path)
		if errors.Is(err, fs.ErrExist) {
			return LoadKey(path) // another process created it first
		}
	}
	return k, err
}

// CreateKey creates the key file with a random key, mode 0600 (an error
// wrapping fs.ErrExist when it exists).
func CreateKey(path string) (*Keyring, error) {
	key := make([]byte, 32)
	rand.Read(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	return NewKeyring(key)
}

// LoadKey reads the key file (an error wrapping fs.ErrNotExist when there
// is none). A key file readable by group or others is refused.
func LoadKey(path string) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is readable by group or others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("key file %s: not hex", path)
	}
	return NewKeyring(key)
}

// Seal encrypts plain, bound to ad.
func (k *Keyring) Seal(plain []byte, ad string) []byte {
	nonce := make([]byte, k.aead.NonceSize(), 1+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	rand.Read(nonce)
	out := append([]byte{sealVersion}, nonce...)
	return k.aead.Seal(out, nonce, plain, []byte(ad))
}

// Open decrypts a value Seal made with the same ad.
func (k *Keyring) Open(sealed []byte, ad string) ([]byte, error) {
	ns := k.aead.NonceSize()
	if len(sealed) < 1+ns+k.aead.Overhead() || sealed[0] != sealVersion {
		return nil, errors.New("sealed value is malformed")
	}
	plain, err := k.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], []byte(ad))
	if err != nil {
		return nil, errors.New("sealed value does not open with this key")
	}
	return plain, nil
}

// Associated data of sealed values.
func credentialAD(appKey string) string { return "byoi credential " + appKey }
func jobAD(serverID int64) string       { return fmt.Sprintf("byoi job server %d", serverID) }

// keyCheckAD and keyCheckText make the key's check value, which the
// database keeps (store meta KeyCheckName): a key file that does not open
// it is not the database's.
const (
	keyCheckAD   = "byoi key check"
	keyCheckText = "byoi: this database's key"
	// KeyCheckName is the check value's name in the store's settings.
	KeyCheckName = "key_check"
)

// KeyCheck is a new sealed check value of k.
func (k *Keyring) KeyCheck() []byte { return k.Seal([]byte(keyCheckText), keyCheckAD) }

// Checks reports whether check is a check value of k.
func (k *Keyring) Checks(check []byte) bool {
	p, err := k.Open(check, keyCheckAD)
	return err == nil && string(p) == keyCheckText
}

// Opens reports whether k opens a sample of the database's sealed values
// (a database made before the check value existed).
func (k *Keyring) Opens(x store.SealedSample) bool {
	ad := jobAD(x.ServerID)
	if x.AppKey != "" {
		ad = credentialAD(x.AppKey)
	}
	_, err := k.Open(x.Sealed, ad)
	return err == nil
}

// randomHex returns n random bytes as hex.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// randomToken returns a prefixed 256-bit random token.
func randomToken(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// hashToken is how tokens and consumer keys are stored: they are 128 bits
// or more of crypto/rand, so a plain SHA-256 cannot be brute-forced.
func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// equal compares secrets in constant time.
func equal(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
