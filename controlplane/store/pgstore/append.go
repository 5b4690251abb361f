package pgstore

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
	"github.com/jackc/pgx/v5"
)

// appendReq is one AppendEvents waiting for a writer.
type appendReq struct {
	a    store.Append
	ack  store.Ack
	err  error
	done chan struct{}
}

func (s *Store) AppendEvents(ctx context.Context, a store.Append) (store.Ack, error) {
	r := &appendReq{a: a, done: make(chan struct{})}
	select {
	case s.appends <- r:
	case <-ctx.Done():
		return store.Ack{}, ctx.Err()
	case <-s.quit:
		return store.Ack{}, errors.New("postgres: store closed")
	}
	// Wait for the commit even if ctx ends meanwhile: the answer must
	// match what the database holds.
	<-r.done
	if r.ack.Done {
		s.tokens.Forget(a.ServerID) // boot
	}
	return r.ack, r.err
}

// writer is one group committer: it takes every batch waiting (up to
// maxGroup) and stores them in one transaction.
func (s *Store) writer() {
	for {
		var group []*appendReq
		select {
		case <-s.quit:
			// Answer what is still queued: nothing was stored.
			for {
				select {
				case r := <-s.appends:
					r.err = errors.New("postgres: store closed")
					close(r.done)
				default:
					return
				}
			}
		case r := <-s.appends:
			group = append(group, r)
		}
		// Linger a moment for more: a group's cost in round trips and
		// statements is the same for one batch or a hundred.
		linger := time.NewTimer(groupLinger)
	more:
		for len(group) < maxGroup {
			select {
			case r := <-s.appends:
				group = append(group, r)
			case <-linger.C:
				break more
			}
		}
		linger.Stop()
		err := s.appendGroup(group)
		if err != nil && len(group) > 1 {
			// One batch may have made the whole group fail (or two groups
			// deadlocked): each alone, so only the guilty one fails.
			for _, r := range group {
				r.ack, r.err = store.Ack{}, nil
				if err := s.appendGroup([]*appendReq{r}); err != nil {
					r.err = err
				}
			}
		} else if err != nil {
			group[0].err = err
		}
		for _, r := range group {
			close(r.done)
		}
	}
}

// depl is a deployment's row as the group found it and moves it on.
type depl struct {
	serverID                     int64
	status, step, message, code  string
	attempt                      int
	lastSeq, bytesDone, bytesTot int64
	eventTime, historyN, taskID  int64
	lastSeen, updatedAt          int64
	touched, ended               bool
	endStatus, endMessage        string
	endCode                      job.Code
	endAt                        time.Time
	endBoot                      int64
}

