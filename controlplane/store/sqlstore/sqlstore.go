// Package sqlstore is the control plane's one SQL layer: every
// store.Store method, written once over database/sql, for a dialect that
// supplies only what must differ (dex's storage/sql "flavors" are the
// model):
//
//   - a Flavor: the placeholders ($1 or ?), the row-lock clauses, how its
//     driver says "unique violation" and "foreign key violation", the
//     migrations' text and lock;
//   - a Committer: the commit path. SQLite has one writer connection and
//     group-commits every write; PostgreSQL runs each write in its own
//     transaction on a pool and group-commits event batches in two round
//     trips of its own.
//
// The deployment's state machine is not here either: the rules are plain
// functions of package store (store.ApplyBatch, store.OpenAttemptRule,
// store.FinalEnd); this package reads rows, asks them, and writes what
// they say.
//
// Lock order (PostgreSQL; SQLite's single writer needs none): servers'
// rows before deployments' rows, each set in ascending id order.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/migrations"
	"github.com/byoi/byoi/controlplane/store/tokencache"
)

// Flavor is what differs between the SQL databases in text and errors.
type Flavor struct {
	Name       string // in errors: "sqlite", "postgres"
	Migrations migrations.Dialect
	// Dollar: placeholders are $1, $2, ... (queries are written with ?).
	Dollar bool
	// ForUpdate is appended to a SELECT in a write that must lock the rows
	// it reads ("" where the single writer is the lock).
	ForUpdate string
	// SkipLocked is appended to the silence sweep's inner SELECT: rows
	// another transaction holds are skipped ("" with a single writer).
	SkipLocked string
	// MigrateLock, when not empty, is run first in the migration
	// transaction (serializing instances that start together).
	MigrateLock string
	// PrepareReads: reads use statements prepared once per connection
	// (the driver prepares every statement otherwise).
	PrepareReads bool
	// IsUnique and IsForeignKey classify the driver's errors.
	IsUnique, IsForeignKey func(error) bool
}

// TxFunc is one write, run inside a transaction of the commit path.
type TxFunc func(tx *Tx) error

// Committer is a dialect's commit path.
type Committer interface {
	// Write runs fn in a write transaction. durable: fn's effects are on
	// disk (not only committed) when Write returns nil. refusesFirst: fn
	// returns a store refusal (not found, gone, stale) only before it has
	// written anything.
	Write(ctx context.Context, durable, refusesFirst bool, fn TxFunc) error
	// AppendEvents stores one event batch (store.Store.AppendEvents).
	AppendEvents(ctx context.Context, a store.Append) (store.Ack, error)
	// Close stops the commit path (what is queued is answered).
	Close() error
}

// Store is a store.Store over database/sql.
type Store struct {
	f      Flavor
	r      *sql.DB // reads
	c      Committer
	tokens *tokencache.Cache
	// queries: ?-query → the flavor's text; reads: query → statement
	// prepared on r (PrepareReads).
	queries sync.Map
	reads   sync.Map
	// writes: the hot writes' statements prepared once on the single
	// writer connection (Options.PrepareWrite), by query; read-only after
	// New.
	writes    map[string]*sql.Stmt
	closers   []func() error
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Options are the optional parts of New.
type Options struct {
	// PrepareWrite prepares a write statement on the connection the
	// committer's transactions run on. New prepares the hot path's
	// statements (HotWrites) with it before the committer runs its first
	// transaction (a single connection cannot prepare while its
	// transaction is open); every other write is prepared by the driver
	// with its query. nil: none.
	PrepareWrite func(q string) (*sql.Stmt, error)
	// Close is called by Close after the committer stopped (the
	// dialect's connections).
	Close []func() error
}

// New returns the store reading on r and writing through c (which must
// not have run a write yet when o.PrepareWrite is set).
func New(f Flavor, r *sql.DB, c Committer, o Options) (*Store, error) {
	s := &Store{f: f, r: r, c: c, tokens: tokencache.New(tokencache.TTL), writes: map[string]*sql.Stmt{}, closers: o.Close}
	if o.PrepareWrite != nil {
		for _, q := range s.hotWrites() {
			st, err := o.PrepareWrite(s.Q(q))
			if err != nil {
				return nil, fmt.Errorf("%s: prepare: %w", f.Name, err)
			}
			s.writes[q] = st
		}
	}
	return s, nil
}

// Flavor is the store's flavor.
func (s *Store) Flavor() Flavor { return s.f }

// Close stops the commit path and closes the connections; a second Close
// does nothing.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.c.Close()
		for _, c := range s.closers {
			s.closeErr = errors.Join(s.closeErr, c())
		}
	})
	return s.closeErr
}

// Q is query q in the flavor's placeholders (memoized: queries are
// constants).
func (s *Store) Q(q string) string {
	if !s.f.Dollar {
		return q
	}
	if v, ok := s.queries.Load(q); ok {
		return v.(string)
	}
	out := Rebind(q)
	s.queries.Store(q, out)
	return out
}

