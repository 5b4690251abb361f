// Package sqlitestore is the embedded SQLite store of the control plane
// (modernc.org/sqlite: pure Go, so byoi-api stays a static binary).
//
// One database file in WAL mode: readers never wait for the writer. All
// writes go through a single connection (SQLite has one writer at a time
// anyway; one connection avoids lock upgrades and SQLITE_BUSY between our
// own goroutines) and each write transaction starts with BEGIN IMMEDIATE,
// so another process on the same file (a second byoi-api, byoi-load
// creating servers) waits on the busy timeout instead of failing a lock
// upgrade.
//
// Durability: the model is a killed process (kill -9 of byoi-api), which
// loses nothing it acknowledged: a transaction answered is committed, in
// the WAL, in the kernel's page cache. Every write is committed with
// synchronous=NORMAL, so the writer never waits for the disk. Writes that
// change a deployment's life (created, attempt opened, final event,
// cancelled, expired) and the admin writes must also survive a power
// loss: they are answered only after a syncer goroutine has fsynced the
// WAL past their commit (one fsync for every such write waiting, while
// the writer goes on with the next group). Progress events are not
// waited for: a power loss may lose the last ones, which the agent's next
// events supersede.
//
// Checkpoints (copying the WAL back into the database file, and its fsync)
// run on their own connection in the background, never inside the
// writer's commit (wal_autocheckpoint is off on the writer).
//
// Readers use statements prepared once per connection; writes run with
// a background context on the writer (the request's context is checked
// before the write starts): modernc's cancellation watch costs a
// goroutine per statement, which the single writer cannot afford.
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
	"github.com/byoi/byoi/controlplane/store/tokencache"
	"github.com/byoi/byoi/job"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Store is a store.Store on one SQLite file.
type Store struct {
	path string
	w    *sql.DB // the single writer connection
	r    *sql.DB // readers
	c    *sql.DB // the checkpointer's connection

	// Writes are group-committed: one writer goroutine takes every write
	// waiting and runs them in one transaction.
	appends chan *writeReq
	syncq   chan []*writeReq
	quit    chan struct{}
	done    chan struct{}
	st      stmts
	reads   sync.Map // query → *sql.Stmt prepared on r
	tokens  *tokencache.Cache
}

// stmts are the hot path's prepared statements (on the writer).
type stmts struct {
	selDepl, insEvent, updDepl, updSeen *sql.Stmt
}

