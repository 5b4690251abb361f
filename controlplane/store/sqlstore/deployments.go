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

// Deployments: the customer's side, the agent's side and the silence
// sweep.

const deploymentCols = `d.id, d.server_id, s.name, d.task_id, d.shape, d.checksum, d.status, d.code, d.message, d.attempt, d.last_seq, d.step, d.bytes_done, d.bytes_total, d.cleared, d.created_at, d.updated_at, d.ended_at, d.last_seen, d.max_attempts`
const deploymentFrom = ` FROM deployments d JOIN servers s ON s.id = d.server_id `

func (s *Store) scanDeployment(row scanner, extra ...any) (store.Deployment, error) {
	var d store.Deployment
	var shape, cleared int
	var code, step string
	var created, updated, ended, seen int64
	dest := []any{&d.ID, &d.ServerID, &d.ServerName, &d.TaskID, &shape, &d.Checksum, &d.Status, &code, &d.Message, &d.Attempt, &d.LastSeq, &step, &d.BytesDone, &d.BytesTotal, &cleared, &created, &updated, &ended, &seen, &d.MaxAttempts}
	if err := row.Scan(append(dest, extra...)...); err != nil {
		return store.Deployment{}, s.notFound(err)
	}
	d.Shape, d.Code, d.Step, d.Cleared = job.Shape(shape), job.Code(code), job.Step(step), cleared != 0
	d.CreatedAt, d.UpdatedAt, d.EndedAt, d.LastSeen = Tm(created), Tm(updated), Tm(ended), Tm(seen)
	return d, nil
}

