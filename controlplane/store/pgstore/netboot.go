package pgstore

import (
	"context"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/jackc/pgx/v5"
)

// Network boot: a server's MAC addresses and how it boots its deployed disk.

func (s *Store) SetServerMACs(ctx context.Context, serverID int64, macs []string) error {
	err := s.write(ctx, func(tx pgx.Tx) error {
		// The server's row lock orders this against another change of the
		// same server's MACs.
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM servers WHERE id = $1 FOR UPDATE`, serverID).Scan(&one); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM server_macs WHERE server_id = $1`, serverID); err != nil {
			return err
		}
		for _, m := range macs {
			if _, err := tx.Exec(ctx, `INSERT INTO server_macs (mac, server_id) VALUES ($1, $2)`, m, serverID); err != nil {
				return err
			}
		}
		return nil
	})
	if isUnique(err) {
		return store.ErrExists
	}
	return notFound(err)
}

func (s *Store) ServerMACs(ctx context.Context, serverID int64) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT mac FROM server_macs WHERE server_id = $1 ORDER BY mac`, serverID)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if out == nil {
		out = []string{}
	}
	return out, err
}

func (s *Store) ServerByMAC(ctx context.Context, mac string) (store.Server, error) {
	return scanServer(s.pool.QueryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE id = (SELECT server_id FROM server_macs WHERE mac = $1)`, mac))
}

func (s *Store) SetBootInfo(ctx context.Context, b store.BootInfo) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO server_boot (server_id, deployment_id, disk_key, efi_entry, updated_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (server_id) DO UPDATE SET deployment_id = excluded.deployment_id, disk_key = excluded.disk_key, efi_entry = excluded.efi_entry, updated_at = excluded.updated_at`,
		b.ServerID, b.DeploymentID, b.DiskKey, b.EFIEntry, ms(b.UpdatedAt))
	return notFound(err)
}

func (s *Store) BootInfo(ctx context.Context, serverID int64) (store.BootInfo, error) {
	b := store.BootInfo{ServerID: serverID}
	var at int64
	err := s.pool.QueryRow(ctx, `SELECT deployment_id, disk_key, efi_entry, updated_at FROM server_boot WHERE server_id = $1`, serverID).
		Scan(&b.DeploymentID, &b.DiskKey, &b.EFIEntry, &at)
	if err != nil {
		return store.BootInfo{}, notFound(err)
	}
	b.UpdatedAt = tm(at)
	return b, nil
}