// writeReq is one write waiting for the group committer.
type writeReq struct {
	ctx     context.Context
	fn      func(ctx context.Context, tx *sql.Tx) error
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

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path and applies the
// migrations it lacks.
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
	s := &Store{path: path, w: w, r: r, c: c, tokens: tokencache.New(tokencache.TTL)}
	closeAll := func() { errors.Join(c.Close(), r.Close(), w.Close()) }
	if err := s.migrate(ctx); err != nil {
		closeAll()
		return nil, err
	}
	for _, p := range []struct {
		dst **sql.Stmt
		q   string
	}{
		{&s.st.selDepl, `SELECT status, attempt, last_seq, step, bytes_done, event_time, history_n, task_id FROM deployments WHERE id = ? AND server_id = ?`},
		{&s.st.insEvent, `INSERT INTO events (deployment_id, n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&s.st.updDepl, `UPDATE deployments SET last_seq = ?, step = ?, bytes_done = ?, bytes_total = ?, event_time = ?, history_n = ?, message = ?, last_seen = ?, updated_at = ? WHERE id = ?`},
		{&s.st.updSeen, `UPDATE deployments SET last_seen = ? WHERE id = ?`},
	} {
		if *p.dst, err = w.PrepareContext(ctx, p.q); err != nil {
			closeAll()
			return nil, err
		}
	}
	s.appends, s.syncq = make(chan *writeReq, maxGroup), make(chan []*writeReq, 64)
	s.quit, s.done = make(chan struct{}), make(chan struct{})
	synced, checkpointed := make(chan struct{}), make(chan struct{})
	go func() {
		s.appender()
		close(s.syncq)
		<-synced
		<-checkpointed
		close(s.done)
	}()
	go func() { defer close(synced); s.syncer() }()
	go func() { defer close(checkpointed); s.checkpointer() }()
	return s, nil
}

// pageSize is the page size of a new database. A progress event rewrites
// a few small rows in different pages (its deployment's history, its
// deployment's summary), and each page changed is a frame of the WAL,
// written at commit and again at checkpoint: 1 KiB pages write a quarter
// of what 4 KiB pages do.
const pageSize = 1024

// create makes a new database file with pageSize pages in WAL mode (the
// page size can be chosen only before the first page is written, and the
// driver applies its pragmas in alphabetical order: journal_mode first).
// An existing file is left as it is.
func create(ctx context.Context, path string) error {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, fmt.Sprintf("PRAGMA page_size = %d; PRAGMA journal_mode = WAL", pageSize))
	return err
}

// Close stops the writer, the syncer and the checkpointer and closes the
// database.
func (s *Store) Close() error {
	close(s.quit)
	<-s.done
	return errors.Join(s.c.Close(), s.r.Close(), s.w.Close())
}

// appender is the group committer.
func (s *Store) appender() {
	for {
		var group []*writeReq
		select {
		case <-s.quit:
			return
		case r := <-s.appends:
			group = append(group, r)
		}
		// Linger a moment for more: every commit rewrites the pages it
		// changed and makes every reader drop its page cache, whatever
		// the group's size.
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
		if err := s.commitGroup(group, true); err != nil && len(group) > 1 {
			// A write failed in a way that spoiled the transaction: each
			// alone, so only the guilty one fails.
			for _, r := range group {
				r.err = nil
				s.commitGroup([]*writeReq{r}, false)
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
			s.syncq <- durable
		}
	}
}

// commitGroup runs the group's writes in one transaction, each in its own
// savepoint unless it refuses before writing (shared says the group may
// skip them). Each write's result is set on it; the error returned is the
// transaction's, also set on every write that had none.
func (s *Store) commitGroup(group []*writeReq, shared bool) error {
	bg := context.Background()
	err := s.txOnWriter(bg, func(tx *sql.Tx) error {
		for _, r := range group {
			if r.err = r.ctx.Err(); r.err != nil {
				continue
			}
			if shared && r.refusesFirst {
				if r.err = r.fn(bg, tx); r.err != nil && !isRefusal(r.err) {
					return r.err // it may have written part: the whole group again, one by one
				}
				continue
			}
			// In its own savepoint: a write that fails (a refusal, a
			// unique constraint) rolls back alone.
			if _, err := tx.Exec(`SAVEPOINT w`); err != nil {
				return err
			}
			if r.err = r.fn(bg, tx); r.err != nil {
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
			if r.err == nil || !isRefusal(r.err) {
				r.err = err
			}
		}
	}
	return err
}

// isRefusal reports whether err is one of the store's answers rather than
// a failure of the database.
func isRefusal(err error) bool {
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrGone) || errors.Is(err, store.ErrStaleAttempt) || errors.Is(err, store.ErrExists)
}

// syncer answers the durable writes once the WAL holding their commit is
// on disk: one fsync for every group waiting.
func (s *Store) syncer() {
	var wal *os.File
	defer func() {
		if wal != nil {
			wal.Close()
		}
	}()
	for batch := range s.syncq {
	more:
		for {
			select {
			case b, ok := <-s.syncq:
				if !ok {
					break more
				}
				batch = append(batch, b...)
			default:
				break more
			}
		}
		// fsync flushes the file's dirty pages whichever descriptor wrote
		// them: the commits written by the writer connection included.
		var err error
		if wal == nil {
			wal, err = os.Open(s.path + "-wal")
		}
		if err == nil {
			if err = wal.Sync(); err != nil {
				wal.Close()
				wal = nil
			}
		}
		for _, r := range batch {
			if err != nil {
				r.err = fmt.Errorf("sqlite: committed, but the WAL could not be synced: %w", err)
			}
			close(r.done)
		}
	}
}

// checkpointer copies the WAL into the database file now and then
// (PASSIVE: it never waits for readers or the writer), on its own
// connection, so that no commit of the writer carries a checkpoint.
func (s *Store) checkpointer() {
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		var busy, log, done int
		s.c.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done)
	}
}

// stmt is query prepared on the readers (once per connection).
func (s *Store) stmt(q string) (*sql.Stmt, error) {
	if st, ok := s.reads.Load(q); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.r.Prepare(q)
	if err != nil {
		return nil, err
	}
	if old, loaded := s.reads.LoadOrStore(q, st); loaded {
		st.Close()
		return old.(*sql.Stmt), nil
	}
	return st, nil
}

// queryRow runs a read (a prepared statement on the readers).
func (s *Store) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := s.stmt(q)
	if err != nil {
		return s.queryRow(ctx, q, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// query runs a read returning rows.
func (s *Store) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	var have int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	if have > migrations.Latest() {
		return fmt.Errorf("sqlite: database schema version %d is newer than this program's %d", have, migrations.Latest())
	}
	for v := have + 1; v <= migrations.Latest(); v++ {
		if _, err := tx.ExecContext(ctx, migrations.Steps[v].SQL(migrations.SQLite)); err != nil {
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
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

// SchemaNames lists the schema's "table.column" and "index name" (explicit
// indexes), for comparing the dialects of the migrations.
func (s *Store) SchemaNames(ctx context.Context) ([]string, error) {
	rows, err := s.query(ctx, `SELECT m.name || '.' || p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'
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

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func tm(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	return err
}

// write runs fn in a durable write transaction (answered once on disk).
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.writeTx(ctx, true, false, fn)
}

// writeTx runs fn through the group committer, with a background context
// (see the package comment); the answer waits for an fsync of the WAL
// when durable. It returns once the group is committed (or fn's savepoint
// rolled back).
func (s *Store) writeTx(ctx context.Context, durable, refusesFirst bool, fn func(ctx context.Context, tx *sql.Tx) error) error {
	r := &writeReq{ctx: ctx, fn: fn, durable: durable, refusesFirst: refusesFirst, done: make(chan struct{})}
	select {
	case s.appends <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.quit:
		return errors.New("sqlite: store closed")
	}
	// Wait for the commit even if ctx ends meanwhile: the answer must
	// match what the database holds.
	select {
	case <-r.done:
		return r.err
	case <-s.done: // closed before our group ran
		select {
		case <-r.done:
			return r.err
		default:
			return errors.New("sqlite: store closed")
		}
	}
}

// txOnWriter runs fn in one transaction on the writer connection.
func (s *Store) txOnWriter(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Customers and credentials.

func (s *Store) CreateCustomer(ctx context.Context, name string, now time.Time) (store.Customer, error) {
	c := store.Customer{Name: name, CreatedAt: tm(ms(now))}
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO customers (name, created_at) VALUES (?, ?) RETURNING id`, name, ms(now)).Scan(&c.ID)
	})
	if isUnique(err) {
		return store.Customer{}, store.ErrExists
	}
	return c, err
}

func (s *Store) scanCustomer(row *sql.Row) (store.Customer, error) {
	var c store.Customer
	var at int64
	if err := row.Scan(&c.ID, &c.Name, &at); err != nil {
		return store.Customer{}, notFound(err)
	}
	c.CreatedAt = tm(at)
	return c, nil
}

func (s *Store) CustomerByName(ctx context.Context, name string) (store.Customer, error) {
	return s.scanCustomer(s.queryRow(ctx, `SELECT id, name, created_at FROM customers WHERE name = ?`, name))
}

func (s *Store) Customer(ctx context.Context, id int64) (store.Customer, error) {
	return s.scanCustomer(s.queryRow(ctx, `SELECT id, name, created_at FROM customers WHERE id = ?`, id))
}

func (s *Store) CreateCredential(ctx context.Context, c store.Credential) (store.Credential, error) {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO credentials (customer_id, app_key, app_secret_sealed, consumer_key_hash, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id`,
			c.CustomerID, c.AppKey, c.SealedSecret, c.ConsumerKeyHash, ms(c.CreatedAt)).Scan(&c.ID)
	})
	if isUnique(err) {
		return store.Credential{}, store.ErrExists
	}
	if err != nil {
		return store.Credential{}, notFound(err)
	}
	return c, nil
}

