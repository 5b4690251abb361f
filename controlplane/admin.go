package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/store"
)

// Admin holds the operator's commands (byoi-api customer/credential/
// token/server add): they write the store directly, never over HTTP.
// Secrets come from crypto/rand, are returned once, and are stored hashed
// (tokens, consumer keys) or sealed (application secrets).
type Admin struct {
	Store store.Store
	Keys  *Keyring
	Now   func() time.Time // time.Now when nil
}

func (a *Admin) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Credential is what `credential add` prints, go-ovh's three settings,
// with its id (for `credential revoke` and OVH's /me/api/credential).
type Credential struct {
	ID                int64  `json:"credentialId,string"`
	ApplicationKey    string `json:"applicationKey"`
	ApplicationSecret string `json:"applicationSecret"`
	ConsumerKey       string `json:"consumerKey"`
	// Expires is when it stops working ("" never), RFC 3339.
	Expires string `json:"expires,omitempty"`
}

// Secret is one access token or credential as `token list` and
// `credential list` show it (never the secret itself).
type Secret struct {
	ID             int64  `json:"id"`
	Customer       string `json:"customer"`
	ApplicationKey string `json:"applicationKey,omitempty"` // credentials
	Created        string `json:"created"`
	Expires        string `json:"expires,omitempty"`
	Revoked        string `json:"revoked,omitempty"`
	Status         string `json:"status"` // valid, expired, revoked
}

func secretStatus(expires, revoked, now time.Time) string {
	switch {
	case !revoked.IsZero():
		return "revoked"
	case !store.Usable(expires, revoked, now):
		return "expired"
	}
	return "valid"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// expiry is when a secret made at now for ttl ends (zero: never).
func expiry(now time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	return now.Add(ttl)
}

// ErrBadName is a customer or server name refused.
var ErrBadName = errors.New("a name is 1 to 253 characters: letters, digits, '.', '-' and '_', starting with a letter or digit")

// ValidName reports whether a customer or server name is accepted (it is
// part of URL paths).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > maxServerName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '-' || c == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}

// AddCustomer creates a customer.
func (a *Admin) AddCustomer(ctx context.Context, name string) error {
	if !ValidName(name) {
		return ErrBadName
	}
	_, err := a.Store.CreateCustomer(ctx, name, a.now())
	if errors.Is(err, store.ErrExists) {
		return fmt.Errorf("customer %s already exists", name)
	}
	return err
}

func (a *Admin) customer(ctx context.Context, name string) (store.Customer, error) {
	c, err := a.Store.CustomerByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return c, fmt.Errorf("no customer %s", name)
	}
	return c, err
}

// AddCredential creates an application key, secret and consumer key for a
// customer, without expiry.
func (a *Admin) AddCredential(ctx context.Context, customer string) (Credential, error) {
	return a.AddCredentialFor(ctx, customer, 0)
}

// AddCredentialFor creates a credential that expires after ttl (0:
// never).
func (a *Admin) AddCredentialFor(ctx context.Context, customer string, ttl time.Duration) (Credential, error) {
	c, err := a.customer(ctx, customer)
	if err != nil {
		return Credential{}, err
	}
	now := a.now()
	cr := Credential{ApplicationKey: randomHex(8), ApplicationSecret: randomHex(16), ConsumerKey: randomHex(16), Expires: stamp(expiry(now, ttl))}
	sc, err := a.Store.CreateCredential(ctx, store.Credential{
		CustomerID:      c.ID,
		AppKey:          cr.ApplicationKey,
		SealedSecret:    a.Keys.Seal([]byte(cr.ApplicationSecret), credentialAD(cr.ApplicationKey)),
		ConsumerKeyHash: hashToken(cr.ConsumerKey),
		CreatedAt:       now,
		ExpiresAt:       expiry(now, ttl),
	})
	if err != nil {
		return Credential{}, err
	}
	cr.ID = sc.ID
	return cr, nil
}

// AddToken creates an access token (Authorization: Bearer) for a customer,
// without expiry.
func (a *Admin) AddToken(ctx context.Context, customer string) (string, error) {
	tok, _, err := a.AddTokenFor(ctx, customer, 0)
	return tok, err
}

// AddTokenFor creates an access token that expires after ttl (0: never),
// and returns it with its id.
func (a *Admin) AddTokenFor(ctx context.Context, customer string, ttl time.Duration) (string, int64, error) {
	c, err := a.customer(ctx, customer)
	if err != nil {
		return "", 0, err
	}
	tok := randomToken("byoi_at_")
	now := a.now()
	t, err := a.Store.AddAccessToken(ctx, store.AccessToken{CustomerID: c.ID, Hash: hashToken(tok), CreatedAt: now, ExpiresAt: expiry(now, ttl)})
	if err != nil {
		return "", 0, err
	}
	return tok, t.ID, nil
}

// customerID is the id of customer name, 0 for "" (every customer).
func (a *Admin) customerID(ctx context.Context, name string) (int64, error) {
	if name == "" {
		return 0, nil
	}
	c, err := a.customer(ctx, name)
	return c.ID, err
}

// Tokens lists the access tokens of a customer ("": of every customer).
func (a *Admin) Tokens(ctx context.Context, customer string) ([]Secret, error) {
	id, err := a.customerID(ctx, customer)
	if err != nil {
		return nil, err
	}
	list, err := a.Store.AccessTokens(ctx, id)
	if err != nil {
		return nil, err
	}
	now := a.now()
	out := []Secret{}
	for _, t := range list {
		out = append(out, Secret{ID: t.ID, Customer: t.CustomerName, Created: stamp(t.CreatedAt), Expires: stamp(t.ExpiresAt), Revoked: stamp(t.RevokedAt), Status: secretStatus(t.ExpiresAt, t.RevokedAt, now)})
	}
	return out, nil
}

