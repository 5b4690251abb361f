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
// Durability: every group commits with synchronous=NORMAL (in WAL mode:
// in the WAL, in the kernel's page cache, no fsync), so a killed process
// (kill -9 of byoi-api) loses nothing it acknowledged. Writes that change
// a deployment's life (created, attempt opened, final event, cancelled,
// expired) and the admin writes must also survive a power loss: they are
// answered only after a syncer goroutine has fsynced the WAL past their
// commit (syncer, which says why that is safe), while the writer goes on
// with the next group. Progress events are not waited for: a power loss
// may lose the last ones, which the agent's next events supersede.
//
// Why not SQLite's own synchronous=FULL for the groups holding a durable
// write: SQLite then fsyncs inside COMMIT, on the single writer, and every
// write queued behind waits for the disk. Measured with bench-api.sh
// (1,000 servers, 60 s, on the shared 2-core development machine while
// its disk took ~11 ms an fsync): agent events p50 316 ms, p99 4.4 s with
// FULL on the writer; p50 7.8 ms, p99 202 ms with the fsync beside it,
// in the run just after.
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
	"path/filepath"
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
	gc := &committer{path: path, w: w, c: c, syncq: make(chan []*writeReq, 64), appends: make(chan *writeReq, maxGroup), quit: make(chan struct{}), done: make(chan struct{}), stmts: map[string]*sql.Stmt{}}
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
	synced, checkpointed := make(chan struct{}), make(chan struct{})
	go func() {
		gc.appender()
		close(gc.syncq)
		<-synced
		<-checkpointed
		close(gc.done)
	}()
	go func() { defer close(synced); gc.syncer() }()
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
	path    string  // the database file; its WAL is path + "-wal"
	w       *sql.DB // the single writer connection
	c       *sql.DB // the checkpointer's connection
	appends chan *writeReq
	syncq   chan []*writeReq // committed durable writes, for the syncer
	quit    chan struct{}
	done    chan struct{}
	mu      sync.Mutex // stmts
	stmts   map[string]*sql.Stmt
}

// writeReq is one write waiting for the group committer.
type writeReq struct {
	ctx     context.Context
	fn      sqlstore.TxFunc
	durable bool // answered after an fsync of the WAL
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
// savepoint rolled back); durable: and the WAL holding it fsynced.
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
			group = sqlstore.Gather(g.appends, r, maxGroup, groupLinger)
		}
		if err := g.commitGroup(group, true); err != nil && len(group) > 1 {
			// A write failed in a way that spoiled the transaction: each
			// alone, so only the guilty one fails.
			for _, r := range group {
				r.err = nil
				g.commitGroup([]*writeReq{r}, false)
			}
		}
		var durable []*writeReq
		for _, r := range group {
			if r.durable && r.err == nil {
				durable = append(durable, r)
			} else {
				close(r.done)
			}
		}
		if len(durable) > 0 {
			g.syncq <- durable
		}
	}
}

// syncer answers the durable writes once the WAL holding their commit is
// on disk: one fsync for every group waiting, beside the writer.
//
// Why an fsync of the WAL from outside SQLite is safe with this driver's
// file layout: modernc.org/sqlite is SQLite's own C code (its unix VFS,
// no SQLITE_DISABLE_DIRSYNC, mmap_size 0), so the WAL is the file
// path+"-wal", written with pwrite by the writer connection before COMMIT
// returns; fsync(2) flushes an inode's dirty pages whichever descriptor
// wrote them. The file stays the same inode while the store is open: our
// connections keep it (SQLite deletes it only when the last connection
// closes; journal_size_limit is -1, so it is never truncated). A WAL
// restart rewrites it from the start only after a checkpoint has copied
// every frame into the database file, and at synchronous=NORMAL a
// checkpoint fsyncs the WAL before copying and the database file after:
// a commit overwritten by a restart is on disk in the database file. The
// directory entry of a new WAL is made durable once, when the syncer
// first opens it.
func (g *committer) syncer() {
	var wal *os.File
	defer func() {
		if wal != nil {
			wal.Close()
		}
	}()
	for batch := range g.syncq {
	more:
		for {
			select {
			case b, ok := <-g.syncq:
				if !ok {
					break more
				}
				batch = append(batch, b...)
			default:
				break more
			}
		}
		var err error
		if wal == nil {
			if wal, err = os.Open(g.path + "-wal"); err == nil {
				err = syncDir(filepath.Dir(g.path))
			}
		}
		if err == nil {
			err = wal.Sync()
		}
		if err != nil && wal != nil {
			wal.Close()
			wal = nil
		}
		for _, r := range batch {
			if err != nil {
				r.err = fmt.Errorf("sqlite: committed, but the WAL could not be synced: %w", err)
			}
			close(r.done)
		}
	}
}

// syncDir makes the directory's entries durable (a new file's name).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// commitGroup runs the group's writes in one transaction, each in its own
// savepoint unless it refuses before writing (shared says the group may
// skip them). Each write's result is set on it; the error returned is the
// transaction's, also set on every write that had none.
func (g *committer) commitGroup(group []*writeReq, shared bool) error {
	bg := context.Background()
	err := g.inTx(bg, func(tx *sql.Tx) error {
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
	if err != nil {
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