func (s *Store) CredentialByAppKey(ctx context.Context, appKey string) (store.Credential, error) {
	var c store.Credential
	var at int64
	err := s.queryRow(ctx, `SELECT id, customer_id, app_key, app_secret_sealed, consumer_key_hash, created_at FROM credentials WHERE app_key = ?`, appKey).
		Scan(&c.ID, &c.CustomerID, &c.AppKey, &c.SealedSecret, &c.ConsumerKeyHash, &at)
	if err != nil {
		return store.Credential{}, notFound(err)
	}
	c.CreatedAt = tm(at)
	return c, nil
}

func (s *Store) CreateAccessToken(ctx context.Context, customerID int64, tokenHash []byte, now time.Time) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO access_tokens (customer_id, token_hash, created_at) VALUES (?, ?, ?)`, customerID, tokenHash, ms(now))
		return err
	})
	if isUnique(err) {
		return store.ErrExists
	}
	return err
}

func (s *Store) CustomerByAccessToken(ctx context.Context, tokenHash []byte) (store.Customer, error) {
	return s.scanCustomer(s.queryRow(ctx, `SELECT c.id, c.name, c.created_at FROM access_tokens t JOIN customers c ON c.id = t.customer_id WHERE t.token_hash = ?`, tokenHash))
}

// Control Panel sessions.

func (s *Store) CreateSession(ctx context.Context, se store.Session) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at <= ?`, ms(se.CreatedAt)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO sessions (id_hash, customer_id, created_at, expires_at) VALUES (?, ?, ?, ?)`, se.IDHash, se.CustomerID, ms(se.CreatedAt), ms(se.ExpiresAt))
		return err
	})
	if isUnique(err) {
		return store.ErrExists
	}
	return err
}

func (s *Store) SessionByHash(ctx context.Context, idHash []byte, now time.Time) (store.Session, error) {
	var se store.Session
	var created, expires int64
	err := s.queryRow(ctx, `SELECT id_hash, customer_id, created_at, expires_at FROM sessions WHERE id_hash = ? AND expires_at > ?`, idHash, ms(now)).
		Scan(&se.IDHash, &se.CustomerID, &created, &expires)
	if err != nil {
		return store.Session{}, notFound(err)
	}
	se.CreatedAt, se.ExpiresAt = tm(created), tm(expires)
	return se, nil
}

func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	return s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE id_hash = ?`, idHash)
		return err
	})
}

