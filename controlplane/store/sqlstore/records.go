package sqlstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// Customers, panel sessions, servers and their network boot records.

func (s *Store) CreateCustomer(ctx context.Context, name string, now time.Time) (store.Customer, error) {
	c := store.Customer{Name: name, CreatedAt: Tm(Ms(now))}
	err := s.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(`INSERT INTO customers (name, created_at) VALUES (?, ?) RETURNING id`, name, Ms(now)).Scan(&c.ID)
	})
	if err != nil && s.f.IsUnique(err) {
		return store.Customer{}, store.ErrExists
	}
	if err != nil {
		return store.Customer{}, err
	}
	return c, nil
}

func (s *Store) scanCustomer(row scanner) (store.Customer, error) {
	var c store.Customer
	var at int64
	if err := row.Scan(&c.ID, &c.Name, &at); err != nil {
		return store.Customer{}, s.notFound(err)
	}
	c.CreatedAt = Tm(at)
	return c, nil
}

func (s *Store) CustomerByName(ctx context.Context, name string) (store.Customer, error) {
	return s.scanCustomer(s.queryRow(ctx, `SELECT id, name, created_at FROM customers WHERE name = ?`, name))
}

func (s *Store) Customer(ctx context.Context, id int64) (store.Customer, error) {
	return s.scanCustomer(s.queryRow(ctx, `SELECT id, name, created_at FROM customers WHERE id = ?`, id))
}

// Control Panel sessions.

func (s *Store) CreateSession(ctx context.Context, se store.Session) error {
	err := s.Write(ctx, func(tx *Tx) error {
		if _, err := tx.Exec(`DELETE FROM sessions WHERE expires_at <= ?`, Ms(se.CreatedAt)); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO sessions (id_hash, customer_id, created_at, expires_at, access_token_id) VALUES (?, ?, ?, ?, ?)`, se.IDHash, se.CustomerID, Ms(se.CreatedAt), Ms(se.ExpiresAt), se.AccessTokenID)
		return err
	})
	if err != nil && s.f.IsUnique(err) {
		return store.ErrExists
	}
	return s.notFound(err)
}

func (s *Store) SessionByHash(ctx context.Context, idHash []byte, now time.Time) (store.Session, error) {
	var se store.Session
	var created, expires int64
	err := s.queryRow(ctx, `SELECT id_hash, customer_id, created_at, expires_at, access_token_id FROM sessions WHERE id_hash = ? AND expires_at > ?`, idHash, Ms(now)).
		Scan(&se.IDHash, &se.CustomerID, &created, &expires, &se.AccessTokenID)
	if err != nil {
		return store.Session{}, s.notFound(err)
	}
	se.CreatedAt, se.ExpiresAt = Tm(created), Tm(expires)
	return se, nil
}

func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	return s.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(`DELETE FROM sessions WHERE id_hash = ?`, idHash)
		return err
	})
}

// Servers.

const serverCols = `id, customer_id, name, mac, boot_id, efi_bootloader_path, inventory, inventory_at, created_at, boot_armed, token_source, token_at, token_done_at, agent_seen, CASE WHEN agent_token_hash IS NULL THEN 0 ELSE 1 END, props`

func (s *Store) scanServer(row scanner, extra ...any) (store.Server, error) {
	var sv store.Server
	var invAt, at, tokAt, doneAt, seen int64
	var armed, hasToken int
	dest := []any{&sv.ID, &sv.CustomerID, &sv.Name, &sv.MAC, &sv.BootID, &sv.EFIBootloaderPath, &sv.Inventory, &invAt, &at, &armed, &sv.TokenSource, &tokAt, &doneAt, &seen, &hasToken, &sv.Props}
	if err := row.Scan(append(dest, extra...)...); err != nil {
		return store.Server{}, s.notFound(err)
	}
	sv.InventoryAt, sv.CreatedAt = Tm(invAt), Tm(at)
	sv.Armed, sv.TokenAt, sv.TokenDoneAt, sv.AgentSeen, sv.HasToken = store.ArmState(armed), Tm(tokAt), Tm(doneAt), Tm(seen), hasToken != 0
	return sv, nil
}

func (s *Store) CreateServer(ctx context.Context, sv store.Server, agentTokenHash []byte) (store.Server, error) {
	if sv.BootID == 0 {
		sv.BootID = store.BootRescue
	}
	err := s.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(`INSERT INTO servers (customer_id, name, mac, agent_token_hash, boot_id, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
			sv.CustomerID, sv.Name, sv.MAC, agentTokenHash, sv.BootID, Ms(sv.CreatedAt)).Scan(&sv.ID)
	})
	if err != nil && s.f.IsUnique(err) {
		return store.Server{}, store.ErrExists
	}
	if err != nil {
		return store.Server{}, s.notFound(err)
	}
	sv.CreatedAt = Tm(Ms(sv.CreatedAt))
	return sv, nil
}