// InsertEvent is the statement storing one history entry.
const InsertEvent = `INSERT INTO events (deployment_id, n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// EventArgs are InsertEvent's arguments for entry e of deployment id.
func EventArgs(id int64, e store.Entry) []any {
	return []any{id, e.N, e.Attempt, e.Seq, e.Source, e.Time.UnixMilli(), Ms(e.Received), string(e.Status), string(e.Step), string(e.Kind), string(e.Code), e.Message, e.BytesDone, e.BytesTotal, e.Rate}
}

// addEntry appends a control plane entry to the history of deployment id,
// whose last position was n (the caller holds the deployment's lock); it
// returns the new position.
func addEntry(tx *Tx, id, n int64, attempt int, now time.Time, e job.Event) (int64, error) {
	n++
	_, err := tx.Exec(InsertEvent, EventArgs(id, store.Entry{N: n, Attempt: attempt, Source: store.SourceControlPlane, Received: now, Event: e})...)
	return n, err
}

// runningTask is the task of the server's running deployment.
func (s *Store) runningTask(tx *Tx, serverID int64) (store.Task, error) {
	var tk store.Task
	var sd, lu, dd int64
	err := tx.QueryRow(`SELECT t.id, t.server_id, t.deployment_id, t.function, t.status, t.start_date, t.last_update, t.done_date FROM deployments d JOIN tasks t ON t.id = d.task_id WHERE d.server_id = ? AND d.status = 'doing'`, serverID).
		Scan(&tk.ID, &tk.ServerID, &tk.DeploymentID, &tk.Function, &tk.Status, &sd, &lu, &dd)
	tk.StartDate, tk.LastUpdate, tk.DoneDate = Tm(sd), Tm(lu), Tm(dd)
	return tk, err
}

func (s *Store) CreateDeployment(ctx context.Context, nd store.NewDeployment) (store.Deployment, store.Task, error) {
	defer s.tokens.Forget(nd.ServerID) // boot, EFI path
	var d store.Deployment
	var t store.Task
	now := Ms(nd.Now)
	err := s.Write(ctx, func(tx *Tx) error {
		// The server's row lock serializes deployments of one server
		// across every instance: after it, what we read is the latest.
		// The partial unique index (one running deployment per server)
		// stays the last word.
		var name string
		if err := tx.QueryRow(`SELECT name FROM servers WHERE id = ?`+s.f.ForUpdate, nd.ServerID).Scan(&name); err != nil {
			return s.notFound(err)
		}
		tk, err := s.runningTask(tx, nd.ServerID)
		if err == nil {
			return &store.TaskRunningError{Task: tk, Server: name}
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var id int64
		if err := tx.QueryRow(`INSERT INTO deployments (server_id, shape, job_sealed, checksum, status, message, created_at, updated_at, max_attempts) VALUES (?, ?, ?, ?, 'doing', ?, ?, ?, ?) RETURNING id`,
			nd.ServerID, int(nd.Shape), nd.SealedJob, nd.Checksum, job.Text(job.MsgStarting), now, now, nd.MaxAttempts).Scan(&id); err != nil {
			return err // a unique violation here would mean the lock failed: an error, not a refusal
		}
		var taskID int64
		if err := tx.QueryRow(`INSERT INTO tasks (server_id, deployment_id, function, status, start_date, last_update) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
			nd.ServerID, id, store.FunctionReinstall, store.TaskInit, now, now).Scan(&taskID); err != nil {
			return err
		}
		n, err := addEntry(tx, id, 0, 0, nd.Now, store.CreatedEntry(nd.Now))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE deployments SET task_id = ?, history_n = ? WHERE id = ?`, taskID, n, id); err != nil {
			return err
		}
		if nd.EFIBootloaderPath != "" {
			_, err = tx.Exec(`UPDATE servers SET boot_id = ?, efi_bootloader_path = ?, `+ArmRescue+` WHERE id = ?`, store.BootRescue, nd.EFIBootloaderPath, nd.ServerID)
		} else {
			_, err = tx.Exec(`UPDATE servers SET boot_id = ?, `+ArmRescue+` WHERE id = ?`, store.BootRescue, nd.ServerID)
		}
		if err != nil {
			return err
		}
		if d, err = s.scanDeployment(tx.QueryRow(`SELECT `+deploymentCols+deploymentFrom+`WHERE d.id = ?`, id)); err != nil {
			return err
		}
		t = store.Task{ID: taskID, ServerID: nd.ServerID, DeploymentID: id, Function: store.FunctionReinstall, Status: store.TaskInit, StartDate: Tm(now), LastUpdate: Tm(now)}
		return nil
	})
	if err != nil {
		return store.Deployment{}, store.Task{}, err
	}
	return d, t, nil
}

func (s *Store) CurrentDeployment(ctx context.Context, serverID int64) (store.Deployment, error) {
	return s.scanDeployment(s.queryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = ? AND d.cleared = 0 ORDER BY d.id DESC LIMIT 1`, serverID))
}