// Servers.

const serverCols = `id, customer_id, name, mac, boot_id, efi_bootloader_path, inventory, inventory_at, created_at, props`

type scanner interface{ Scan(...any) error }

func scanServer(row scanner) (store.Server, error) {
	var sv store.Server
	var invAt, at int64
	if err := row.Scan(&sv.ID, &sv.CustomerID, &sv.Name, &sv.MAC, &sv.BootID, &sv.EFIBootloaderPath, &sv.Inventory, &invAt, &at, &sv.Props); err != nil {
		return store.Server{}, notFound(err)
	}
	sv.InventoryAt, sv.CreatedAt = tm(invAt), tm(at)
	return sv, nil
}

func (s *Store) CreateServer(ctx context.Context, sv store.Server, agentTokenHash []byte) (store.Server, error) {
	if sv.BootID == 0 {
		sv.BootID = store.BootRescue
	}
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO servers (customer_id, name, mac, agent_token_hash, boot_id, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
			sv.CustomerID, sv.Name, sv.MAC, agentTokenHash, sv.BootID, ms(sv.CreatedAt)).Scan(&sv.ID)
	})
	if isUnique(err) {
		return store.Server{}, store.ErrExists
	}
	if err != nil {
		return store.Server{}, err
	}
	sv.CreatedAt = tm(ms(sv.CreatedAt))
	return sv, nil
}

// exec1 runs one update that must change one row; durable or not.
func (s *Store) exec1(ctx context.Context, durable bool, q string, args ...any) error {
	return s.writeTx(ctx, durable, false, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			if isUnique(err) {
				return store.ErrExists
			}
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
}

func (s *Store) SetAgentToken(ctx context.Context, serverID int64, hash []byte) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET agent_token_hash = ? WHERE id = ?`, hash, serverID)
}

func (s *Store) ServerByName(ctx context.Context, name string) (store.Server, error) {
	return scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE name = ?`, name))
}