// exec1 runs one update that must change one row.
func (s *Store) exec1(ctx context.Context, durable bool, q string, args ...any) error {
	return s.c.Write(ctx, durable, false, func(tx *Tx) error {
		res, err := tx.Exec(q, args...)
		if err != nil {
			if s.f.IsUnique(err) {
				return store.ErrExists
			}
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
}

func (s *Store) SetAgentToken(ctx context.Context, serverID int64, hash []byte) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET agent_token_hash = ?, token_source = 0, token_at = 0, token_done_at = 0 WHERE id = ?`, hash, serverID)
}

func (s *Store) ServerByName(ctx context.Context, name string) (store.Server, error) {
	return s.scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE name = ?`, name))
}

// ServerByAgentToken answers from the token cache when it can (see
// package tokencache).
func (s *Store) ServerByAgentToken(ctx context.Context, hash []byte) (store.Server, error) {
	now := time.Now()
	sv, gen, ok := s.tokens.Get(hash, now)
	if ok {
		return sv, nil
	}
	sv, err := s.scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE agent_token_hash = ?`, hash))
	if err == nil {
		s.tokens.Put(hash, sv, now, gen)
	}
	return sv, err
}

func (s *Store) ListServers(ctx context.Context, customerID int64) ([]store.Server, error) {
	rows, err := s.query(ctx, `SELECT `+serverCols+` FROM servers WHERE customer_id = ? ORDER BY name`, customerID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.Server{}
	for rows.Next() {
		sv, err := s.scanServer(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sv)
	}
	return out, rows.Err()
}

func (s *Store) SetBoot(ctx context.Context, serverID, bootID int64) error {
	defer s.tokens.Forget(serverID)
	if bootID == store.BootRescue {
		return s.exec1(ctx, true, `UPDATE servers SET boot_id = ?, `+ArmRescue+` WHERE id = ?`, bootID, serverID)
	}
	return s.exec1(ctx, true, `UPDATE servers SET boot_id = ? WHERE id = ?`, bootID, serverID)
}

// ArmRescue is the assignment of an UPDATE of servers that arms network
// boot for a customer's rescue (never lowering an ArmedReboot).
const ArmRescue = `boot_armed = CASE WHEN boot_armed = 0 THEN 1 ELSE boot_armed END`

func (s *Store) SetEFIBootloaderPath(ctx context.Context, serverID int64, path string) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET efi_bootloader_path = ? WHERE id = ?`, path, serverID)
}

func (s *Store) PutInventory(ctx context.Context, serverID int64, inv []byte, now time.Time) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, false, `UPDATE servers SET inventory = ?, inventory_at = ? WHERE id = ?`, inv, Ms(now), serverID)
}

// Network boot: a server's MAC addresses and how it boots its deployed disk.

func (s *Store) SetServerMACs(ctx context.Context, serverID int64, macs []string) error {
	return s.Write(ctx, func(tx *Tx) error {
		// The server's row lock orders this against another change of
		// the same server's MACs.
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM servers WHERE id = ?`+s.f.ForUpdate, serverID).Scan(&one); err != nil {
			return s.notFound(err)
		}
		if _, err := tx.Exec(`DELETE FROM server_macs WHERE server_id = ?`, serverID); err != nil {
			return err
		}
		for _, m := range macs {
			if _, err := tx.Exec(`INSERT INTO server_macs (mac, server_id) VALUES (?, ?)`, m, serverID); err != nil {
				if s.f.IsUnique(err) {
					return store.ErrExists
				}
				return err
			}
		}
		return nil
	})
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
	return s.scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE id = (SELECT server_id FROM server_macs WHERE mac = ?)`, mac))
}

func (s *Store) SetBootInfo(ctx context.Context, b store.BootInfo) error {
	err := s.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(`INSERT INTO server_boot (server_id, deployment_id, disk_key, efi_entry, updated_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (server_id) DO UPDATE SET deployment_id = excluded.deployment_id, disk_key = excluded.disk_key, efi_entry = excluded.efi_entry, updated_at = excluded.updated_at`,
			b.ServerID, b.DeploymentID, b.DiskKey, b.EFIEntry, Ms(b.UpdatedAt))
		return err
	})
	return s.notFound(err)
}

func (s *Store) BootInfo(ctx context.Context, serverID int64) (store.BootInfo, error) {
	b := store.BootInfo{ServerID: serverID}
	var at int64
	err := s.queryRow(ctx, `SELECT deployment_id, disk_key, efi_entry, updated_at FROM server_boot WHERE server_id = ?`, serverID).
		Scan(&b.DeploymentID, &b.DiskKey, &b.EFIEntry, &at)
	if err != nil {
		return store.BootInfo{}, s.notFound(err)
	}
	b.UpdatedAt = Tm(at)
	return b, nil
}
