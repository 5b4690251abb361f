// Package pgstore is the PostgreSQL store of the control plane
// (github.com/jackc/pgx/v5: pure Go, so byoi-api stays a static binary),
// for several byoi-api instances sharing one database.
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
// s of progress, which the agent's next events supersede). Every
// transaction that changes a deployment's life (created, attempt opened,
// final event, cancelled, expired) and every admin write commits with
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
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/migrations"
	"github.com/byoi/byoi/controlplane/store/tokencache"
	"github.com/byoi/byoi/job"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is a store.Store on a PostgreSQL database.
type Store struct {
	pool    *pgxpool.Pool
	tokens  *tokencache.Cache
	appends chan *appendReq
	quit    chan struct{}
	done    chan struct{}
}

var _ store.Store = (*Store)(nil)

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

// migrationLock is the advisory lock key serializing migrations of
// instances starting at once ("byoimigr").
const migrationLock = 0x62796f696d696772

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
	s := &Store{pool: pool, tokens: tokencache.New(tokencache.TTL)}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	s.appends, s.quit, s.done = make(chan *appendReq, maxGroup), make(chan struct{}), make(chan struct{})
	stopped := make(chan struct{}, writers)
	for range writers {
		go func() {
			defer func() { stopped <- struct{}{} }()
			s.writer()
		}()
	}
	go func() {
		for range writers {
			<-stopped
		}
		close(s.done)
	}()
	return s, nil
}

// Close stops the writers and closes the pool.
func (s *Store) Close() error {
	close(s.quit)
	<-s.done
	s.pool.Close()
	return nil
}

func (s *Store) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Instances starting together apply each step once.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
			return fmt.Errorf("postgres: migrate: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
			return fmt.Errorf("postgres: migrate: %w", err)
		}
		var have int
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
			return fmt.Errorf("postgres: migrate: %w", err)
		}
		if have > migrations.Latest() {
			return fmt.Errorf("postgres: database schema version %d is newer than this program's %d", have, migrations.Latest())
		}
		for v := have + 1; v <= migrations.Latest(); v++ {
			if _, err := tx.Exec(ctx, migrations.Steps[v].SQL(migrations.Postgres)); err != nil {
				return fmt.Errorf("postgres: migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, v, time.Now().UnixMilli()); err != nil {
				return fmt.Errorf("postgres: migration %d: %w", v, err)
			}
		}
		return nil
	})
}

// SchemaVersion is the applied schema version.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
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

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func isUnique(err error) bool { return pgCode(err) == "23505" }

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) || pgCode(err) == "23503" { // foreign key: the parent is missing
		return store.ErrNotFound
	}
	return err
}

// write runs fn in a transaction committed with synchronous_commit=on. A
// deadlock or serialization failure (the database's verdict between
// instances) is retried.
func (s *Store) write(ctx context.Context, fn func(tx pgx.Tx) error) error {
	for try := 0; ; try++ {
		err := pgx.BeginFunc(ctx, s.pool, fn)
		if c := pgCode(err); (c == "40P01" || c == "40001") && try < 3 {
			continue
		}
		return err
	}
}

// Customers and credentials.

func (s *Store) CreateCustomer(ctx context.Context, name string, now time.Time) (store.Customer, error) {
	c := store.Customer{Name: name, CreatedAt: tm(ms(now))}
	err := s.pool.QueryRow(ctx, `INSERT INTO customers (name, created_at) VALUES ($1, $2) RETURNING id`, name, ms(now)).Scan(&c.ID)
	if isUnique(err) {
		return store.Customer{}, store.ErrExists
	}
	if err != nil {
		return store.Customer{}, err
	}
	return c, nil
}

func scanCustomer(row pgx.Row) (store.Customer, error) {
	var c store.Customer
	var at int64
	if err := row.Scan(&c.ID, &c.Name, &at); err != nil {
		return store.Customer{}, notFound(err)
	}
	c.CreatedAt = tm(at)
	return c, nil
}

func (s *Store) CustomerByName(ctx context.Context, name string) (store.Customer, error) {
	return scanCustomer(s.pool.QueryRow(ctx, `SELECT id, name, created_at FROM customers WHERE name = $1`, name))
}

func (s *Store) Customer(ctx context.Context, id int64) (store.Customer, error) {
	return scanCustomer(s.pool.QueryRow(ctx, `SELECT id, name, created_at FROM customers WHERE id = $1`, id))
}

