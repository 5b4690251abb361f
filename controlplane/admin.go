package controlplane

import (
	"context"
	"errors"
	"fmt"
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

// Credential is what `credential add` prints, go-ovh's three settings.
type Credential struct {
	ApplicationKey    string `json:"applicationKey"`
	ApplicationSecret string `json:"applicationSecret"`
	ConsumerKey       string `json:"consumerKey"`
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
// customer.
func (a *Admin) AddCredential(ctx context.Context, customer string) (Credential, error) {
	c, err := a.customer(ctx, customer)
	if err != nil {
		return Credential{}, err
	}
	cr := Credential{ApplicationKey: randomHex(8), ApplicationSecret: randomHex(16), ConsumerKey: randomHex(16)}
	_, err = a.Store.CreateCredential(ctx, store.Credential{
		CustomerID:      c.ID,
		AppKey:          cr.ApplicationKey,
		SealedSecret:    a.Keys.Seal([]byte(cr.ApplicationSecret), credentialAD(cr.ApplicationKey)),
		ConsumerKeyHash: hashToken(cr.ConsumerKey),
		CreatedAt:       a.now(),
	})
	if err != nil {
		return Credential{}, err
	}
	return cr, nil
}

// AddToken creates an access token (Authorization: Bearer) for a customer.
func (a *Admin) AddToken(ctx context.Context, customer string) (string, error) {
	c, err := a.customer(ctx, customer)
	if err != nil {
		return "", err
	}
	tok := randomToken("byoi_at_")
	if err := a.Store.CreateAccessToken(ctx, c.ID, hashToken(tok), a.now()); err != nil {
		return "", err
	}
	return tok, nil
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
