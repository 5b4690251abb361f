// Package open opens the store a --db value names and the key file that
// seals its secrets: the one place byoi-api and byoi-load share.
package open

import (
	"context"
	"errors"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/pgstore"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
)

// Store opens db, a PostgreSQL URL or a SQLite file, with the key file
// keyFile. Without keyFile a SQLite database uses its path + ".key"
// (made when missing); PostgreSQL needs one, as every instance must seal
// and open with the same key and there is no file beside the database to
// make one up.
func Store(ctx context.Context, db, keyFile string) (store.Store, *controlplane.Keyring, error) {
	if keyFile == "" {
		if pgstore.IsDSN(db) {
			return nil, nil, errors.New("--db postgres://... needs --key-file (the same key file for every instance)")
		}
		keyFile = db + ".key"
	}
	keys, err := controlplane.LoadOrCreateKey(keyFile)
	if err != nil {
		return nil, nil, err
	}
	var st store.Store
	if pgstore.IsDSN(db) {
		st, err = pgstore.Open(ctx, db)
	} else {
		st, err = sqlitestore.Open(ctx, db)
	}
	if err != nil {
		return nil, nil, err
	}
	return st, keys, nil
}