// ServerByAgentToken answers from the token cache when it can (see
// package tokencache).
func (s *Store) ServerByAgentToken(ctx context.Context, hash []byte) (store.Server, error) {
	now := time.Now()
	sv, gen, ok := s.tokens.Get(hash, now)
	if ok {
		return sv, nil
	}
	sv, err := scanServer(s.queryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE agent_token_hash = ?`, hash))
	if err == nil {
		s.tokens.Put(hash, sv, now, gen)
	}
	return sv, err
}

func (s *Store) ListServers(ctx context.Context, customerID int64) ([]store.Server, error) {
	rows, err := s.query(ctx, `SELECT `+serverCols+` FROM servers WHERE customer_id = ? ORDER BY name`, customerID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.Server{}
	for rows.Next() {
		sv, err := scanServer(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sv)
	}
	return out, rows.Err()
}

func (s *Store) SetBoot(ctx context.Context, serverID, bootID int64) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET boot_id = ? WHERE id = ?`, bootID, serverID)
}

func (s *Store) SetEFIBootloaderPath(ctx context.Context, serverID int64, path string) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, true, `UPDATE servers SET efi_bootloader_path = ? WHERE id = ?`, path, serverID)
}

func (s *Store) PutInventory(ctx context.Context, serverID int64, inv []byte, now time.Time) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, false, `UPDATE servers SET inventory = ?, inventory_at = ? WHERE id = ?`, inv, ms(now), serverID)
}

// Deployments.

const deploymentCols = `d.id, d.server_id, s.name, d.task_id, d.shape, d.checksum, d.status, d.code, d.message, d.attempt, d.last_seq, d.step, d.bytes_done, d.bytes_total, d.cleared, d.created_at, d.updated_at, d.ended_at, d.last_seen`
const deploymentFrom = ` FROM deployments d JOIN servers s ON s.id = d.server_id `

func scanDeployment(row scanner, extra ...any) (store.Deployment, error) {
	var d store.Deployment
	var shape int
	var code, step string
	var cleared int
	var created, updated, ended, seen int64
	dest := []any{&d.ID, &d.ServerID, &d.ServerName, &d.TaskID, &shape, &d.Checksum, &d.Status, &code, &d.Message, &d.Attempt, &d.LastSeq, &step, &d.BytesDone, &d.BytesTotal, &cleared, &created, &updated, &ended, &seen}
	if err := row.Scan(append(dest, extra...)...); err != nil {
		return store.Deployment{}, notFound(err)
	}
	d.Shape, d.Code, d.Step, d.Cleared = job.Shape(shape), job.Code(code), job.Step(step), cleared != 0
	d.CreatedAt, d.UpdatedAt, d.EndedAt, d.LastSeen = tm(created), tm(updated), tm(ended), tm(seen)
	return d, nil
}

