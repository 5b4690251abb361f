// Package open opens the store a --db value names and the key file that
// seals its secrets: the one place byoi-api and byoi-load share.
package open

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/pgstore"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
)

// Store opens db, a PostgreSQL URL or a SQLite file, with the key file
// keyFile. Without keyFile a SQLite database uses its path + ".key";
// PostgreSQL needs one, as every instance must seal and open with the
// same key and there is no file beside the database to make one up.
//
// The database keeps a check value sealed with its key. A key file is
// created only for an empty database (and its check value stored then);
// a key file that does not open the check value, or a database with data
// and no key file, is refused with what to do, rather than sealing new
// secrets under a key that cannot open the old ones. A database of an
// older byoi-api (data, no check value) gets one once the key file opens
// one of its sealed values.
func Store(ctx context.Context, db, keyFile string) (store.Store, *controlplane.Keyring, error) {
	if keyFile == "" {
		if pgstore.IsDSN(db) {
			return nil, nil, errors.New("--db postgres://... needs --key-file (the same key file for every instance)")
		}
		keyFile = db + ".key"
	}
	var st store.Store
	var err error
	shown := db
	if pgstore.IsDSN(db) {
		st, err = pgstore.Open(ctx, db)
		shown = "the PostgreSQL database"
	} else {
		st, err = sqlitestore.Open(ctx, db)
	}
	if err != nil {
		return nil, nil, err
	}
	keys, err := checkKey(ctx, st, keyFile, shown)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return st, keys, nil
}

// checkKey loads (or, for an empty database, creates) the key file and
// checks it against the database's check value.
func checkKey(ctx context.Context, st store.Store, keyFile, db string) (*controlplane.Keyring, error) {
	wrong := fmt.Errorf("the key file %s is not the key of %s: it does not open the secrets sealed there. Start with the key file that was made with this database (restore it from the backup of the database; with PostgreSQL every instance needs the same file). A new key cannot open what is stored", keyFile, db)
	missing := fmt.Errorf("%s holds data but its key file %s is missing: restore that key file from the backup of the database (byoi-api makes a new key only for an empty database, since a new key cannot open the secrets already stored)", db, keyFile)
	for try := 0; ; try++ {
		check, err := st.Meta(ctx, controlplane.KeyCheckName)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		if err == nil {
			keys, err := controlplane.LoadKey(keyFile)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, missing
			}
			if err != nil {
				return nil, err
			}
			if !keys.Checks(check) {
				return nil, wrong
			}
			return keys, nil
		}
		// No check value yet: a new database, or one of an older
		// byoi-api.
		empty, err := st.Empty(ctx)
		if err != nil {
			return nil, err
		}
		keys, err := controlplane.LoadKey(keyFile)
		switch {
		case errors.Is(err, fs.ErrNotExist) && empty:
			if keys, err = controlplane.CreateKey(keyFile); errors.Is(err, fs.ErrExist) {
				keys, err = controlplane.LoadKey(keyFile) // another process made it first
			}
			if err != nil {
				return nil, err
			}
		case errors.Is(err, fs.ErrNotExist):
			return nil, missing
		case err != nil:
			return nil, err
		}
		if !empty {
			x, err := st.SealedSample(ctx)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, err
			}
			if err == nil && !keys.Opens(x) {
				return nil, wrong
			}
		}
		err = st.PutMeta(ctx, controlplane.KeyCheckName, keys.KeyCheck())
		if errors.Is(err, store.ErrExists) && try == 0 {
			continue // another instance stored one first: check against it
		}
		if err != nil {
			return nil, err
		}
		return keys, nil
	}
}