// appendGroup stores a group of event batches in one transaction of two
// round trips: (1) BEGIN, lock the servers of the batches that end a
// deployment, lock and read every deployment, in id order; (2) insert
// every new event in one statement, update every deployment in one
// statement, end the deployments a final event ended, COMMIT. Each
// batch's answer (or refusal) is set on its request; the error returned
// is the group's, when the transaction failed.
func (s *Store) appendGroup(group []*appendReq) error {
	ctx := context.Background()
	var ids, finals []int64
	for _, r := range group {
		ids = append(ids, r.a.DeploymentID)
		if n := len(r.a.Events); n > 0 && r.a.Events[n-1].Final() {
			finals = append(finals, r.a.ServerID)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	slices.Sort(finals)
	finals = slices.Compact(finals)

	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	ok := false
	defer func() {
		if !ok {
			conn.Exec(ctx, "ROLLBACK")
		}
	}()

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if len(finals) == 0 {
		// Progress only: committed for every instance at once, flushed
		// by the WAL writer (see the package comment).
		b.Queue("SET LOCAL synchronous_commit = off")
	} else {
		b.Queue(`SELECT id FROM servers WHERE id = ANY($1) ORDER BY id FOR UPDATE`, finals)
	}
	state := make(map[int64]*depl, len(ids))
	b.Queue(`SELECT id, server_id, status, step, message, code, attempt, last_seq, bytes_done, bytes_total, event_time, history_n, task_id, last_seen, updated_at
		FROM deployments WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id int64
			d := &depl{}
			if err := rows.Scan(&id, &d.serverID, &d.status, &d.step, &d.message, &d.code, &d.attempt, &d.lastSeq, &d.bytesDone, &d.bytesTot, &d.eventTime, &d.historyN, &d.taskID, &d.lastSeen, &d.updatedAt); err != nil {
				return err
			}
			state[id] = d
		}
		return rows.Err()
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return err
	}

	// The events of every batch, column by column, for one INSERT.
	var ev struct {
		depl, n, seq, t, rcv, done, total []int64
		attempt                           []int32
		status, step, kind, code, msg     []string
		source                            []string
		rate                              []float64
	}
	for _, r := range group {
		a := r.a
		d, found := state[a.DeploymentID]
		if !found || d.serverID != a.ServerID {
			r.err = store.ErrNotFound
			continue
		}
		if d.status != store.StatusDoing {
			// A repeat of the batch that ended the deployment (its answer
			// was lost) is acknowledged again; anything else is gone.
			if (d.status == store.StatusDone || d.status == store.StatusError) && a.Attempt == d.attempt && len(a.Events) > 0 && a.Events[len(a.Events)-1].Seq <= d.lastSeq {
				r.ack = store.Ack{Seq: d.lastSeq, Done: true}
				continue
			}
			r.err = store.ErrGone
			continue
		}
		if a.Attempt != d.attempt {
			r.err = &store.StaleAttemptError{Got: a.Attempt, Current: d.attempt}
			continue
		}
		var last *job.Event
		prevStep, prevBytes, prevTime := job.Step(d.step), d.bytesDone, tm(d.eventTime)
		for i := range a.Events {
			e := a.Events[i]
			if e.Seq <= d.lastSeq {
				continue // already stored: a retry
			}
			rate := store.Rate(prevStep, prevBytes, prevTime, e)
			d.historyN++
			ev.depl, ev.n, ev.attempt, ev.seq = append(ev.depl, a.DeploymentID), append(ev.n, d.historyN), append(ev.attempt, int32(d.attempt)), append(ev.seq, e.Seq)
			ev.source, ev.t, ev.rcv = append(ev.source, store.SourceAgent), append(ev.t, e.Time.UnixMilli()), append(ev.rcv, ms(a.Now))
			ev.status, ev.step, ev.kind, ev.code, ev.msg = append(ev.status, string(e.Status)), append(ev.step, string(e.Step)), append(ev.kind, string(e.Kind)), append(ev.code, string(e.Code)), append(ev.msg, e.Message)
			ev.done, ev.total, ev.rate = append(ev.done, e.BytesDone), append(ev.total, e.BytesTotal), append(ev.rate, rate)
			d.lastSeq = e.Seq
			prevStep, prevBytes, prevTime = e.Step, e.BytesDone, e.Time
			last = &a.Events[i]
		}
		d.touched = true
		d.lastSeen = ms(a.Now)
		r.ack.Seq = d.lastSeq
		if last == nil {
			continue // a heartbeat, or only events already stored
		}
		d.step, d.bytesDone, d.bytesTot, d.eventTime = string(prevStep), prevBytes, last.BytesTotal, ms(prevTime)
		d.message, d.updatedAt = job.ProgressMessage(*last), ms(a.Now)
		if !last.Final() {
			continue
		}
		r.ack.Done = true
		d.ended, d.endAt = true, a.Now
		d.endCode = last.Code
		if last.Status == job.StatusDone {
			d.status, d.endStatus, d.endMessage, d.endBoot = store.StatusDone, store.StatusDone, job.ProgressMessage(*last), store.BootHarddisk
		} else {
			d.status, d.endStatus, d.endMessage, d.endBoot = store.StatusError, store.StatusError, last.Message, 0
		}
	}

	b = &pgx.Batch{}
	if len(ev.depl) > 0 {
		b.Queue(`INSERT INTO events (deployment_id, n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate)
			SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[], $14::bigint[], $15::float8[])`,
			ev.depl, ev.n, ev.attempt, ev.seq, ev.source, ev.t, ev.rcv, ev.status, ev.step, ev.kind, ev.code, ev.msg, ev.done, ev.total, ev.rate)
	}
	var u struct {
		id, lastSeq, bytesDone, bytesTot, eventTime, historyN, lastSeen, updatedAt []int64
		step, message                                                              []string
	}
	for _, id := range ids {
		d := state[id]
		if d == nil || !d.touched {
			continue
		}
		u.id, u.lastSeq, u.bytesDone, u.bytesTot = append(u.id, id), append(u.lastSeq, d.lastSeq), append(u.bytesDone, d.bytesDone), append(u.bytesTot, d.bytesTot)
		u.eventTime, u.historyN, u.lastSeen, u.updatedAt = append(u.eventTime, d.eventTime), append(u.historyN, d.historyN), append(u.lastSeen, d.lastSeen), append(u.updatedAt, d.updatedAt)
		u.step, u.message = append(u.step, d.step), append(u.message, d.message)
	}
	if len(u.id) > 0 {
		b.Queue(`UPDATE deployments d SET last_seq = u.last_seq, step = u.step, bytes_done = u.bytes_done, bytes_total = u.bytes_total, event_time = u.event_time,
				history_n = u.history_n, message = u.message, last_seen = u.last_seen, updated_at = u.updated_at
			FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[])
				AS u(id, last_seq, step, bytes_done, bytes_total, event_time, history_n, message, last_seen, updated_at)
			WHERE d.id = u.id`,
			u.id, u.lastSeq, u.step, u.bytesDone, u.bytesTot, u.eventTime, u.historyN, u.message, u.lastSeen, u.updatedAt)
	}
	for _, id := range ids {
		if d := state[id]; d != nil && d.ended {
			for _, st := range endStatements(id, d.taskID, d.serverID, d.endStatus, d.endCode, d.endMessage, d.endAt, d.endBoot) {
				b.Queue(st[0].(string), st[1:]...)
			}
		}
	}
	b.Queue("COMMIT")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	ok = true
	return nil
}