// addEntry appends a history entry of deployment id, whose last position
// was n; it returns the new position.
func addEntry(ctx context.Context, tx *sql.Tx, id, n int64, attempt int, seq int64, source string, now time.Time, rate float64, e job.Event) (int64, error) {
	n++
	_, err := tx.ExecContext(ctx, `INSERT INTO events (deployment_id, n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		id, n, attempt, seq, source, e.Time.UnixMilli(), ms(now), string(e.Status), string(e.Step), string(e.Kind), string(e.Code), e.Message, e.BytesDone, e.BytesTotal, rate)
	return n, err
}

func (s *Store) CreateDeployment(ctx context.Context, nd store.NewDeployment) (store.Deployment, store.Task, error) {
	defer s.tokens.Forget(nd.ServerID) // boot, EFI path
	var d store.Deployment
	var t store.Task
	now := ms(nd.Now)
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var name string
		if err := tx.QueryRowContext(ctx, `SELECT name FROM servers WHERE id = ?`, nd.ServerID).Scan(&name); err != nil {
			return notFound(err)
		}
		var id int64
		err := tx.QueryRowContext(ctx, `INSERT INTO deployments (server_id, shape, job_sealed, checksum, status, message, created_at, updated_at) VALUES (?, ?, ?, ?, 'doing', ?, ?, ?) RETURNING id`,
			nd.ServerID, int(nd.Shape), nd.SealedJob, nd.Checksum, job.Text(job.MsgStarting), now, now).Scan(&id)
		if isUnique(err) {
			// The partial unique index refused a second running
			// deployment: report the running one's task.
			var tk store.Task
			var sd, lu, dd int64
			if err := tx.QueryRowContext(ctx, `SELECT t.id, t.server_id, t.deployment_id, t.function, t.status, t.start_date, t.last_update, t.done_date FROM deployments d JOIN tasks t ON t.id = d.task_id WHERE d.server_id = ? AND d.status = 'doing'`, nd.ServerID).
				Scan(&tk.ID, &tk.ServerID, &tk.DeploymentID, &tk.Function, &tk.Status, &sd, &lu, &dd); err != nil {
				return err
			}
			tk.StartDate, tk.LastUpdate, tk.DoneDate = tm(sd), tm(lu), tm(dd)
			return &store.TaskRunningError{Task: tk, Server: name}
		}
		if err != nil {
			return err
		}
		var taskID int64
		if err := tx.QueryRowContext(ctx, `INSERT INTO tasks (server_id, deployment_id, function, status, start_date, last_update) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
			nd.ServerID, id, store.FunctionReinstall, store.TaskInit, now, now).Scan(&taskID); err != nil {
			return err
		}
		n, err := addEntry(ctx, tx, id, 0, 0, 0, store.SourceControlPlane, nd.Now, 0, store.CreatedEntry(nd.Now))
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deployments SET task_id = ?, history_n = ? WHERE id = ?`, taskID, n, id); err != nil {
			return err
		}
		q := `UPDATE servers SET boot_id = ? WHERE id = ?`
		args := []any{store.BootRescue, nd.ServerID}
		if nd.EFIBootloaderPath != "" {
			q = `UPDATE servers SET boot_id = ?, efi_bootloader_path = ? WHERE id = ?`
			args = []any{store.BootRescue, nd.EFIBootloaderPath, nd.ServerID}
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return err
		}
		d, err = scanDeployment(tx.QueryRowContext(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.id = ?`, id))
		if err != nil {
			return err
		}
		t = store.Task{ID: taskID, ServerID: nd.ServerID, DeploymentID: id, Function: store.FunctionReinstall, Status: store.TaskInit, StartDate: tm(now), LastUpdate: tm(now)}
		return nil
	})
	if err != nil {
		return store.Deployment{}, store.Task{}, err
	}
	return d, t, nil
}

func (s *Store) CurrentDeployment(ctx context.Context, serverID int64) (store.Deployment, error) {
	return scanDeployment(s.queryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = ? AND d.cleared = 0 ORDER BY d.id DESC LIMIT 1`, serverID))
}

func (s *Store) Deployment(ctx context.Context, serverID, id int64) (store.Deployment, error) {
	return scanDeployment(s.queryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = ? AND d.id = ?`, serverID, id))
}

func (s *Store) Deployments(ctx context.Context, serverID int64, limit int) ([]store.Deployment, error) {
	rows, err := s.query(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = ? ORDER BY d.id DESC LIMIT ?`, serverID, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.Deployment{}
	for rows.Next() {
		d, err := scanDeployment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// endDeployment ends running deployment id (status, code, message), its
// task, and sets the server's boot when bootID is not 0. The condition
// status = 'doing' makes the transition happen once.
func endDeployment(ctx context.Context, tx *sql.Tx, id, taskID, serverID int64, status string, code job.Code, message string, now time.Time, bootID int64) (bool, error) {
	res, err := tx.ExecContext(ctx, `UPDATE deployments SET status = ?, code = ?, message = ?, ended_at = ?, updated_at = ? WHERE id = ? AND status = 'doing'`,
		status, string(code), message, ms(now), ms(now), id)
	if err != nil {
		return false, err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ?`, store.TaskStatusFor(status, code), ms(now), ms(now), taskID); err != nil {
		return false, err
	}
	if bootID != 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE servers SET boot_id = ? WHERE id = ?`, bootID, serverID); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (s *Store) ClearDeployments(ctx context.Context, serverID int64, now time.Time) (int64, error) {
	defer s.tokens.Forget(serverID)
	var cancelled int64
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var id, taskID, n int64
		var attempt int
		err := tx.QueryRowContext(ctx, `SELECT id, task_id, history_n, attempt FROM deployments WHERE server_id = ? AND status = 'doing'`, serverID).Scan(&id, &taskID, &n, &attempt)
		switch {
		case err == nil:
			e := store.CancelledEntry(now)
			if _, err := addEntry(ctx, tx, id, n, attempt, 0, store.SourceControlPlane, now, 0, e); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, id); err != nil {
				return err
			}
			if _, err := endDeployment(ctx, tx, id, taskID, serverID, store.StatusCancelled, e.Code, e.Message, now, 0); err != nil {
				return err
			}
			cancelled = id
		case errors.Is(err, sql.ErrNoRows):
		default:
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE deployments SET cleared = 1 WHERE server_id = ? AND cleared = 0`, serverID)
		if err != nil {
			return err
		}
		if k, err := res.RowsAffected(); err != nil {
			return err
		} else if k == 0 {
			return store.ErrNotFound
		}
		_, err = tx.ExecContext(ctx, `UPDATE servers SET boot_id = ? WHERE id = ?`, store.BootRescue, serverID)
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
		return store.Task{}, notFound(err)
	}
	t.StartDate, t.LastUpdate, t.DoneDate = tm(sd), tm(lu), tm(dd)
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
		e.Time, e.Received = time.UnixMilli(t).UTC(), tm(rcv)
		e.Status, e.Step, e.Kind, e.Code = job.Status(status), job.Step(step), job.Kind(kind), job.Code(code)
		out = append(out, e)
	}
	return out, rows.Err()
}