// Rebind turns the ? placeholders of q into $1, $2, ... (outside quoted
// strings and identifiers).
func Rebind(q string) string {
	var b strings.Builder
	n := 0
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Write runs fn through the commit path (durable, answered once on disk).
func (s *Store) Write(ctx context.Context, fn TxFunc) error {
	return s.c.Write(ctx, true, false, fn)
}

// Tx is a write transaction in the store's flavor.
type Tx struct {
	Ctx context.Context
	Tx  *sql.Tx
	s   *Store
}

// NewTx wraps tx (a committer's transaction) for TxFuncs.
func (s *Store) NewTx(ctx context.Context, tx *sql.Tx) *Tx { return &Tx{Ctx: ctx, Tx: tx, s: s} }

func (t *Tx) stmt(q string) (*sql.Stmt, bool) {
	st, ok := t.s.writes[q]
	if !ok {
		return nil, false
	}
	return t.Tx.StmtContext(t.Ctx, st), true
}

// Exec runs a statement (q with ?).
func (t *Tx) Exec(q string, args ...any) (sql.Result, error) {
	if st, ok := t.stmt(q); ok {
		return st.ExecContext(t.Ctx, args...)
	}
	return t.Tx.ExecContext(t.Ctx, t.s.Q(q), args...)
}

// QueryRow runs a query returning one row.
func (t *Tx) QueryRow(q string, args ...any) *sql.Row {
	if st, ok := t.stmt(q); ok {
		return st.QueryRowContext(t.Ctx, args...)
	}
	return t.Tx.QueryRowContext(t.Ctx, t.s.Q(q), args...)
}

// Query runs a query returning rows.
func (t *Tx) Query(q string, args ...any) (*sql.Rows, error) {
	if st, ok := t.stmt(q); ok {
		return st.QueryContext(t.Ctx, args...)
	}
	return t.Tx.QueryContext(t.Ctx, t.s.Q(q), args...)
}

// readStmt is q prepared on the readers (once per connection).
func (s *Store) readStmt(q string) (*sql.Stmt, error) {
	if st, ok := s.reads.Load(q); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.r.Prepare(s.Q(q))
	if err != nil {
		return nil, err
	}
	if old, loaded := s.reads.LoadOrStore(q, st); loaded {
		st.Close()
		return old.(*sql.Stmt), nil
	}
	return st, nil
}

// queryRow runs a read returning one row. A statement that cannot be
// prepared (a closed store) is run unprepared, so that its error comes
// back from Scan.
func (s *Store) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	if s.f.PrepareReads {
		if st, err := s.readStmt(q); err == nil {
			return st.QueryRowContext(ctx, args...)
		}
	}
	return s.r.QueryRowContext(ctx, s.Q(q), args...)
}

// query runs a read returning rows.
func (s *Store) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if s.f.PrepareReads {
		st, err := s.readStmt(q)
		if err != nil {
			return nil, err
		}
		return st.QueryContext(ctx, args...)
	}
	return s.r.QueryContext(ctx, s.Q(q), args...)
}

// Migrate applies the migrations db lacks, in one transaction, and
// records them in schema_migrations.
func Migrate(ctx context.Context, db *sql.DB, f Flavor) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: migrate: %w", f.Name, err)
	}
	defer tx.Rollback()
	q := func(s string) string {
		if f.Dollar {
			return Rebind(s)
		}
		return s
	}
	if f.MigrateLock != "" {
		if _, err := tx.ExecContext(ctx, f.MigrateLock); err != nil {
			return fmt.Errorf("%s: migrate: %w", f.Name, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("%s: migrate: %w", f.Name, err)
	}
	var have int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("%s: migrate: %w", f.Name, err)
	}
	if have > migrations.Latest() {
		return fmt.Errorf("%s: database schema version %d is newer than this program's %d", f.Name, have, migrations.Latest())
	}
	for v := have + 1; v <= migrations.Latest(); v++ {
		if _, err := tx.ExecContext(ctx, migrations.Steps[v].SQL(f.Migrations)); err != nil {
			return fmt.Errorf("%s: migration %d: %w", f.Name, v, err)
		}
		if _, err := tx.ExecContext(ctx, q(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`), v, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("%s: migration %d: %w", f.Name, v, err)
		}
	}
	return tx.Commit()
}

// SchemaVersion is the applied schema version.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.queryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// Ms is a time as stored: Unix milliseconds, 0 for the zero time.
func Ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// Tm is a stored time back (UTC), the zero time for 0.
func Tm(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// notFound maps "no row" and a missing parent row (a foreign key) to
// store.ErrNotFound.
func (s *Store) notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) || err != nil && s.f.IsForeignKey(err) {
		return store.ErrNotFound
	}
	return err
}

// IsRefusal reports whether err is one of the store's answers rather than
// a failure of the database.
func IsRefusal(err error) bool {
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrGone) || errors.Is(err, store.ErrStaleAttempt) || errors.Is(err, store.ErrExists)
}

type scanner interface{ Scan(...any) error }

// Gather is a group committer's group: first, and what else arrives on ch
// within linger of it, up to max in all. A commit costs about the same
// for one write or a hundred (SQLite rewrites the pages it changed and
// every reader drops its page cache; PostgreSQL's round trips), so a
// moment's wait for more pays.
func Gather[T any](ch <-chan T, first T, max int, linger time.Duration) []T {
	group := []T{first}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(group) < max {
		select {
		case r := <-ch:
			group = append(group, r)
		case <-t.C:
			return group
		}
	}
	return group
}

// Query runs a read returning rows (q with ?), for a dialect's own reads.
func (s *Store) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return s.query(ctx, q, args...)
}
