package pgstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// What OVH's own tools need of the store (issue 24): the server's
// properties set by PUT, the task list, and tasks of no deployment.

func (s *Store) SetServerProps(ctx context.Context, serverID int64, props []byte) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, `UPDATE servers SET props = $1 WHERE id = $2`, props, serverID)
}

func (s *Store) Tasks(ctx context.Context, serverID int64, function, status string) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM tasks WHERE server_id = $1 AND ($2 = '' OR function = $2) AND ($3 = '' OR status = $3) ORDER BY id`,
		serverID, function, status)
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
	err := s.pool.QueryRow(ctx, `INSERT INTO tasks (server_id, deployment_id, function, status, start_date, last_update) VALUES ($1, 0, $2, $3, $4, $4) RETURNING id`,
		t.ServerID, t.Function, t.Status, ms(t.StartDate)).Scan(&t.ID)
	if err != nil {
		return store.Task{}, notFound(err)
	}
	return t, nil
}

func (s *Store) FinishTasks(ctx context.Context, serverID int64, function string, now time.Time) (int, error) {
	// One statement: of two instances racing, the row lock lets one end
	// each task; the other's WHERE no longer matches it.
	tag, err := s.pool.Exec(ctx, `UPDATE tasks SET status = $1, last_update = $2, done_date = $2 WHERE server_id = $3 AND function = $4 AND status IN ('init', 'todo', 'doing') AND start_date < $2`,
		store.TaskDone, ms(now), serverID, function)
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}
