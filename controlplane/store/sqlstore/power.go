package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Power through the server's BMC (issue 25): the BMC record and the power
// tasks, claimed under a lease by a conditional update (of two instances
// claiming at once, one wins; PostgreSQL's SKIP LOCKED lets the other
// look at the next task).

var errNoRows = sql.ErrNoRows

func (s *Store) ServerByID(ctx context.Context, id int64) (store.Server, error) {
	return s.scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE id = ?`, id))
}

func (s *Store) SetServerBMC(ctx context.Context, b store.ServerBMC) error {
	return s.Write(ctx, func(tx *Tx) error {
		var id int64
		if err := tx.QueryRow(`SELECT id FROM servers WHERE id = ?`+s.f.ForUpdate, b.ServerID).Scan(&id); err != nil {
			return s.notFound(err)
		}
		if _, err := tx.Exec(`DELETE FROM server_bmc WHERE server_id = ?`, b.ServerID); err != nil {
			return err
		}
		if b.Spec == "none" || b.Spec == "" {
			return nil
		}
		_, err := tx.Exec(`INSERT INTO server_bmc (server_id, spec, password_sealed, updated_at) VALUES (?, ?, ?, ?)`,
			b.ServerID, b.Spec, b.SealedPassword, Ms(b.UpdatedAt))
		return err
	})
}

func (s *Store) ServerBMC(ctx context.Context, serverID int64) (store.ServerBMC, error) {
	var b store.ServerBMC
	var at int64
	err := s.queryRow(ctx, `SELECT server_id, spec, password_sealed, updated_at FROM server_bmc WHERE server_id = ?`, serverID).
		Scan(&b.ServerID, &b.Spec, &b.SealedPassword, &at)
	if err != nil {
		return store.ServerBMC{}, s.notFound(err)
	}
	b.UpdatedAt = Tm(at)
	return b, nil
}

const powerCols = `id, server_id, deployment_id, task_id, action, status, claims, owner, lease_until, code, message, created_at, started_at, ended_at`

func scanPower(row scanner) (store.PowerTask, error) {
	var t store.PowerTask
	var lease, created, started, ended int64
	var code string
	if err := row.Scan(&t.ID, &t.ServerID, &t.DeploymentID, &t.TaskID, &t.Action, &t.Status, &t.Claims, &t.Owner, &lease, &code, &t.Message, &created, &started, &ended); err != nil {
		return store.PowerTask{}, err
	}
	t.Code = job.Code(code)
	t.LeaseUntil, t.CreatedAt, t.StartedAt, t.EndedAt = Tm(lease), Tm(created), Tm(started), Tm(ended)
	return t, nil
}

func (s *Store) CreatePowerTask(ctx context.Context, t store.PowerTask) (store.PowerTask, error) {
	if t.Action == "" {
		t.Action = store.PowerReboot
	}
	t.Status, t.Claims, t.Owner, t.LeaseUntil = store.PowerTodo, 0, "", time.Time{}
	t.StartedAt, t.EndedAt, t.Code, t.Message = time.Time{}, time.Time{}, "", ""
	t.CreatedAt = Tm(Ms(t.CreatedAt))
	err := s.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(`INSERT INTO power_tasks (server_id, deployment_id, task_id, action, status, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
			t.ServerID, t.DeploymentID, t.TaskID, t.Action, t.Status, Ms(t.CreatedAt)).Scan(&t.ID)
	})
	if err != nil {
		return store.PowerTask{}, s.notFound(err)
	}
	return t, nil
}

func (s *Store) ClaimPowerTask(ctx context.Context, owner string, now time.Time, lease time.Duration) (store.PowerTask, error) {
	var got store.PowerTask
	// Nothing to claim commits (nil): the tasks abandoned on the way
	// stay abandoned.
	err := s.Write(ctx, func(tx *Tx) error {
		got = store.PowerTask{}
		for {
			t, err := scanPower(tx.QueryRow(`SELECT `+powerCols+` FROM power_tasks WHERE status = 'todo' OR (status = 'doing' AND lease_until <= ?)`+s.claimOrder(), Ms(now)))
			if errors.Is(err, errNoRows) {
				return nil
			}
			if err != nil {
				return err
			}
			if t.Claims >= store.MaxPowerClaims {
				r := store.PowerResult{Status: store.PowerError, Code: job.MsgPowerAbandoned, Message: job.Text(job.MsgPowerAbandoned, t.Claims), Now: now}
				if err := s.finishPower(tx, t, r); err != nil {
					return err
				}
				continue
			}
			started := t.StartedAt
			if started.IsZero() {
				started = now
			}
			if _, err := tx.Exec(`UPDATE power_tasks SET status = 'doing', owner = ?, lease_until = ?, claims = claims + 1, started_at = ? WHERE id = ?`,
				owner, Ms(now.Add(lease)), Ms(started), t.ID); err != nil {
				return err
			}
			t.Status, t.Owner, t.LeaseUntil, t.Claims, t.StartedAt = store.PowerDoing, owner, Tm(Ms(now.Add(lease))), t.Claims+1, Tm(Ms(started))
			got = t
			return nil
		}
	})
	if err != nil {
		return store.PowerTask{}, err
	}
	if got.ID == 0 {
		return store.PowerTask{}, store.ErrNotFound
	}
	return got, nil
}

