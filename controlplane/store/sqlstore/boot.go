package sqlstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// Boot tokens: the rules are store.MayMint and store.TokenExpired; here
// the rows they read are locked (the server's row) and written.

func (s *Store) ArmServer(ctx context.Context, serverID int64, how store.ArmState) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET boot_armed = CASE WHEN boot_armed < ? THEN ? ELSE boot_armed END WHERE id = ?`, int(how), int(how), serverID)
}

func (s *Store) MintBootToken(ctx context.Context, m store.BootMint) (bool, error) {
	defer s.tokens.Forget(m.ServerID)
	var minted bool
	err := s.Write(ctx, func(tx *Tx) error {
		minted = false
		sv, err := s.scanServer(tx.QueryRow(`SELECT `+serverCols+` FROM servers WHERE id = ?`+s.f.ForUpdate, m.ServerID))
		if err != nil {
			return err
		}
		// The running deployment's last event (its row is not locked:
		// an event arriving meanwhile only makes the agent more alive,
		// and the token written below is the server row's, under its
		// lock).
		var seen int64
		if err := tx.QueryRow(`SELECT COALESCE(MAX(last_seen), 0) FROM deployments WHERE server_id = ? AND status = 'doing'`, m.ServerID).Scan(&seen); err != nil {
			return err
		}
		if !store.MayMint(sv, Tm(seen), m.Now, m.Silence, m.Grace) {
			return nil
		}
		if _, err := tx.Exec(`UPDATE servers SET agent_token_hash = ?, token_source = ?, token_at = ?, token_done_at = 0, boot_armed = 0 WHERE id = ?`,
			m.TokenHash, store.TokenByNetboot, Ms(m.Now), m.ServerID); err != nil {
			if s.f.IsUnique(err) {
				return store.ErrExists
			}
			return err
		}
		minted = true
		return nil
	})
	return minted, err
}

func (s *Store) RevokeBootToken(ctx context.Context, serverID int64, doneAt time.Time) (bool, error) {
	defer s.tokens.Forget(serverID)
	var revoked bool
	err := s.Write(ctx, func(tx *Tx) error {
		res, err := tx.Exec(`UPDATE servers SET agent_token_hash = NULL WHERE id = ? AND agent_token_hash IS NOT NULL AND token_source = ? AND token_at <= ?`,
			serverID, store.TokenByNetboot, Ms(doneAt))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		revoked = n > 0
		return err
	})
	return revoked, err
}

func (s *Store) TouchAgent(ctx context.Context, serverID int64, now time.Time) error {
	return s.c.Write(ctx, false, false, func(tx *Tx) error {
		_, err := tx.Exec(`UPDATE servers SET agent_seen = ? WHERE id = ? AND agent_seen < ?`, Ms(now), serverID, Ms(now))
		return err
	})
}