func (s *Store) CreateCredential(ctx context.Context, c store.Credential) (store.Credential, error) {
	err := s.pool.QueryRow(ctx, `INSERT INTO credentials (customer_id, app_key, app_secret_sealed, consumer_key_hash, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
		c.CustomerID, c.AppKey, c.SealedSecret, c.ConsumerKeyHash, ms(c.CreatedAt)).Scan(&c.ID)
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
	err := s.pool.QueryRow(ctx, `SELECT id, customer_id, app_key, app_secret_sealed, consumer_key_hash, created_at FROM credentials WHERE app_key = $1`, appKey).
		Scan(&c.ID, &c.CustomerID, &c.AppKey, &c.SealedSecret, &c.ConsumerKeyHash, &at)
	if err != nil {
		return store.Credential{}, notFound(err)
	}
	c.CreatedAt = tm(at)
	return c, nil
}

func (s *Store) CreateAccessToken(ctx context.Context, customerID int64, tokenHash []byte, now time.Time) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO access_tokens (customer_id, token_hash, created_at) VALUES ($1, $2, $3)`, customerID, tokenHash, ms(now))
	if isUnique(err) {
		return store.ErrExists
	}
	return notFound(err)
}

func (s *Store) CustomerByAccessToken(ctx context.Context, tokenHash []byte) (store.Customer, error) {
	return scanCustomer(s.pool.QueryRow(ctx, `SELECT c.id, c.name, c.created_at FROM access_tokens t JOIN customers c ON c.id = t.customer_id WHERE t.token_hash = $1`, tokenHash))
}

// Servers.

const serverCols = `id, customer_id, name, mac, boot_id, efi_bootloader_path, inventory, inventory_at, created_at, props`

func scanServer(row pgx.Row) (store.Server, error) {
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
	err := s.pool.QueryRow(ctx, `INSERT INTO servers (customer_id, name, mac, agent_token_hash, boot_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		sv.CustomerID, sv.Name, sv.MAC, agentTokenHash, sv.BootID, ms(sv.CreatedAt)).Scan(&sv.ID)
	if isUnique(err) {
		return store.Server{}, store.ErrExists
	}
	if err != nil {
		return store.Server{}, notFound(err)
	}
	sv.CreatedAt = tm(ms(sv.CreatedAt))
	return sv, nil
}

// exec1 runs one update that must change one row.
func (s *Store) exec1(ctx context.Context, q string, args ...any) error {
	tag, err := s.pool.Exec(ctx, q, args...)
	if isUnique(err) {
		return store.ErrExists
	}
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}

func (s *Store) SetAgentToken(ctx context.Context, serverID int64, hash []byte) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, `UPDATE servers SET agent_token_hash = $1 WHERE id = $2`, hash, serverID)
}

func (s *Store) ServerByName(ctx context.Context, name string) (store.Server, error) {
	return scanServer(s.pool.QueryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE name = $1`, name))
}

// ServerByAgentToken answers from the token cache when it can (see
// package tokencache).
func (s *Store) ServerByAgentToken(ctx context.Context, hash []byte) (store.Server, error) {
	now := time.Now()
	sv, gen, ok := s.tokens.Get(hash, now)
	if ok {
		return sv, nil
	}
	sv, err := scanServer(s.pool.QueryRow(ctx, `SELECT `+serverCols+` FROM servers WHERE agent_token_hash = $1`, hash))
	if err == nil {
		s.tokens.Put(hash, sv, now, gen)
	}
	return sv, err
}

func (s *Store) ListServers(ctx context.Context, customerID int64) ([]store.Server, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+serverCols+` FROM servers WHERE customer_id = $1 ORDER BY name`, customerID)
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
	return s.exec1(ctx, `UPDATE servers SET boot_id = $1 WHERE id = $2`, bootID, serverID)
}

func (s *Store) SetEFIBootloaderPath(ctx context.Context, serverID int64, path string) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, `UPDATE servers SET efi_bootloader_path = $1 WHERE id = $2`, path, serverID)
}

func (s *Store) PutInventory(ctx context.Context, serverID int64, inv []byte, now time.Time) error {
	defer s.tokens.Forget(serverID)
	return s.exec1(ctx, `UPDATE servers SET inventory = $1, inventory_at = $2 WHERE id = $3`, inv, ms(now), serverID)
}

// Deployments.