func (s *Store) RenewPowerTask(ctx context.Context, id int64, owner string, until time.Time) error {
	err := s.exec1(ctx, false, `UPDATE power_tasks SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'doing'`, Ms(until), id, owner)
	if errors.Is(err, store.ErrNotFound) {
		return store.ErrGone
	}
	return err
}

func (s *Store) FinishPowerTask(ctx context.Context, id int64, owner string, r store.PowerResult) error {
	return s.Write(ctx, func(tx *Tx) error {
		t, err := scanPower(tx.QueryRow(`SELECT `+powerCols+` FROM power_tasks WHERE id = ?`+s.f.ForUpdate, id))
		if errors.Is(err, errNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if t.Status != store.PowerDoing || t.Owner != owner {
			return store.ErrGone
		}
		return s.finishPower(tx, t, r)
	})
}

// claimOrder is the claim's order and lock: the oldest task, skipping
// those another instance holds (PostgreSQL).
func (s *Store) claimOrder() string {
	if s.f.SkipLocked != "" {
		return s.f.SkipLocked + " LIMIT 1"
	}
	return " ORDER BY id LIMIT 1"
}

// finishPower ends t (locked by the caller) with r, and writes what it
// means to its deployment or its OVH task.
func (s *Store) finishPower(tx *Tx, t store.PowerTask, r store.PowerResult) error {
	if _, err := tx.Exec(`UPDATE power_tasks SET status = ?, code = ?, message = ?, ended_at = ?, lease_until = 0 WHERE id = ?`,
		r.Status, string(r.Code), r.Message, Ms(r.Now), t.ID); err != nil {
		return err
	}
	if t.DeploymentID == 0 {
		if t.TaskID == 0 {
			return nil
		}
		status := store.TaskDone
		if r.Status == store.PowerError {
			status = store.TaskStatusFor(store.StatusError, r.Code)
		}
		_, err := tx.Exec(`UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ? AND deployment_id = 0 AND status IN ('init', 'todo', 'doing')`,
			status, Ms(r.Now), Ms(r.Now), t.TaskID)
		return err
	}
	// The deployment's row (after the server's: the lock order) if it
	// still runs.
	var n int64
	var attempt int
	var taskID int64
	err := tx.QueryRow(`SELECT history_n, attempt, task_id FROM deployments WHERE id = ? AND status = 'doing'`+s.f.ForUpdate, t.DeploymentID).Scan(&n, &attempt, &taskID)
	if errors.Is(err, errNoRows) {
		return nil // ended or cancelled meanwhile: nothing to tell
	}
	if err != nil {
		return err
	}
	entries := []job.Event{}
	if r.Warning != nil {
		w := *r.Warning
		w.Time = r.Now
		entries = append(entries, w)
	}
	fail := r.Status == store.PowerError && attempt == 0
	if fail {
		entries = append(entries, store.PowerFailEntry(r))
	} else {
		entries = append(entries, store.PowerEntry(r))
	}
	for _, e := range entries {
		if n, err = addEntry(tx, t.DeploymentID, n, attempt, r.Now, e); err != nil {
			return err
		}
	}
	if fail {
		if _, err := tx.Exec(`UPDATE deployments SET status = 'error', code = ?, message = ?, ended_at = ?, updated_at = ?, history_n = ? WHERE id = ?`,
			string(r.Code), r.Message, Ms(r.Now), Ms(r.Now), n, t.DeploymentID); err != nil {
			return err
		}
		_, err := tx.Exec(`UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ?`, store.TaskStatusFor(store.StatusError, r.Code), Ms(r.Now), Ms(r.Now), taskID)
		return err
	}
	_, err = tx.Exec(`UPDATE deployments SET history_n = ? WHERE id = ?`, n, t.DeploymentID)
	return err
}

func (s *Store) PowerTask(ctx context.Context, id int64) (store.PowerTask, error) {
	t, err := scanPower(s.queryRow(ctx, `SELECT `+powerCols+` FROM power_tasks WHERE id = ?`, id))
	if err != nil {
		return store.PowerTask{}, s.notFound(err)
	}
	return t, nil
}

func (s *Store) PowerTaskOf(ctx context.Context, taskID int64) (store.PowerTask, error) {
	t, err := scanPower(s.queryRow(ctx, `SELECT `+powerCols+` FROM power_tasks WHERE task_id = ? AND task_id <> 0 ORDER BY id DESC LIMIT 1`, taskID))
	if err != nil {
		return store.PowerTask{}, s.notFound(err)
	}
	return t, nil
}

func (s *Store) PowerTasks(ctx context.Context, serverID int64, limit int) ([]store.PowerTask, error) {
	rows, err := s.query(ctx, `SELECT `+powerCols+` FROM power_tasks WHERE server_id = ? ORDER BY id DESC LIMIT ?`, serverID, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.PowerTask{}
	for rows.Next() {
		t, err := scanPower(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *Store) ExpireRescue(ctx context.Context, now, cutoff time.Time, limit time.Duration) ([]store.RescueExpired, error) {
	var out []store.RescueExpired
	e := store.RescueTimeoutEntry(limit, now)
	err := s.Write(ctx, func(tx *Tx) error {
		out = out[:0]
		rows, err := tx.Query(`UPDATE deployments SET status = 'error', code = ?, message = ?, ended_at = ?, updated_at = ?
			WHERE status = 'doing' AND id IN (SELECT d.id FROM deployments d WHERE d.status = 'doing' AND d.attempt = 0
				AND EXISTS (SELECT 1 FROM power_tasks p WHERE p.deployment_id = d.id AND p.status = 'done' AND p.ended_at < ?)`+s.f.SkipLocked+`)
			RETURNING id, task_id, server_id, history_n`, string(e.Code), e.Message, Ms(now), Ms(now), Ms(cutoff))
		if err != nil {
			return err
		}
		type row struct{ id, task, server, n int64 }
		var got []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.task, &r.server, &r.n); err != nil {
				rows.Close()
				return err
			}
			got = append(got, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range got {
			if _, err := addEntry(tx, r.id, r.n, 0, now, e); err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, r.id); err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ?`, store.TaskStatusFor(store.StatusError, e.Code), Ms(now), Ms(now), r.task); err != nil {
				return err
			}
			out = append(out, store.RescueExpired{DeploymentID: r.id, TaskID: r.task, ServerID: r.server})
		}
		return nil
	})
	slices.SortFunc(out, func(a, b store.RescueExpired) int { return int(a.DeploymentID - b.DeploymentID) })
	return out, err
}

// The "booted" watch.

func (s *Store) WatchBoot(ctx context.Context, deploymentID int64, tokenHash []byte, now time.Time) error {
	return s.Write(ctx, func(tx *Tx) error {
		var id int64
		if err := tx.QueryRow(`SELECT id FROM deployments WHERE id = ?`, deploymentID).Scan(&id); err != nil {
			return s.notFound(err)
		}
		res, err := tx.Exec(`UPDATE boot_watch SET token_hash = ? WHERE deployment_id = ? AND booted_at = 0`, tokenHash, deploymentID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		_, err = tx.Exec(`INSERT INTO boot_watch (deployment_id, token_hash, created_at) VALUES (?, ?, ?) ON CONFLICT (deployment_id) DO NOTHING`, deploymentID, tokenHash, Ms(now))
		return err
	})
}

func (s *Store) MarkBooted(ctx context.Context, tokenHash []byte, now time.Time) (store.BootWatch, error) {
	var w store.BootWatch
	err := s.Write(ctx, func(tx *Tx) error {
		var created, booted, warned int64
		err := tx.QueryRow(`SELECT deployment_id, created_at, booted_at, warned_at FROM boot_watch WHERE token_hash = ?`+s.f.ForUpdate, tokenHash).Scan(&w.DeploymentID, &created, &booted, &warned)
		if err != nil {
			return s.notFound(err)
		}
		if booted != 0 {
			return store.ErrGone
		}
		var status string
		var ended, n int64
		var attempt int
		if err := tx.QueryRow(`SELECT status, ended_at, history_n, attempt FROM deployments WHERE id = ?`+s.f.ForUpdate, w.DeploymentID).Scan(&status, &ended, &n, &attempt); err != nil {
			return s.notFound(err)
		}
		if status != store.StatusDone {
			return store.ErrGone
		}
		if _, err := tx.Exec(`UPDATE boot_watch SET booted_at = ? WHERE deployment_id = ?`, Ms(now), w.DeploymentID); err != nil {
			return err
		}
		w.CreatedAt, w.BootedAt, w.WarnedAt, w.DoneAt = Tm(created), Tm(Ms(now)), Tm(warned), Tm(ended)
		n, err = addEntry(tx, w.DeploymentID, n, attempt, now, store.BootedEntry(now.Sub(Tm(ended)), now))
		if err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE deployments SET history_n = ? WHERE id = ?`, n, w.DeploymentID)
		return err
	})
	if err != nil {
		return store.BootWatch{}, err
	}
	return w, nil
}

func (s *Store) BootWatch(ctx context.Context, deploymentID int64) (store.BootWatch, error) {
	var w store.BootWatch
	var created, booted, warned, ended int64
	err := s.queryRow(ctx, `SELECT w.deployment_id, w.created_at, w.booted_at, w.warned_at, d.ended_at FROM boot_watch w JOIN deployments d ON d.id = w.deployment_id WHERE w.deployment_id = ?`, deploymentID).
		Scan(&w.DeploymentID, &created, &booted, &warned, &ended)
	if err != nil {
		return store.BootWatch{}, s.notFound(err)
	}
	w.CreatedAt, w.BootedAt, w.WarnedAt, w.DoneAt = Tm(created), Tm(booted), Tm(warned), Tm(ended)
	return w, nil
}

func (s *Store) ExpireBootWatch(ctx context.Context, now, cutoff time.Time, limit time.Duration) (int, error) {
	var count int
	e := store.NoSignOfLifeEntry(limit, now)
	err := s.Write(ctx, func(tx *Tx) error {
		count = 0
		rows, err := tx.Query(`UPDATE boot_watch SET warned_at = ? WHERE booted_at = 0 AND warned_at = 0 AND deployment_id IN
			(SELECT id FROM deployments WHERE status = 'done' AND ended_at < ?) RETURNING deployment_id`, Ms(now), Ms(cutoff))
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		slices.Sort(ids)
		for _, id := range ids {
			var n int64
			var attempt int
			if err := tx.QueryRow(`SELECT history_n, attempt FROM deployments WHERE id = ?`+s.f.ForUpdate, id).Scan(&n, &attempt); err != nil {
				return err
			}
			if _, err := addEntry(tx, id, n, attempt, now, e); err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, id); err != nil {
				return err
			}
			count++
		}
		return nil
	})
	return count, err
}

// Log tails of failed deployments.

func (s *Store) PutDeploymentLogs(ctx context.Context, serverID int64, l store.DeploymentLogs) error {
	return s.Write(ctx, func(tx *Tx) error {
		var id int64
		if err := tx.QueryRow(`SELECT id FROM deployments WHERE id = ? AND server_id = ?`, l.DeploymentID, serverID).Scan(&id); err != nil {
			return s.notFound(err)
		}
		if _, err := tx.Exec(`DELETE FROM deployment_logs WHERE deployment_id = ?`, l.DeploymentID); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO deployment_logs (deployment_id, attempt, kernel, agent, received_at) VALUES (?, ?, ?, ?, ?)`,
			l.DeploymentID, l.Attempt, l.Kernel, l.Agent, Ms(l.ReceivedAt))
		return err
	})
}

func (s *Store) DeploymentLogs(ctx context.Context, deploymentID int64) (store.DeploymentLogs, error) {
	var l store.DeploymentLogs
	var at int64
	err := s.queryRow(ctx, `SELECT deployment_id, attempt, kernel, agent, received_at FROM deployment_logs WHERE deployment_id = ?`, deploymentID).
		Scan(&l.DeploymentID, &l.Attempt, &l.Kernel, &l.Agent, &at)
	if err != nil {
		return store.DeploymentLogs{}, s.notFound(err)
	}
	l.ReceivedAt = Tm(at)
	return l, nil
}
