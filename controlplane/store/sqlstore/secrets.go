package sqlstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// Credentials, access tokens (revocable, expirable), the signatures of
// signed requests seen (replays), and the database's own settings.

const credentialCols = `r.id, r.customer_id, r.app_key, r.app_secret_sealed, r.consumer_key_hash, r.created_at, r.expires_at, r.revoked_at, c.name`
const credentialFrom = ` FROM credentials r JOIN customers c ON c.id = r.customer_id `

func (s *Store) scanCredential(row scanner) (store.Credential, error) {
	var c store.Credential
	var at, exp, rev int64
	if err := row.Scan(&c.ID, &c.CustomerID, &c.AppKey, &c.SealedSecret, &c.ConsumerKeyHash, &at, &exp, &rev, &c.CustomerName); err != nil {
		return store.Credential{}, s.notFound(err)
	}
	c.CreatedAt, c.ExpiresAt, c.RevokedAt = Tm(at), Tm(exp), Tm(rev)
	return c, nil
}

func (s *Store) CreateCredential(ctx context.Context, c store.Credential) (store.Credential, error) {
	err := s.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(`INSERT INTO credentials (customer_id, app_key, app_secret_sealed, consumer_key_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
			c.CustomerID, c.AppKey, c.SealedSecret, c.ConsumerKeyHash, Ms(c.CreatedAt), Ms(c.ExpiresAt)).Scan(&c.ID)
	})
	if err != nil && s.f.IsUnique(err) {
		return store.Credential{}, store.ErrExists
	}
	if err != nil {
		return store.Credential{}, s.notFound(err)
	}
	return c, nil
}

func (s *Store) CredentialByAppKey(ctx context.Context, appKey string) (store.Credential, error) {
	return s.scanCredential(s.queryRow(ctx, `SELECT `+credentialCols+credentialFrom+`WHERE r.app_key = ?`, appKey))
}

func (s *Store) CredentialByID(ctx context.Context, id int64) (store.Credential, error) {
	return s.scanCredential(s.queryRow(ctx, `SELECT `+credentialCols+credentialFrom+`WHERE r.id = ?`, id))
}

func (s *Store) Credentials(ctx context.Context, customerID int64) ([]store.Credential, error) {
	rows, err := s.query(ctx, `SELECT `+credentialCols+credentialFrom+`WHERE r.customer_id = ? OR ? = 0 ORDER BY r.id`, customerID, customerID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.Credential{}
	for rows.Next() {
		c, err := s.scanCredential(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func (s *Store) RevokeCredential(ctx context.Context, customerID, id int64, now time.Time) error {
	return s.Write(ctx, func(tx *Tx) error {
		var rev int64
		if err := tx.QueryRow(`SELECT revoked_at FROM credentials WHERE id = ? AND (customer_id = ? OR ? = 0)`+s.f.ForUpdate, id, customerID, customerID).Scan(&rev); err != nil {
			return s.notFound(err)
		}
		if rev != 0 {
			return nil
		}
		_, err := tx.Exec(`UPDATE credentials SET revoked_at = ? WHERE id = ?`, Ms(now), id)
		return err
	})
}

const accessTokenCols = `t.id, t.customer_id, t.token_hash, t.created_at, t.expires_at, t.revoked_at, c.name`
const accessTokenFrom = ` FROM access_tokens t JOIN customers c ON c.id = t.customer_id `

func (s *Store) scanAccessToken(row scanner) (store.AccessToken, error) {
	var t store.AccessToken
	var at, exp, rev int64
	if err := row.Scan(&t.ID, &t.CustomerID, &t.Hash, &at, &exp, &rev, &t.CustomerName); err != nil {
		return store.AccessToken{}, s.notFound(err)
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = Tm(at), Tm(exp), Tm(rev)
	return t, nil
}

func (s *Store) CreateAccessToken(ctx context.Context, customerID int64, tokenHash []byte, now time.Time) error {
	_, err := s.AddAccessToken(ctx, store.AccessToken{CustomerID: customerID, Hash: tokenHash, CreatedAt: now})
	return err
}

func (s *Store) AddAccessToken(ctx context.Context, t store.AccessToken) (store.AccessToken, error) {
	err := s.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(`INSERT INTO access_tokens (customer_id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?) RETURNING id`,
			t.CustomerID, t.Hash, Ms(t.CreatedAt), Ms(t.ExpiresAt)).Scan(&t.ID)
	})
	if err != nil && s.f.IsUnique(err) {
		return store.AccessToken{}, store.ErrExists
	}
	if err != nil {
		return store.AccessToken{}, s.notFound(err)
	}
	t.CreatedAt, t.ExpiresAt = Tm(Ms(t.CreatedAt)), Tm(Ms(t.ExpiresAt))
	return t, nil
}

func (s *Store) CustomerByAccessToken(ctx context.Context, tokenHash []byte) (store.Customer, error) {
	return s.scanCustomer(s.queryRow(ctx, `SELECT c.id, c.name, c.created_at FROM access_tokens t JOIN customers c ON c.id = t.customer_id
		WHERE t.token_hash = ? AND t.revoked_at = 0 AND (t.expires_at = 0 OR t.expires_at > ?)`, tokenHash, time.Now().UnixMilli()))
}

func (s *Store) AccessTokenByHash(ctx context.Context, tokenHash []byte) (store.AccessToken, error) {
	return s.scanAccessToken(s.queryRow(ctx, `SELECT `+accessTokenCols+accessTokenFrom+`WHERE t.token_hash = ?`, tokenHash))
}

func (s *Store) AccessTokens(ctx context.Context, customerID int64) ([]store.AccessToken, error) {
	rows, err := s.query(ctx, `SELECT `+accessTokenCols+accessTokenFrom+`WHERE t.customer_id = ? OR ? = 0 ORDER BY t.id`, customerID, customerID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.AccessToken{}
	for rows.Next() {
		t, err := s.scanAccessToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *Store) RevokeAccessToken(ctx context.Context, customerID, id int64, now time.Time) error {
	return s.Write(ctx, func(tx *Tx) error {
		var rev int64
		if err := tx.QueryRow(`SELECT revoked_at FROM access_tokens WHERE id = ? AND (customer_id = ? OR ? = 0)`+s.f.ForUpdate, id, customerID, customerID).Scan(&rev); err != nil {
			return s.notFound(err)
		}
		if rev == 0 {
			if _, err := tx.Exec(`UPDATE access_tokens SET revoked_at = ? WHERE id = ?`, Ms(now), id); err != nil {
				return err
			}
		}
		// The panel sessions signed in with it end with it.
		_, err := tx.Exec(`DELETE FROM sessions WHERE access_token_id = ?`, id)
		return err
	})
}

func (s *Store) RememberSignature(ctx context.Context, hash []byte, expires, now time.Time) error {
	err := s.Write(ctx, func(tx *Tx) error {
		if _, err := tx.Exec(`DELETE FROM signatures WHERE expires_at < ?`, Ms(now)); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO signatures (hash, expires_at) VALUES (?, ?)`, hash, Ms(expires))
		return err
	})
	if err != nil && s.f.IsUnique(err) {
		return store.ErrExists
	}
	return err
}