const deploymentCols = `d.id, d.server_id, s.name, d.task_id, d.shape, d.checksum, d.status, d.code, d.message, d.attempt, d.last_seq, d.step, d.bytes_done, d.bytes_total, d.cleared, d.created_at, d.updated_at, d.ended_at, d.last_seen`
const deploymentFrom = ` FROM deployments d JOIN servers s ON s.id = d.server_id `

func scanDeployment(row pgx.Row, extra ...any) (store.Deployment, error) {
	var d store.Deployment
	var shape, cleared int
	var code, step string
	var created, updated, ended, seen int64
	dest := []any{&d.ID, &d.ServerID, &d.ServerName, &d.TaskID, &shape, &d.Checksum, &d.Status, &code, &d.Message, &d.Attempt, &d.LastSeq, &step, &d.BytesDone, &d.BytesTotal, &cleared, &created, &updated, &ended, &seen}
	if err := row.Scan(append(dest, extra...)...); err != nil {
		return store.Deployment{}, notFound(err)
	}
	d.Shape, d.Code, d.Step, d.Cleared = job.Shape(shape), job.Code(code), job.Step(step), cleared != 0
	d.CreatedAt, d.UpdatedAt, d.EndedAt, d.LastSeen = tm(created), tm(updated), tm(ended), tm(seen)
	return d, nil
}

const insertEvent = `INSERT INTO events (deployment_id, n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`

// addEntry appends a history entry of deployment id, whose last position
// was n (the caller holds the deployment's row lock); it returns the new
// position.
func addEntry(ctx context.Context, tx pgx.Tx, id, n int64, attempt int, seq int64, source string, now time.Time, rate float64, e job.Event) (int64, error) {
	n++
	_, err := tx.Exec(ctx, insertEvent, id, n, attempt, seq, source, e.Time.UnixMilli(), ms(now), string(e.Status), string(e.Step), string(e.Kind), string(e.Code), e.Message, e.BytesDone, e.BytesTotal, rate)
	return n, err
}

// runningTask is the task of the server's running deployment.
func runningTask(ctx context.Context, tx pgx.Tx, serverID int64) (store.Task, error) {
	var tk store.Task
	var sd, lu, dd int64
	err := tx.QueryRow(ctx, `SELECT t.id, t.server_id, t.deployment_id, t.function, t.status, t.start_date, t.last_update, t.done_date FROM deployments d JOIN tasks t ON t.id = d.task_id WHERE d.server_id = $1 AND d.status = 'doing'`, serverID).
		Scan(&tk.ID, &tk.ServerID, &tk.DeploymentID, &tk.Function, &tk.Status, &sd, &lu, &dd)
	tk.StartDate, tk.LastUpdate, tk.DoneDate = tm(sd), tm(lu), tm(dd)
	return tk, err
}