func (s *Store) Deployment(ctx context.Context, serverID, id int64) (store.Deployment, error) {
	return s.scanDeployment(s.queryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = ? AND d.id = ?`, serverID, id))
}

func (s *Store) Deployments(ctx context.Context, serverID int64, limit int) ([]store.Deployment, error) {
	rows, err := s.query(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = ? ORDER BY d.id DESC LIMIT ?`, serverID, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.Deployment{}
	for rows.Next() {
		d, err := s.scanDeployment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// EndStatement is one statement of ending a deployment.
type EndStatement struct {
	Query string
	Args  []any
}

// EndStatements are the statements that end running deployment id as e
// says, its task, and set the server's boot (done: the harddisk, and the
// time from which a TokenByNetboot token expires). The condition status =
// 'doing' makes the transition happen once. The caller holds the
// server's and the deployment's locks.
func EndStatements(id, taskID, serverID int64, e store.End, now time.Time) []EndStatement {
	out := []EndStatement{
		{`UPDATE deployments SET status = ?, code = ?, message = ?, ended_at = ?, updated_at = ? WHERE id = ? AND status = 'doing'`, []any{e.Status, string(e.Code), e.Message, Ms(now), Ms(now), id}},
		{`UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ?`, []any{store.TaskStatusFor(e.Status, e.Code), Ms(now), Ms(now), taskID}},
	}
	if e.BootID != 0 {
		out = append(out, EndStatement{`UPDATE servers SET boot_id = ?, token_done_at = ? WHERE id = ?`, []any{e.BootID, Ms(now), serverID}})
	}
	return out
}

func execAll(tx *Tx, stmts []EndStatement) error {
	for _, st := range stmts {
		if _, err := tx.Exec(st.Query, st.Args...); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) ClearDeployments(ctx context.Context, serverID int64, now time.Time) (int64, error) {
	defer s.tokens.Forget(serverID)
	var cancelled int64
	err := s.Write(ctx, func(tx *Tx) error {
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM servers WHERE id = ?`+s.f.ForUpdate, serverID).Scan(&one); err != nil {
			return s.notFound(err)
		}
		var id, taskID, n int64
		var attempt int
		err := tx.QueryRow(`SELECT id, task_id, history_n, attempt FROM deployments WHERE server_id = ? AND status = 'doing'`+s.f.ForUpdate, serverID).Scan(&id, &taskID, &n, &attempt)
		switch {
		case err == nil:
			e := store.CancelledEntry(now)
			if _, err := addEntry(tx, id, n, attempt, now, e); err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, id); err != nil {
				return err
			}
			if err := execAll(tx, EndStatements(id, taskID, serverID, store.End{Status: store.StatusCancelled, Code: e.Code, Message: e.Message}, now)); err != nil {
				return err
			}
			cancelled = id
		case errors.Is(err, sql.ErrNoRows):
		default:
			return err
		}
		res, err := tx.Exec(`UPDATE deployments SET cleared = 1 WHERE server_id = ? AND cleared = 0`, serverID)
		if err != nil {
			return err
		}
		if k, err := res.RowsAffected(); err != nil {
			return err
		} else if k == 0 {
			return store.ErrNotFound
		}
		_, err = tx.Exec(`UPDATE servers SET boot_id = ?, `+ArmRescue+` WHERE id = ?`, store.BootRescue, serverID)
		return err
	})
	return cancelled, err
}

func (s *Store) Task(ctx context.Context, serverID, taskID int64) (store.Task, error) {
	var t store.Task
	var sd, lu, dd int64
	err := s.queryRow(ctx, `SELECT id, server_id, deployment_id, function, status, start_date, last_update, done_date FROM tasks WHERE server_id = ? AND id = ?`, serverID, taskID).
		Scan(&t.ID, &t.ServerID, &t.DeploymentID, &t.Function, &t.Status, &sd, &lu, &dd)
	if err != nil {
		return store.Task{}, s.notFound(err)
	}
	t.StartDate, t.LastUpdate, t.DoneDate = Tm(sd), Tm(lu), Tm(dd)
	return t, nil
}

func (s *Store) History(ctx context.Context, deploymentID, after int64, limit int) ([]store.Entry, error) {
	rows, err := s.query(ctx, `SELECT n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate FROM events WHERE deployment_id = ? AND n > ? ORDER BY n LIMIT ?`, deploymentID, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.Entry{}
	for rows.Next() {
		var e store.Entry
		var t, rcv int64
		var status, step, kind, code string
		if err := rows.Scan(&e.N, &e.Attempt, &e.Seq, &e.Source, &t, &rcv, &status, &step, &kind, &code, &e.Message, &e.BytesDone, &e.BytesTotal, &e.Rate); err != nil {
			return nil, err
		}
		e.Time, e.Received = time.UnixMilli(t).UTC(), Tm(rcv)
		e.Status, e.Step, e.Kind, e.Code = job.Status(status), job.Step(step), job.Kind(kind), job.Code(code)
		out = append(out, e)
	}
	return out, rows.Err()
}

// The agent's side.

func (s *Store) RunningDeployment(ctx context.Context, serverID int64) (store.Deployment, []byte, error) {
	var sealed []byte
	d, err := s.scanDeployment(s.queryRow(ctx, `SELECT `+deploymentCols+`, d.job_sealed`+deploymentFrom+`WHERE d.server_id = ? AND d.status = 'doing'`, serverID), &sealed)
	if err != nil {
		return store.Deployment{}, nil, err
	}
	return d, sealed, nil
}

func (s *Store) OpenAttempt(ctx context.Context, serverID, deploymentID int64, now time.Time) (int, error) {
	defer s.tokens.Forget(serverID) // armed
	var attempt int
	var refused error // a refusal whose writes must stay (the write returns nil)
	err := s.Write(ctx, func(tx *Tx) error {
		refused = nil // a group that failed runs its writes again
		var status string
		var n, taskID int64
		var had, max int
		if err := tx.QueryRow(`SELECT status, attempt, history_n, task_id, max_attempts FROM deployments WHERE id = ? AND server_id = ?`+s.f.ForUpdate, deploymentID, serverID).Scan(&status, &had, &n, &taskID, &max); err != nil {
			return s.notFound(err)
		}
		o, err := store.OpenAttemptRule(status, had, max, now)
		if err != nil {
			return err
		}
		if o.Exhausted != nil {
			if _, err := addEntry(tx, deploymentID, n, had, now, *o.Exhausted); err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, deploymentID); err != nil {
				return err
			}
			e := o.Exhausted
			if err := execAll(tx, EndStatements(deploymentID, taskID, serverID, store.End{Status: store.StatusError, Code: e.Code, Message: e.Message}, now)); err != nil {
				return err
			}
			refused = &store.AttemptsExhaustedError{Attempts: max}
			return nil
		}
		attempt = o.Attempt
		if o.Restarted != nil {
			if n, err = addEntry(tx, deploymentID, n, attempt, now, *o.Restarted); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(`UPDATE deployments SET attempt = ?, last_seq = 0, step = '', bytes_done = 0, bytes_total = 0, event_time = 0, history_n = ?, message = ?, last_seen = ?, updated_at = ? WHERE id = ?`,
			attempt, n, o.Message, Ms(now), Ms(now), deploymentID); err != nil {
			return err
		}
		// The rescue a customer's request armed network boot for is
		// there: a later script mints no token.
		if _, err := tx.Exec(`UPDATE servers SET boot_armed = 0 WHERE id = ? AND boot_armed = 1`, serverID); err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE tasks SET status = ?, last_update = ? WHERE id = ?`, store.TaskDoing, Ms(now), taskID)
		return err
	})
	if err == nil && refused != nil {
		return 0, refused
	}
	return attempt, err
}

// AppendEvents stores a batch through the committer's path for events.
func (s *Store) AppendEvents(ctx context.Context, a store.Append) (store.Ack, error) {
	ack, err := s.c.AppendEvents(ctx, a)
	if ack.Done {
		s.tokens.Forget(a.ServerID) // boot
	}
	return ack, err
}

// Statements of AppendTx (prepared once on a single writer).
const (
	selProgress = `SELECT status, attempt, last_seq, step, bytes_done, bytes_total, event_time, history_n, message, task_id FROM deployments WHERE id = ? AND server_id = ?`
	updProgress = `UPDATE deployments SET last_seq = ?, step = ?, bytes_done = ?, bytes_total = ?, event_time = ?, history_n = ?, message = ?, last_seen = ?, updated_at = ? WHERE id = ?`
	updSeen     = `UPDATE deployments SET last_seen = ? WHERE id = ?`
)

// hotWrites are the statements of AppendTx, the write of every event
// batch, in the flavor's text: prepared once where the commit path has a
// single connection.
func (s *Store) hotWrites() []string {
	return []string{selProgress + s.f.ForUpdate, InsertEvent, updProgress, updSeen}
}

// AppendTx is AppendEvents for one batch inside tx (a commit path that
// stores batches one by one): read the deployment (locked), apply
// store.ApplyBatch, write what it says.
func (s *Store) AppendTx(tx *Tx, a store.Append) (store.Ack, error) {
	var p store.Progress
	var step string
	var eventTime, taskID int64
	if err := tx.QueryRow(selProgress+s.f.ForUpdate, a.DeploymentID, a.ServerID).
		Scan(&p.Status, &p.Attempt, &p.LastSeq, &step, &p.BytesDone, &p.BytesTotal, &eventTime, &p.HistoryN, &p.Message, &taskID); err != nil {
		return store.Ack{}, s.notFound(err)
	}
	p.Step, p.EventTime = job.Step(step), Tm(eventTime)
	ap, err := store.ApplyBatch(p, a)
	if err != nil || !ap.Seen {
		return ap.Ack, err
	}
	for _, e := range ap.New {
		if _, err := tx.Exec(InsertEvent, EventArgs(a.DeploymentID, e)...); err != nil {
			return store.Ack{}, err
		}
	}
	if len(ap.New) == 0 {
		_, err := tx.Exec(updSeen, Ms(a.Now), a.DeploymentID)
		return ap.Ack, err
	}
	q := ap.Progress
	if _, err := tx.Exec(updProgress, q.LastSeq, string(q.Step), q.BytesDone, q.BytesTotal, Ms(q.EventTime), q.HistoryN, q.Message, Ms(a.Now), Ms(a.Now), a.DeploymentID); err != nil {
		return store.Ack{}, err
	}
	if ap.End != nil {
		if err := execAll(tx, EndStatements(a.DeploymentID, taskID, a.ServerID, *ap.End, a.Now)); err != nil {
			return store.Ack{}, err
		}
	}
	return ap.Ack, nil
}

func (s *Store) ExpireSilent(ctx context.Context, now, silentCutoff, pickupCutoff time.Time, silentFor, pickupFor time.Duration) ([]store.Expired, error) {
	var out []store.Expired
	err := s.Write(ctx, func(tx *Tx) error {
		out = out[:0]
		expire := func(cond string, cutoff time.Time, e job.Event) error {
			// The conditional UPDATE decides: of several instances, the
			// first to commit fails each deployment; the others find it
			// no longer running (PostgreSQL: or locked by a batch being
			// stored, which is alive, and skip it).
			rows, err := tx.Query(`UPDATE deployments SET status = 'error', code = ?, message = ?, ended_at = ?, updated_at = ?
				WHERE status = 'doing' AND id IN (SELECT id FROM deployments WHERE status = 'doing' AND `+cond+s.f.SkipLocked+`)
				RETURNING id, task_id, server_id, history_n, attempt`, string(e.Code), e.Message, Ms(now), Ms(now), Ms(cutoff))
			if err != nil {
				return err
			}
			type row struct {
				id, task, server, n int64
				attempt             int
			}
			var got []row
			for rows.Next() {
				var r row
				if err := rows.Scan(&r.id, &r.task, &r.server, &r.n, &r.attempt); err != nil {
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
				if _, err := addEntry(tx, r.id, r.n, r.attempt, now, e); err != nil {
					return err
				}
				if _, err := tx.Exec(`UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, r.id); err != nil {
					return err
				}
				if _, err := tx.Exec(`UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ?`, store.TaskStatusFor(store.StatusError, e.Code), Ms(now), Ms(now), r.task); err != nil {
					return err
				}
				out = append(out, store.Expired{DeploymentID: r.id, TaskID: r.task, ServerID: r.server})
			}
			return nil
		}
		if err := expire(`attempt > 0 AND last_seen < ?`, silentCutoff, store.SilentEntry(silentFor, now)); err != nil {
			return err
		}
		if !pickupCutoff.IsZero() {
			if err := expire(`attempt = 0 AND created_at < ?`, pickupCutoff, store.PickupEntry(pickupFor, now)); err != nil {
				return err
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b store.Expired) int { return int(a.DeploymentID - b.DeploymentID) })
	return out, err
}
