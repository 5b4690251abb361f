package pgstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/jackc/pgx/v5"
)

// Control Panel sessions.

func (s *Store) CreateSession(ctx context.Context, se store.Session) error {
	err := s.write(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE expires_at <= $1`, ms(se.CreatedAt)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO sessions (id_hash, customer_id, created_at, expires_at) VALUES ($1, $2, $3, $4)`, se.IDHash, se.CustomerID, ms(se.CreatedAt), ms(se.ExpiresAt))
		return err
	})
	if isUnique(err) {
		return store.ErrExists
	}
	return notFound(err)
}

func (s *Store) SessionByHash(ctx context.Context, idHash []byte, now time.Time) (store.Session, error) {
	var se store.Session
	var created, expires int64
	err := s.pool.QueryRow(ctx, `SELECT id_hash, customer_id, created_at, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2`, idHash, ms(now)).
		Scan(&se.IDHash, &se.CustomerID, &created, &expires)
	if err != nil {
		return store.Session{}, notFound(err)
	}
	se.CreatedAt, se.ExpiresAt = tm(created), tm(expires)
	return se, nil
}

func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE id_hash = $1`, idHash)
	return err
}