func (s *Store) CreateDeployment(ctx context.Context, nd store.NewDeployment) (store.Deployment, store.Task, error) {
	defer s.tokens.Forget(nd.ServerID) // boot, EFI path
	var d store.Deployment
	var t store.Task
	now := ms(nd.Now)
	err := s.write(ctx, func(tx pgx.Tx) error {
		// The server's row lock serializes deployments of one server
		// across every instance: after it, what we read is the latest.
		var name string
		if err := tx.QueryRow(ctx, `SELECT name FROM servers WHERE id = $1 FOR UPDATE`, nd.ServerID).Scan(&name); err != nil {
			return notFound(err)
		}
		tk, err := runningTask(ctx, tx, nd.ServerID)
		if err == nil {
			return &store.TaskRunningError{Task: tk, Server: name}
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var id int64
		err = tx.QueryRow(ctx, `INSERT INTO deployments (server_id, shape, job_sealed, checksum, status, message, created_at, updated_at) VALUES ($1, $2, $3, $4, 'doing', $5, $6, $7) RETURNING id`,
			nd.ServerID, int(nd.Shape), nd.SealedJob, nd.Checksum, job.Text(job.MsgStarting), now, now).Scan(&id)
		if err != nil {
			return err // a unique violation here would mean the lock failed: an error, not a refusal
		}
		var taskID int64
		if err := tx.QueryRow(ctx, `INSERT INTO tasks (server_id, deployment_id, function, status, start_date, last_update) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
			nd.ServerID, id, store.FunctionReinstall, store.TaskInit, now, now).Scan(&taskID); err != nil {
			return err
		}
		n, err := addEntry(ctx, tx, id, 0, 0, 0, store.SourceControlPlane, nd.Now, 0, store.CreatedEntry(nd.Now))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE deployments SET task_id = $1, history_n = $2 WHERE id = $3`, taskID, n, id); err != nil {
			return err
		}
		if nd.EFIBootloaderPath != "" {
			_, err = tx.Exec(ctx, `UPDATE servers SET boot_id = $1, efi_bootloader_path = $2 WHERE id = $3`, store.BootRescue, nd.EFIBootloaderPath, nd.ServerID)
		} else {
			_, err = tx.Exec(ctx, `UPDATE servers SET boot_id = $1 WHERE id = $2`, store.BootRescue, nd.ServerID)
		}
		if err != nil {
			return err
		}
		d, err = scanDeployment(tx.QueryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.id = $1`, id))
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
	return scanDeployment(s.pool.QueryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = $1 AND d.cleared = 0 ORDER BY d.id DESC LIMIT 1`, serverID))
}

func (s *Store) Deployment(ctx context.Context, serverID, id int64) (store.Deployment, error) {
	return scanDeployment(s.pool.QueryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = $1 AND d.id = $2`, serverID, id))
}

func (s *Store) Deployments(ctx context.Context, serverID int64, limit int) ([]store.Deployment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deploymentCols+deploymentFrom+`WHERE d.server_id = $1 ORDER BY d.id DESC LIMIT $2`, serverID, limit)
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

// endStatements are the statements that end running deployment id
// (status, code, message), its task, and set the server's boot when
// bootID is not 0. The condition status = 'doing' makes the transition
// happen once. The caller holds the server's and the deployment's locks.
func endStatements(id, taskID, serverID int64, status string, code job.Code, message string, now time.Time, bootID int64) [][]any {
	out := [][]any{
		{`UPDATE deployments SET status = $1, code = $2, message = $3, ended_at = $4, updated_at = $4 WHERE id = $5 AND status = 'doing'`, status, string(code), message, ms(now), id},
		{`UPDATE tasks SET status = $1, last_update = $2, done_date = $2 WHERE id = $3`, store.TaskStatusFor(status, code), ms(now), taskID},
	}
	if bootID != 0 {
		out = append(out, []any{`UPDATE servers SET boot_id = $1 WHERE id = $2`, bootID, serverID})
	}
	return out
}

func execAll(ctx context.Context, tx pgx.Tx, stmts [][]any) error {
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st[0].(string), st[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) ClearDeployments(ctx context.Context, serverID int64, now time.Time) (int64, error) {
	defer s.tokens.Forget(serverID)
	var cancelled int64
	err := s.write(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT id FROM servers WHERE id = $1 FOR UPDATE`, serverID); err != nil {
			return err
		}
		var id, taskID, n int64
		var attempt int
		err := tx.QueryRow(ctx, `SELECT id, task_id, history_n, attempt FROM deployments WHERE server_id = $1 AND status = 'doing' FOR UPDATE`, serverID).Scan(&id, &taskID, &n, &attempt)
		switch {
		case err == nil:
			e := store.CancelledEntry(now)
			if _, err := addEntry(ctx, tx, id, n, attempt, 0, store.SourceControlPlane, now, 0, e); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE deployments SET history_n = history_n + 1 WHERE id = $1`, id); err != nil {
				return err
			}
			if err := execAll(ctx, tx, endStatements(id, taskID, serverID, store.StatusCancelled, e.Code, e.Message, now, 0)); err != nil {
				return err
			}
			cancelled = id
		case errors.Is(err, pgx.ErrNoRows):
		default:
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE deployments SET cleared = 1 WHERE server_id = $1 AND cleared = 0`, serverID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return store.ErrNotFound
		}
		_, err = tx.Exec(ctx, `UPDATE servers SET boot_id = $1 WHERE id = $2`, store.BootRescue, serverID)
		return err
	})
	return cancelled, err
}

func (s *Store) Task(ctx context.Context, serverID, taskID int64) (store.Task, error) {
	var t store.Task
	var sd, lu, dd int64
	err := s.pool.QueryRow(ctx, `SELECT id, server_id, deployment_id, function, status, start_date, last_update, done_date FROM tasks WHERE server_id = $1 AND id = $2`, serverID, taskID).
		Scan(&t.ID, &t.ServerID, &t.DeploymentID, &t.Function, &t.Status, &sd, &lu, &dd)
	if err != nil {
		return store.Task{}, notFound(err)
	}
	t.StartDate, t.LastUpdate, t.DoneDate = tm(sd), tm(lu), tm(dd)
	return t, nil
}

