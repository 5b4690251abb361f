package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// What OVH's own tools need of the store (issue 24, ported from the two
// stores this package replaced): the server's properties set by PUT, the
// task list, and tasks of no deployment.

func (s *Store) SetServerProps(ctx context.Context, serverID int64, props []byte) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET props = ? WHERE id = ?`, props, serverID)
}

func (s *Store) Tasks(ctx context.Context, serverID int64, function, status string) ([]int64, error) {
	rows, err := s.query(ctx, `SELECT id FROM tasks WHERE server_id = ? AND (? = '' OR function = ?) AND (? = '' OR status = ?) ORDER BY id`,
		serverID, function, function, status, status)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []int64{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (s *Store) CreateTask(ctx context.Context, t store.Task) (store.Task, error) {
	t.DeploymentID, t.DoneDate = 0, time.Time{}
	t.StartDate = Tm(Ms(t.StartDate))
	t.LastUpdate = t.StartDate
	err := s.Write(ctx, func(tx *Tx) error {
		if t.Function == store.FunctionHardReboot {
			// One open reboot task per server: the server's row lock
			// serializes the check and the insert across instances.
			var name string
			if err := tx.QueryRow(`SELECT name FROM servers WHERE id = ?`+s.f.ForUpdate, t.ServerID).Scan(&name); err != nil {
				return err
			}
			var open store.Task
			var sd, lu, dd int64
			err := tx.QueryRow(`SELECT id, server_id, deployment_id, function, status, start_date, last_update, done_date FROM tasks WHERE server_id = ? AND function = ? AND status IN ('init', 'todo', 'doing') ORDER BY id LIMIT 1`, t.ServerID, store.FunctionHardReboot).
				Scan(&open.ID, &open.ServerID, &open.DeploymentID, &open.Function, &open.Status, &sd, &lu, &dd)
			if err == nil {
				open.StartDate, open.LastUpdate, open.DoneDate = Tm(sd), Tm(lu), Tm(dd)
				return &store.TaskRunningError{Task: open, Server: name}
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		return tx.QueryRow(`INSERT INTO tasks (server_id, deployment_id, function, status, start_date, last_update, done_date) VALUES (?, 0, ?, ?, ?, ?, 0) RETURNING id`,
			t.ServerID, t.Function, t.Status, Ms(t.StartDate), Ms(t.StartDate)).Scan(&t.ID)
	})
	if err != nil {
		return store.Task{}, s.notFound(err)
	}
	return t, nil
}

// FinishTasks is one statement: of two instances racing, the row lock
// (PostgreSQL) or the single writer (SQLite) lets one end each task; the
// other's WHERE no longer matches it.
func (s *Store) FinishTasks(ctx context.Context, serverID int64, function string, now time.Time) (int, error) {
	var n int64
	err := s.Write(ctx, func(tx *Tx) error {
		res, err := tx.Exec(`UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE server_id = ? AND function = ? AND status IN ('init', 'todo', 'doing') AND start_date < ?`,
			store.TaskDone, Ms(now), Ms(now), serverID, function, Ms(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}