// The agent's side.

func (s *Store) RunningDeployment(ctx context.Context, serverID int64) (store.Deployment, []byte, error) {
	var sealed []byte
	d, err := scanDeployment(s.queryRow(ctx, `SELECT `+deploymentCols+`, d.job_sealed`+deploymentFrom+`WHERE d.server_id = ? AND d.status = 'doing'`, serverID), &sealed)
	if err != nil {
		return store.Deployment{}, nil, err
	}
	return d, sealed, nil
}

func (s *Store) OpenAttempt(ctx context.Context, serverID, deploymentID int64, now time.Time) (int, error) {
	var attempt int
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var status string
		var n, taskID int64
		if err := tx.QueryRowContext(ctx, `SELECT status, attempt, history_n, task_id FROM deployments WHERE id = ? AND server_id = ?`, deploymentID, serverID).Scan(&status, &attempt, &n, &taskID); err != nil {
			return notFound(err)
		}
		if status != store.StatusDoing {
			return store.ErrGone
		}
		attempt++
		if attempt > 1 {
			var err error
			if n, err = addEntry(ctx, tx, deploymentID, n, attempt, 0, store.SourceControlPlane, now, 0, store.RestartedEntry(attempt, now)); err != nil {
				return err
			}
		}
		msg := job.Text(job.MsgStarting)
		if attempt > 1 {
			msg = job.Text(job.MsgRestarted, attempt)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deployments SET attempt = ?, last_seq = 0, step = '', bytes_done = 0, bytes_total = 0, event_time = 0, history_n = ?, message = ?, last_seen = ?, updated_at = ? WHERE id = ?`,
			attempt, n, msg, ms(now), ms(now), deploymentID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE tasks SET status = ?, last_update = ? WHERE id = ?`, store.TaskDoing, ms(now), taskID)
		return err
	})
	return attempt, err
}

func (s *Store) AppendEvents(ctx context.Context, a store.Append) (store.Ack, error) {
	// A final event is on disk before it is acknowledged.
	durable := len(a.Events) > 0 && a.Events[len(a.Events)-1].Final()
	var ack store.Ack
	err := s.writeTx(ctx, durable, true, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		ack, err = s.appendTx(ctx, tx, a)
		return err
	})
	if ack.Done {
		s.tokens.Forget(a.ServerID) // boot
	}
	return ack, err
}

