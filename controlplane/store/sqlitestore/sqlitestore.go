// Package sqlitestore is the embedded SQLite dialect of the control
// plane's store (modernc.org/sqlite: pure Go, so byoi-api stays a static
// binary): the SQL is package sqlstore's; this package holds what only
// SQLite needs — the connections and their pragmas, the file, the group
// committer and the checkpointer.
//
// One database file in WAL mode: readers never wait for the writer. All
// writes go through a single connection (SQLite has one writer at a time
// anyway; one connection avoids lock upgrades and SQLITE_BUSY between our
// own goroutines) and each write transaction starts with BEGIN IMMEDIATE,
// so another process on the same file (a second byoi-api, the admin
// commands, byoi-load creating servers) waits on the busy timeout instead
// of failing a lock upgrade.
//
// Durability is SQLite's own: the writer commits with synchronous=NORMAL
// (in WAL mode: committed to the WAL in the kernel's page cache, no fsync)
// unless the group it commits holds a write that must survive a power
// loss; that group commits with synchronous=FULL (SQLite fsyncs the WAL
// at the commit, which covers every earlier commit too). A killed process
// (kill -9 of byoi-api) loses nothing it acknowledged either way. Writes
// that change a deployment's life (created, attempt opened, final event,
// cancelled, expired) and the admin writes are durable; progress events
// are not waited for: a power loss may lose the last ones, which the
// agent's next events supersede.
//
// Checkpoints (copying the WAL back into the database file, and its fsync)
// run on their own connection in the background, never inside the
// writer's commit (wal_autocheckpoint is off on the writer).
//
// Readers use statements prepared once per connection, and so does the
// writer; writes run with a background context on the writer (the
// request's context is checked before the write starts): modernc's
// cancellation watch costs a goroutine per statement, which the single
// writer cannot afford.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/migrations"
	"github.com/byoi/byoi/controlplane/store/sqlstore"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Store is a store.Store on one SQLite file.
type Store struct {
	*sqlstore.Store
}

// Flavor is SQLite's SQL: ? placeholders, no row locks (the single writer
// is the lock), its constraint error codes.
var Flavor = sqlstore.Flavor{
	Name:         "sqlite",
	Migrations:   migrations.SQLite,
	PrepareReads: true,
	IsUnique: func(err error) bool {
		c := code(err)
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	},
	IsForeignKey: func(err error) bool { return code(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY },
}

func code(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// Open opens (creating if needed, mode 0600) the database at path and
// applies the migrations it lacks.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("sqlite: database path %q is empty or holds '?'", path)
	}
	if err := create(ctx, path); err != nil {
		return nil, err
	}
	common := "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_pragma=temp_store(MEMORY)"
	w, err := sql.Open("sqlite", path+"?"+common+"&_pragma=wal_autocheckpoint(0)&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	// One connection, kept for ever: the synchronous setting the
	// committer tracks is this connection's.
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	r, err := sql.Open("sqlite", path+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, err
	}
	r.SetMaxOpenConns(8)
	r.SetMaxIdleConns(8)
	r.SetConnMaxIdleTime(0)
	c, err := sql.Open("sqlite", path+"?"+common)
	if err != nil {
		errors.Join(r.Close(), w.Close())
		return nil, err
	}
	c.SetMaxOpenConns(1)
	c.SetMaxIdleConns(1)
	c.SetConnMaxIdleTime(0)
	closeAll := func() { errors.Join(c.Close(), r.Close(), w.Close()) }
	if err := sqlstore.Migrate(ctx, w, Flavor); err != nil {
		closeAll()
		return nil, err
	}
	gc := &committer{w: w, c: c, appends: make(chan *writeReq, maxGroup), quit: make(chan struct{}), done: make(chan struct{}), stmts: map[string]*sql.Stmt{}}
	ss, err := sqlstore.New(Flavor, r, gc, sqlstore.Options{
		PrepareWrite: gc.prepare,
		Close:        []func() error{c.Close, r.Close, w.Close},
	})
	if err != nil {
		gc.closeStmts()
		closeAll()
		return nil, err
	}
	s := &Store{ss}
	gc.s = ss
	checkpointed := make(chan struct{})
	go func() {
		gc.appender()
		<-checkpointed
		close(gc.done)
	}()
	go func() { defer close(checkpointed); gc.checkpointer() }()
	return s, nil
}

// pageSize is the page size of a new database. A progress event rewrites
// a few small rows in different pages (its deployment's history, its
// deployment's summary), and each page changed is a frame of the WAL,
// written at commit and again at checkpoint: 1 KiB pages write a quarter
// of what 4 KiB pages do.
const pageSize = 1024

// create makes a new database file, mode 0600 (it holds the MAC addresses
// network boot trusts and the sealed secrets; SQLite gives its -wal and
// -shm files the database file's mode), with pageSize pages in WAL mode
// (the page size can be chosen only before the first page is written,
// and the driver applies its pragmas in alphabetical order: journal_mode
// first). An existing file is left as it is.
func create(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	f.Close()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, fmt.Sprintf("PRAGMA page_size = %d; PRAGMA journal_mode = WAL", pageSize))
	return err
}

