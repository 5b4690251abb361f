package sqlitestore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/byoi/byoi/controlplane/store"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Network boot: a server's MAC addresses and how it boots its deployed disk.

func (s *Store) SetServerMACs(ctx context.Context, serverID int64, macs []string) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM servers WHERE id = ?`, serverID).Scan(&one); err != nil {
			return notFound(err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM server_macs WHERE server_id = ?`, serverID); err != nil {
			return err
		}
		for _, m := range macs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO server_macs (mac, server_id) VALUES (?, ?)`, m, serverID); err != nil {
				if isUnique(err) {
					return store.ErrExists
				}
				return err
			}
		}
		return nil
	})
	return err
}

func (s *Store) ServerMACs(ctx context.Context, serverID int64) ([]string, error) {
	rows, err := s.query(ctx, `SELECT mac FROM server_macs WHERE server_id = ? ORDER BY mac`, serverID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *Store) ServerByMAC(ctx context.Context, mac string) (store.Server, error) {
	return scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE id = (SELECT server_id FROM server_macs WHERE mac = ?)`, mac))
}

func (s *Store) SetBootInfo(ctx context.Context, b store.BootInfo) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO server_boot (server_id, deployment_id, disk_key, efi_entry, updated_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (server_id) DO UPDATE SET deployment_id = excluded.deployment_id, disk_key = excluded.disk_key, efi_entry = excluded.efi_entry, updated_at = excluded.updated_at`,
			b.ServerID, b.DeploymentID, b.DiskKey, b.EFIEntry, ms(b.UpdatedAt))
		return err
	})
	if isForeignKey(err) {
		return store.ErrNotFound
	}
	return err
}

func (s *Store) BootInfo(ctx context.Context, serverID int64) (store.BootInfo, error) {
	b := store.BootInfo{ServerID: serverID}
	var at int64
	err := s.queryRow(ctx, `SELECT deployment_id, disk_key, efi_entry, updated_at FROM server_boot WHERE server_id = ?`, serverID).
		Scan(&b.DeploymentID, &b.DiskKey, &b.EFIEntry, &at)
	if err != nil {
		return store.BootInfo{}, notFound(err)
	}
	b.UpdatedAt = tm(at)
	return b, nil
}

// isForeignKey reports a foreign key refusal (a server that does not exist).
func isForeignKey(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}
