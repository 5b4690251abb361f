package controlplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/byoi/byoi/controlplane/power"
	"github.com/byoi/byoi/controlplane/store"
)

// SetBMC sets a server's power driver: spec "none" (someone reboots it by
// hand), or an IPMI BMC with its password, sealed at rest with the key
// file (bound to the server). The password is never printed, logged or
// returned.
func (a *Admin) SetBMC(ctx context.Context, server string, spec power.BMC, pw power.Password) error {
	sv, err := a.Store.ServerByName(ctx, server)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no server %s", server)
	}
	if err != nil {
		return err
	}
	b := store.ServerBMC{ServerID: sv.ID, Spec: spec.String(), UpdatedAt: a.now()}
	if !spec.IsNone() {
		if pw.IsZero() {
			return fmt.Errorf("%w: the BMC password is missing (--password-file FILE, --password-env VAR or stdin)", power.ErrBadPassword)
		}
		b.SealedPassword = a.Keys.Seal([]byte(pw.Reveal()), bmcAD(sv.ID))
	}
	return a.Store.SetServerBMC(ctx, b)
}

// BMC is the server's power driver as `server bmc` shows it: "none" or
// ipmi://USER@HOST:PORT (never the password).
func (a *Admin) BMC(ctx context.Context, server string) (string, error) {
	sv, err := a.Store.ServerByName(ctx, server)
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("no server %s", server)
	}
	if err != nil {
		return "", err
	}
	b, err := a.Store.ServerBMC(ctx, sv.ID)
	if errors.Is(err, store.ErrNotFound) {
		return power.DriverNone, nil
	}
	return b.Spec, err
}