// SchemaNames lists the schema's "table.column" and "index name" (explicit
// indexes), for comparing the dialects of the migrations.
func (s *Store) SchemaNames(ctx context.Context) ([]string, error) {
	rows, err := s.Store.Query(ctx, `SELECT m.name || '.' || p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'
		UNION ALL SELECT 'index ' || name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// The commit path.

// committer group-commits every write on the single writer connection:
// one goroutine takes every write waiting and runs them in one
// transaction.
type committer struct {
	s       *sqlstore.Store
	w       *sql.DB // the single writer connection
	c       *sql.DB // the checkpointer's connection
	appends chan *writeReq
	quit    chan struct{}
	done    chan struct{}
	// full: the writer connection is at synchronous=FULL (the appender
	// goroutine's alone); unknown after a failure, so set again.
	full, known bool
	mu          sync.Mutex // stmts
	stmts       map[string]*sql.Stmt
}

// writeReq is one write waiting for the group committer.
type writeReq struct {
	ctx     context.Context
	fn      sqlstore.TxFunc
	durable bool // committed with synchronous=FULL
	// refusesFirst: fn refuses (a store error: not found, gone, stale)
	// before it writes anything, so it needs no savepoint of its own.
	refusesFirst bool
	err          error
	done         chan struct{}
}

// maxGroup bounds the writes one transaction commits.
const maxGroup = 1024

// groupLinger is how long the writer waits for more writes once it has
// one.
const groupLinger = 5 * time.Millisecond

// checkpointEvery is how often the background checkpointer copies the
// WAL into the database file.
const checkpointEvery = time.Second

var errClosed = errors.New("sqlite: store closed")

// prepare is q prepared on the writer, once.
func (g *committer) prepare(q string) (*sql.Stmt, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st, ok := g.stmts[q]; ok {
		return st, nil
	}
	st, err := g.w.Prepare(q)
	if err != nil {
		return nil, err
	}
	g.stmts[q] = st
	return st, nil
}

// Write queues fn for the group committer, with a background context (see
// the package comment), and returns once its group is committed (or fn's
// savepoint rolled back); durable: committed with synchronous=FULL.
func (g *committer) Write(ctx context.Context, durable, refusesFirst bool, fn sqlstore.TxFunc) error {
	r := &writeReq{ctx: ctx, fn: fn, durable: durable, refusesFirst: refusesFirst, done: make(chan struct{})}
	select {
	case g.appends <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.quit:
		return errClosed
	}
	// Wait for the commit even if ctx ends meanwhile: the answer must
	// match what the database holds.
	select {
	case <-r.done:
		return r.err
	case <-g.done: // closed before our group ran
		select {
		case <-r.done:
			return r.err
		default:
			return errClosed
		}
	}
}

// AppendEvents stores a batch in the writer's group; a final event is on
// disk before it is acknowledged.
func (g *committer) AppendEvents(ctx context.Context, a store.Append) (store.Ack, error) {
	durable := len(a.Events) > 0 && a.Events[len(a.Events)-1].Final()
	var ack store.Ack
	err := g.Write(ctx, durable, true, func(tx *sqlstore.Tx) error {
		var err error
		ack, err = g.s.AppendTx(tx, a)
		return err
	})
	return ack, err
}

// Close stops the writer and the checkpointer.
func (g *committer) Close() error {
	close(g.quit)
	<-g.done
	g.closeStmts()
	return nil
}

func (g *committer) closeStmts() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, st := range g.stmts {
		st.Close()
	}
}

// appender is the group committer.
func (g *committer) appender() {
	for {
		var group []*writeReq
		select {
		case <-g.quit:
			return
		case r := <-g.appends:
			group = append(group, r)
		}
		// Linger a moment for more: every commit rewrites the pages it
		// changed and makes every reader drop its page cache, whatever
		// the group's size.
		linger := time.NewTimer(groupLinger)
	more:
		for len(group) < maxGroup {
			select {
			case r := <-g.appends:
				group = append(group, r)
			case <-linger.C:
				break more
			}
		}
		linger.Stop()
		if err := g.commitGroup(group, true); err != nil && len(group) > 1 {
			// A write failed in a way that spoiled the transaction: each
			// alone, so only the guilty one fails.
			for _, r := range group {
				r.err = nil
				g.commitGroup([]*writeReq{r}, false)
			}
		}
		for _, r := range group {
			close(r.done)
		}
	}
}

// setSync sets the writer's synchronous level for the next commit (SQLite
// refuses to change it inside a transaction).
func (g *committer) setSync(full bool) error {
	if g.known && g.full == full {
		return nil
	}
	level := "NORMAL"
	if full {
		level = "FULL"
	}
	if _, err := g.w.Exec(`PRAGMA synchronous = ` + level); err != nil {
		g.known = false
		return err
	}
	g.full, g.known = full, true
	return nil
}

// commitGroup runs the group's writes in one transaction, each in its own
// savepoint unless it refuses before writing (shared says the group may
// skip them), committed with synchronous=FULL when one of them is
// durable. Each write's result is set on it; the error returned is the
// transaction's, also set on every write that had none.
func (g *committer) commitGroup(group []*writeReq, shared bool) error {
	bg := context.Background()
	durable := false
	for _, r := range group {
		durable = durable || r.durable
	}
	err := g.setSync(durable)
	if err == nil {
		err = g.inTx(bg, func(tx *sql.Tx) error {
			t := g.s.NewTx(bg, tx)
			for _, r := range group {
				if r.err = r.ctx.Err(); r.err != nil {
					continue
				}
				if shared && r.refusesFirst {
					if r.err = r.fn(t); r.err != nil && !sqlstore.IsRefusal(r.err) {
						return r.err // it may have written part: the whole group again, one by one
					}
					continue
				}
				// In its own savepoint: a write that fails (a refusal, a
				// unique constraint) rolls back alone.
				if _, err := tx.Exec(`SAVEPOINT w`); err != nil {
					return err
				}
				if r.err = r.fn(t); r.err != nil {
					if _, err := tx.Exec(`ROLLBACK TO w`); err != nil {
						return err
					}
				}
				if _, err := tx.Exec(`RELEASE w`); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		g.known = false
		for _, r := range group {
			if r.err == nil || !sqlstore.IsRefusal(r.err) {
				r.err = err
			}
		}
	}
	return err
}

// inTx runs fn in one transaction on the writer connection.
func (g *committer) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := g.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// checkpointer copies the WAL into the database file now and then
// (PASSIVE: it never waits for readers or the writer), on its own
// connection, so that no commit of the writer carries a checkpoint.
func (g *committer) checkpointer() {
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-g.quit:
			return
		case <-t.C:
		}
		var busy, log, done int
		g.c.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done)
	}
}
