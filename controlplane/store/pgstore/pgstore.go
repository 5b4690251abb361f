// Package pgstore is the PostgreSQL dialect of the control plane's store
// (github.com/jackc/pgx/v5: pure Go, so byoi-api stays a static binary),
// for several byoi-api instances sharing one database. The SQL is package
// sqlstore's (over pgx's database/sql driver, on the same pool); this
// package holds what only PostgreSQL needs: the pool, the flavor ($N
// placeholders, FOR UPDATE, SKIP LOCKED, its error codes, the migrations'
// advisory lock), retrying a transaction the database chose as a deadlock
// victim, and the group commit of event batches in two round trips.
//
// Every rule that must hold across instances is the database's, never an
// instance's memory:
//
//   - one running deployment per server: CreateDeployment locks the
//     server's row (SELECT ... FOR UPDATE) before looking for a running
//     deployment, and the partial unique index stays as the last word;
//   - ids (customers, servers, deployments, tasks) are identity columns,
//     history positions a counter in the deployment's row, moved under its
//     row lock;
//   - transitions are conditional updates under row locks; the silence
//     sweep takes the rows it fails with FOR UPDATE SKIP LOCKED, so of two
//     instances sweeping at once each deployment is failed by one.
//
// Lock order, so that no two transactions wait on each other in a cycle:
// servers' rows before deployments' rows, each set in ascending id order.
//
// Durability: an instance answers only after PostgreSQL committed, so a
// killed instance (kill -9) loses nothing it acknowledged. Progress event
// batches commit with synchronous_commit=off: committed and visible to
// every instance at once, but the WAL flush is left to the WAL writer
// (a crash of PostgreSQL itself, not of byoi-api, may lose the last ~0.6
// s of progress, which the agent's next events supersede). Every other
// transaction — a deployment's life (created, attempt opened, final
// event, cancelled, expired), the admin writes — commits with
// synchronous_commit=on: the final event is on disk before the agent is
// told and reboots.
//
// Event batches are group-committed: a few writer goroutines per instance
// each take every batch waiting and store them in one transaction of two
// round trips (lock and read the deployments; insert all events, update
// all deployments, commit), so the database's work per event is small.
package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/migrations"
	"github.com/byoi/byoi/controlplane/store/sqlstore"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// Store is a store.Store on a PostgreSQL database.
type Store struct {
	*sqlstore.Store
}

// migrationLock is the advisory lock key serializing migrations of
// instances starting at once ("byoimigr").
const migrationLock = 0x62796f696d696772

// Flavor is PostgreSQL's SQL.
var Flavor = sqlstore.Flavor{
	Name:         "postgres",
	Migrations:   migrations.Postgres,
	Dollar:       true,
	ForUpdate:    " FOR UPDATE",
	SkipLocked:   " ORDER BY id FOR UPDATE SKIP LOCKED",
	MigrateLock:  fmt.Sprintf(`SELECT pg_advisory_xact_lock(%d)`, int64(migrationLock)),
	IsUnique:     func(err error) bool { return pgCode(err) == "23505" },
	IsForeignKey: func(err error) bool { return pgCode(err) == "23503" },
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// IsDSN reports whether s names a PostgreSQL database (a postgres:// or
// postgresql:// URL) rather than a SQLite file.
func IsDSN(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// Open connects to the database at dsn (postgres://user@host/db?...;
// pool_max_conns sets the pool size, 16 by default: at 10,000 agents on
// two instances, 32 gave a worse p99 than 16) and applies the migrations
// it lacks.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = 16
	}
	cfg.MaxConnIdleTime = 5 * time.Minute
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	// database/sql over the same pool: each statement borrows a pooled
	// connection (and its statement cache) and gives it back.
	db := stdlib.OpenDBFromPool(pool)
	if err := sqlstore.Migrate(ctx, db, Flavor); err != nil {
		db.Close()
		pool.Close()
		return nil, err
	}
	c := &committer{db: db, pool: pool, appends: make(chan *appendReq, maxGroup), quit: make(chan struct{}), done: make(chan struct{})}
	ss, err := sqlstore.New(Flavor, db, c, sqlstore.Options{Close: []func() error{db.Close, func() error { pool.Close(); return nil }}})
	if err != nil {
		db.Close()
		pool.Close()
		return nil, err
	}
	s := &Store{ss}
	c.s = ss
	c.start()
	return s, nil
}

// committer runs writes in their own transaction on the pool and
// group-commits event batches (append.go).
type committer struct {
	s       *sqlstore.Store
	db      *sql.DB
	pool    *pgxpool.Pool
	appends chan *appendReq
	quit    chan struct{}
	done    chan struct{}
}

// Write runs fn in a transaction committed with synchronous_commit=on
// (durable or not: the admin and lifecycle writes are few). A deadlock or
// serialization failure (the database's verdict between instances) is
// retried.
func (c *committer) Write(ctx context.Context, durable, refusesFirst bool, fn sqlstore.TxFunc) error {
	for try := 0; ; try++ {
		err := c.once(ctx, fn)
		if code := pgCode(err); (code == "40P01" || code == "40001") && try < 3 {
			continue
		}
		return err
	}
}

func (c *committer) once(ctx context.Context, fn sqlstore.TxFunc) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(c.s.NewTx(ctx, tx)); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Close stops the writers (what is queued is answered).
func (c *committer) Close() error {
	close(c.quit)
	<-c.done
	return nil
}

var _ store.Store = (*Store)(nil)