// appendTx is AppendEvents inside a group's transaction.
func (s *Store) appendTx(ctx context.Context, tx *sql.Tx, a store.Append) (store.Ack, error) {
	var ack store.Ack
	var status, step string
	var attempt int
	var lastSeq, bytesDone, eventTime, n, taskID int64
	err := tx.StmtContext(ctx, s.st.selDepl).QueryRowContext(ctx, a.DeploymentID, a.ServerID).
		Scan(&status, &attempt, &lastSeq, &step, &bytesDone, &eventTime, &n, &taskID)
	if err != nil {
		return ack, notFound(err)
	}
	if status != store.StatusDoing {
		// A repeat of the batch that ended the deployment (its answer was
		// lost) is acknowledged again; anything else is gone.
		if (status == store.StatusDone || status == store.StatusError) && a.Attempt == attempt && len(a.Events) > 0 && a.Events[len(a.Events)-1].Seq <= lastSeq {
			return store.Ack{Seq: lastSeq, Done: true}, nil
		}
		return ack, store.ErrGone
	}
	if a.Attempt != attempt {
		return ack, &store.StaleAttemptError{Got: a.Attempt, Current: attempt}
	}
	var last *job.Event
	prevStep, prevBytes, prevTime := job.Step(step), bytesDone, tm(eventTime)
	ins := tx.StmtContext(ctx, s.st.insEvent)
	for i := range a.Events {
		e := a.Events[i]
		if e.Seq <= lastSeq {
			continue // already stored: a retry
		}
		rate := store.Rate(prevStep, prevBytes, prevTime, e)
		n++
		if _, err := ins.ExecContext(ctx, a.DeploymentID, n, attempt, e.Seq, store.SourceAgent, e.Time.UnixMilli(), ms(a.Now), string(e.Status), string(e.Step), string(e.Kind), string(e.Code), e.Message, e.BytesDone, e.BytesTotal, rate); err != nil {
			return ack, err
		}
		lastSeq = e.Seq
		prevStep, prevBytes, prevTime = e.Step, e.BytesDone, e.Time
		last = &a.Events[i]
	}
	ack.Seq = lastSeq
	if last == nil {
		_, err := tx.StmtContext(ctx, s.st.updSeen).ExecContext(ctx, ms(a.Now), a.DeploymentID)
		return ack, err
	}
	if _, err := tx.StmtContext(ctx, s.st.updDepl).ExecContext(ctx, lastSeq, string(prevStep), prevBytes, last.BytesTotal, ms(prevTime), n, job.ProgressMessage(*last), ms(a.Now), ms(a.Now), a.DeploymentID); err != nil {
		return ack, err
	}
	if !last.Final() {
		return ack, nil
	}
	ack.Done = true
	if last.Status == job.StatusDone {
		_, err = endDeployment(ctx, tx, a.DeploymentID, taskID, a.ServerID, store.StatusDone, last.Code, job.ProgressMessage(*last), a.Now, store.BootHarddisk)
	} else {
		_, err = endDeployment(ctx, tx, a.DeploymentID, taskID, a.ServerID, store.StatusError, last.Code, last.Message, a.Now, 0)
	}
	return ack, err
}

func (s *Store) ExpireSilent(ctx context.Context, now, silentCutoff, pickupCutoff time.Time, silentFor, pickupFor time.Duration) ([]store.Expired, error) {
	var out []store.Expired
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		out = out[:0]
		expire := func(q string, cutoff time.Time, e job.Event) error {
			// The conditional UPDATE decides: of several instances, the
			// first to commit fails each deployment; the others find it
			// no longer running.
			rows, err := tx.QueryContext(ctx, q, string(e.Code), e.Message, ms(now), ms(now), ms(cutoff))
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
				if _, err := addEntry(ctx, tx, r.id, r.n, r.attempt, 0, store.SourceControlPlane, now, 0, e); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE deployments SET history_n = history_n + 1 WHERE id = ?`, r.id); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE tasks SET status = ?, last_update = ?, done_date = ? WHERE id = ?`, store.TaskStatusFor(store.StatusError, e.Code), ms(now), ms(now), r.task); err != nil {
					return err
				}
				out = append(out, store.Expired{DeploymentID: r.id, TaskID: r.task, ServerID: r.server})
			}
			return nil
		}
		const set = `UPDATE deployments SET status = 'error', code = ?, message = ?, ended_at = ?, updated_at = ? WHERE status = 'doing' AND `
		const ret = ` RETURNING id, task_id, server_id, history_n, attempt`
		if err := expire(set+`attempt > 0 AND last_seen < ?`+ret, silentCutoff, store.SilentEntry(silentFor, now)); err != nil {
			return err
		}
		if !pickupCutoff.IsZero() {
			if err := expire(set+`attempt = 0 AND created_at < ?`+ret, pickupCutoff, store.PickupEntry(pickupFor, now)); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}
