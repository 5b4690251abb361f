package pgstore

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/sqlstore"
	"github.com/byoi/byoi/job"
	"github.com/jackc/pgx/v5"
)

// Group commit of event batches.
const (
	// writers is the transactions of event batches in flight per
	// instance: two, so that a group waiting for its WAL flush (a final
	// event) does not hold up the progress of the others.
	writers  = 2
	maxGroup = 256 // batches in one transaction
	// groupLinger is how long a writer waits for more batches once it
	// has one.
	groupLinger = 2 * time.Millisecond
)

func (c *committer) start() {
	stopped := make(chan struct{}, writers)
	for range writers {
		go func() {
			defer func() { stopped <- struct{}{} }()
			c.writer()
		}()
	}
	go func() {
		for range writers {
			<-stopped
		}
		close(c.done)
	}()
}

// appendReq is one AppendEvents waiting for a writer.
type appendReq struct {
	a    store.Append
	ack  store.Ack
	err  error
	done chan struct{}
}

// AppendEvents queues a batch for a writer and waits for its group.
func (c *committer) AppendEvents(ctx context.Context, a store.Append) (store.Ack, error) {
	r := &appendReq{a: a, done: make(chan struct{})}
	select {
	case c.appends <- r:
	case <-ctx.Done():
		return store.Ack{}, ctx.Err()
	case <-c.quit:
		return store.Ack{}, errors.New("postgres: store closed")
	}
	// Wait for the commit even if ctx ends meanwhile: the answer must
	// match what the database holds.
	<-r.done
	return r.ack, r.err
}

// writer is one group committer: it takes every batch waiting (up to
// maxGroup) and stores them in one transaction.
func (c *committer) writer() {
	for {
		var group []*appendReq
		select {
		case <-c.quit:
			// Answer what is still queued: nothing was stored.
			for {
				select {
				case r := <-c.appends:
					r.err = errors.New("postgres: store closed")
					close(r.done)
				default:
					return
				}
			}
		case r := <-c.appends:
			group = sqlstore.Gather(c.appends, r, maxGroup, groupLinger)
		}
		err := c.appendGroup(group)
		if err != nil && len(group) > 1 {
			// One batch may have made the whole group fail (or two groups
			// deadlocked): each alone, so only the guilty one fails.
			for _, r := range group {
				r.ack, r.err = store.Ack{}, nil
				if err := c.appendGroup([]*appendReq{r}); err != nil {
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
	serverID, taskID    int64
	p                   store.Progress
	lastSeen, updatedAt int64
	touched             bool
	end                 *store.End
	endAt               time.Time
}

// appendGroup stores a group of event batches in one transaction of two
// round trips: (1) BEGIN, lock the servers of the batches that end a
// deployment, lock and read every deployment, in id order; (2) insert
// every new event in one statement, update every deployment in one
// statement, end the deployments a final event ended, COMMIT. Each
// batch's answer (or refusal) is set on its request; the error returned
// is the group's, when the transaction failed.
func (c *committer) appendGroup(group []*appendReq) error {
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

	conn, err := c.pool.Acquire(ctx)
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
	b.Queue(`SELECT id, server_id, status, step, message, attempt, last_seq, bytes_done, bytes_total, event_time, history_n, task_id, last_seen, updated_at
		FROM deployments WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id, eventTime int64
			var step string
			d := &depl{}
			if err := rows.Scan(&id, &d.serverID, &d.p.Status, &step, &d.p.Message, &d.p.Attempt, &d.p.LastSeq, &d.p.BytesDone, &d.p.BytesTotal, &eventTime, &d.p.HistoryN, &d.taskID, &d.lastSeen, &d.updatedAt); err != nil {
				return err
			}
			d.p.Step, d.p.EventTime = job.Step(step), sqlstore.Tm(eventTime)
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
		ap, err := store.ApplyBatch(d.p, a)
		r.ack, r.err = ap.Ack, err
		if err != nil || !ap.Seen {
			continue
		}
		for _, e := range ap.New {
			ev.depl, ev.n, ev.attempt, ev.seq = append(ev.depl, a.DeploymentID), append(ev.n, e.N), append(ev.attempt, int32(e.Attempt)), append(ev.seq, e.Seq)
			ev.source, ev.t, ev.rcv = append(ev.source, e.Source), append(ev.t, e.Time.UnixMilli()), append(ev.rcv, sqlstore.Ms(e.Received))
			ev.status, ev.step, ev.kind, ev.code, ev.msg = append(ev.status, string(e.Status)), append(ev.step, string(e.Step)), append(ev.kind, string(e.Kind)), append(ev.code, string(e.Code)), append(ev.msg, e.Message)
			ev.done, ev.total, ev.rate = append(ev.done, e.BytesDone), append(ev.total, e.BytesTotal), append(ev.rate, e.Rate)
		}
		d.touched = true
		d.lastSeen = sqlstore.Ms(a.Now)
		if len(ap.New) == 0 {
			continue // a heartbeat, or only events already stored
		}
		d.p, d.updatedAt = ap.Progress, sqlstore.Ms(a.Now)
		if ap.End != nil {
			d.end, d.endAt = ap.End, a.Now
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
		u.id, u.lastSeq, u.bytesDone, u.bytesTot = append(u.id, id), append(u.lastSeq, d.p.LastSeq), append(u.bytesDone, d.p.BytesDone), append(u.bytesTot, d.p.BytesTotal)
		u.eventTime, u.historyN, u.lastSeen, u.updatedAt = append(u.eventTime, sqlstore.Ms(d.p.EventTime)), append(u.historyN, d.p.HistoryN), append(u.lastSeen, d.lastSeen), append(u.updatedAt, d.updatedAt)
		u.step, u.message = append(u.step, string(d.p.Step)), append(u.message, d.p.Message)
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
		if d := state[id]; d != nil && d.end != nil {
			for _, st := range sqlstore.EndStatements(id, d.taskID, d.serverID, *d.end, d.endAt) {
				b.Queue(sqlstore.Rebind(st.Query), st.Args...)
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
