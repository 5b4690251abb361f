package sqlitestore

import (
	"context"
	"database/sql"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// What OVH's own tools need of the store (issue 24): the server's
// properties set by PUT, the task list, and tasks of no deployment.

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
	t.StartDate = tm(ms(t.StartDate))
	t.LastUpdate = t.StartDate
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO tasks (server_id, deployment_id, function, status, start_date, last_update) VALUES (?, 0, ?, ?, ?, ?) RETURNING id`,
			t.ServerID, t.Function, t.Status, ms(t.StartDate), ms(t.StartDate)).Scan(&t.ID)
	})
	if err != nil {
		return store.Task{}, notFound(err)
	}
	return t, nil
}

func (s *Store) FinishTasks(ctx context.Context, serverID int64, function string, now time.Time) (int, error) {
	var n int64
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE server_id = ? AND function = ? AND status IN ('init', 'todo', 'doing') AND start_date < ?`,
			store.TaskDone, ms(now), ms(now), serverID, function, ms(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}