// RevokeToken revokes access token id at once, on every instance, and
// ends the Control Panel sessions signed in with it.
func (a *Admin) RevokeToken(ctx context.Context, id int64) error {
	err := a.Store.RevokeAccessToken(ctx, 0, id, a.now())
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no access token %d (byoi-api token list shows them)", id)
	}
	return err
}

// Credentials lists the credentials of a customer ("": of every
// customer).
func (a *Admin) Credentials(ctx context.Context, customer string) ([]Secret, error) {
	id, err := a.customerID(ctx, customer)
	if err != nil {
		return nil, err
	}
	list, err := a.Store.Credentials(ctx, id)
	if err != nil {
		return nil, err
	}
	now := a.now()
	out := []Secret{}
	for _, c := range list {
		out = append(out, Secret{ID: c.ID, Customer: c.CustomerName, ApplicationKey: c.AppKey, Created: stamp(c.CreatedAt), Expires: stamp(c.ExpiresAt), Revoked: stamp(c.RevokedAt), Status: secretStatus(c.ExpiresAt, c.RevokedAt, now)})
	}
	return out, nil
}

// RevokeCredential revokes a credential, by id or application key, at
// once on every instance.
func (a *Admin) RevokeCredential(ctx context.Context, idOrAppKey string) error {
	id, err := strconv.ParseInt(idOrAppKey, 10, 64)
	if err != nil {
		c, err := a.Store.CredentialByAppKey(ctx, idOrAppKey)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("no credential %.64q (byoi-api credential list shows them)", idOrAppKey)
		}
		if err != nil {
			return err
		}
		id = c.ID
	}
	err = a.Store.RevokeCredential(ctx, 0, id, a.now())
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no credential %d (byoi-api credential list shows them)", id)
	}
	return err
}

// AddServer creates a server for a customer and returns its agent token;
// mac, when not empty, is the MAC address it boots from the network with.
func (a *Admin) AddServer(ctx context.Context, name, customer, mac string) (string, error) {
	var macs []string
	if mac != "" {
		macs = []string{mac}
	}
	return a.AddServerMACs(ctx, name, customer, macs)
}

// AddServerMACs creates a server with the MAC addresses that identify it
// when it boots from the network (byoi-api serves its iPXE script only by
// these), and returns its agent token.
func (a *Admin) AddServerMACs(ctx context.Context, name, customer string, macs []string) (string, error) {
	if !ValidName(name) {
		return "", ErrBadName
	}
	macs, err := a.freeMACs(ctx, macs, 0)
	if err != nil {
		return "", err
	}
	c, err := a.customer(ctx, customer)
	if err != nil {
		return "", err
	}
	first := ""
	if len(macs) > 0 {
		first = macs[0]
	}
	tok := randomToken("byoi_ag_")
	sv, err := a.Store.CreateServer(ctx, store.Server{CustomerID: c.ID, Name: name, MAC: first, CreatedAt: a.now()}, hashToken(tok))
	if errors.Is(err, store.ErrExists) {
		return "", fmt.Errorf("server %s already exists", name)
	}
	if err != nil {
		return "", err
	}
	if len(macs) > 0 {
		if err := a.Store.SetServerMACs(ctx, sv.ID, macs); err != nil {
			return "", fmt.Errorf("server %s created, but its MAC addresses were refused (set them with byoi-api server macs): %w", name, macErr(err))
		}
	}
	return tok, nil
}

// SetMACs replaces the MAC addresses of a server (none: it is no longer
// served by network boot).
func (a *Admin) SetMACs(ctx context.Context, server string, macs []string) error {
	sv, err := a.Store.ServerByName(ctx, server)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no server %s", server)
	}
	if err != nil {
		return err
	}
	if macs, err = a.freeMACs(ctx, macs, sv.ID); err != nil {
		return err
	}
	return macErr(a.Store.SetServerMACs(ctx, sv.ID, macs))
}

// freeMACs normalizes macs, drops repeats, and refuses one another server
// than self has.
func (a *Admin) freeMACs(ctx context.Context, macs []string, self int64) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, m := range macs {
		n, err := agentapi.NormalizeMAC(m)
		if err != nil {
			return nil, err
		}
		if seen[n] {
			continue
		}
		seen[n] = true
		other, err := a.Store.ServerByMAC(ctx, n)
		if err == nil && other.ID != self {
			return nil, fmt.Errorf("MAC address %s belongs to server %s", n, other.Name)
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func macErr(err error) error {
	if errors.Is(err, store.ErrExists) {
		return errors.New("a MAC address belongs to another server")
	}
	return err
}

// NewAgentToken replaces a server's agent token (a server that re-enters
// rescue gets a fresh one; the old one stops working).
func (a *Admin) NewAgentToken(ctx context.Context, server string) (string, error) {
	sv, err := a.Store.ServerByName(ctx, server)
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("no server %s", server)
	}
	if err != nil {
		return "", err
	}
	tok := randomToken("byoi_ag_")
	if err := a.Store.SetAgentToken(ctx, sv.ID, hashToken(tok)); err != nil {
		return "", err
	}
	return tok, nil
}