func (s *Store) History(ctx context.Context, deploymentID, after int64, limit int) ([]store.Entry, error) {
	rows, err := s.pool.Query(ctx, `SELECT n, attempt, seq, source, time, received_at, status, step, kind, code, message, bytes_done, bytes_total, rate FROM events WHERE deployment_id = $1 AND n > $2 ORDER BY n LIMIT $3`, deploymentID, after, limit)
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
	d, err := scanDeployment(s.pool.QueryRow(ctx, `SELECT `+deploymentCols+`, d.job_sealed`+deploymentFrom+`WHERE d.server_id = $1 AND d.status = 'doing'`, serverID), &sealed)
	if err != nil {
		return store.Deployment{}, nil, err
	}
	return d, sealed, nil
}

func (s *Store) OpenAttempt(ctx context.Context, serverID, deploymentID int64, now time.Time) (int, error) {
	var attempt int
	err := s.write(ctx, func(tx pgx.Tx) error {
		var status string
		var n, taskID int64
		if err := tx.QueryRow(ctx, `SELECT status, attempt, history_n, task_id FROM deployments WHERE id = $1 AND server_id = $2 FOR UPDATE`, deploymentID, serverID).Scan(&status, &attempt, &n, &taskID); err != nil {
			return notFound(err)
		}
		if status != store.StatusDoing {
			return store.ErrGone
		}
		attempt++
		msg := job.Text(job.MsgStarting)
		if attempt > 1 {
			var err error
			if n, err = addEntry(ctx, tx, deploymentID, n, attempt, 0, store.SourceControlPlane, now, 0, store.RestartedEntry(attempt, now)); err != nil {
				return err
			}
			msg = job.Text(job.MsgRestarted, attempt)
		}
		if _, err := tx.Exec(ctx, `UPDATE deployments SET attempt = $1, last_seq = 0, step = '', bytes_done = 0, bytes_total = 0, event_time = 0, history_n = $2, message = $3, last_seen = $4, updated_at = $4 WHERE id = $5`,
			attempt, n, msg, ms(now), deploymentID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE tasks SET status = $1, last_update = $2 WHERE id = $3`, store.TaskDoing, ms(now), taskID)
		return err
	})
	return attempt, err
}

func (s *Store) ExpireSilent(ctx context.Context, now, silentCutoff, pickupCutoff time.Time, silentFor, pickupFor time.Duration) ([]store.Expired, error) {
	var out []store.Expired
	err := s.write(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		expire := func(cond string, cutoff time.Time, e job.Event) error {
			// Rows another transaction holds (an agent's batch being
			// stored: alive; another instance's sweep: failing it) are
			// skipped; status = 'doing' after the lock makes each
			// deployment fail once across every instance.
			rows, err := tx.Query(ctx, `UPDATE deployments SET status = 'error', code = $1, message = $2, ended_at = $3, updated_at = $3
				WHERE status = 'doing' AND id IN (SELECT id FROM deployments WHERE status = 'doing' AND `+cond+` ORDER BY id FOR UPDATE SKIP LOCKED)
				RETURNING id, task_id, server_id, history_n, attempt`, string(e.Code), e.Message, ms(now), ms(cutoff))
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
				if _, err := tx.Exec(ctx, `UPDATE deployments SET history_n = history_n + 1 WHERE id = $1`, r.id); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE tasks SET status = $1, last_update = $2, done_date = $2 WHERE id = $3`, store.TaskStatusFor(store.StatusError, e.Code), ms(now), r.task); err != nil {
					return err
				}
				out = append(out, store.Expired{DeploymentID: r.id, TaskID: r.task, ServerID: r.server})
			}
			return nil
		}
		if err := expire(`attempt > 0 AND last_seen < $4`, silentCutoff, store.SilentEntry(silentFor, now)); err != nil {
			return err
		}
		if !pickupCutoff.IsZero() {
			if err := expire(`attempt = 0 AND created_at < $4`, pickupCutoff, store.PickupEntry(pickupFor, now)); err != nil {
				return err
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b store.Expired) int { return int(a.DeploymentID - b.DeploymentID) })
	return out, err
}