func (s *Store) Meta(ctx context.Context, name string) ([]byte, error) {
	var v []byte
	if err := s.queryRow(ctx, `SELECT value FROM meta WHERE name = ?`, name).Scan(&v); err != nil {
		return nil, s.notFound(err)
	}
	return v, nil
}

func (s *Store) PutMeta(ctx context.Context, name string, value []byte) error {
	err := s.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(`INSERT INTO meta (name, value) VALUES (?, ?)`, name, value)
		return err
	})
	if err != nil && s.f.IsUnique(err) {
		return store.ErrExists
	}
	return err
}

func (s *Store) Empty(ctx context.Context) (bool, error) {
	var n int
	err := s.queryRow(ctx, `SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM customers LIMIT 1) a) + (SELECT COUNT(*) FROM (SELECT 1 FROM servers LIMIT 1) b)
		+ (SELECT COUNT(*) FROM (SELECT 1 FROM credentials LIMIT 1) c) + (SELECT COUNT(*) FROM (SELECT 1 FROM access_tokens LIMIT 1) d)`).Scan(&n)
	return n == 0, err
}

func (s *Store) SealedSample(ctx context.Context) (store.SealedSample, error) {
	var x store.SealedSample
	err := s.queryRow(ctx, `SELECT app_key, app_secret_sealed FROM credentials ORDER BY id LIMIT 1`).Scan(&x.AppKey, &x.Sealed)
	if err == nil {
		return x, nil
	}
	if err = s.notFound(err); err != store.ErrNotFound {
		return x, err
	}
	err = s.queryRow(ctx, `SELECT server_id, job_sealed FROM deployments ORDER BY id LIMIT 1`).Scan(&x.ServerID, &x.Sealed)
	return x, s.notFound(err)
}
