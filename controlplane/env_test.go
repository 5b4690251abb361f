package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/open"
	"github.com/byoi/byoi/controlplane/store/pgstore/pgtest"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

// fakeClock is a Clock tests move by hand; its tickers tick on Tick.
type fakeClock struct {
	mu      sync.Mutex
	offset  time.Duration
	base    time.Time
	tickers []chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{base: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(c.offset)
}

func (c *fakeClock) NewTicker(time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time)
	c.tickers = append(c.tickers, ch)
	return ch, func() {}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// Tick ticks every ticker once, waiting until each loop took it.
func (c *fakeClock) Tick(ctx context.Context) {
	c.mu.Lock()
	ts := append([]chan time.Time(nil), c.tickers...)
	c.mu.Unlock()
	now := c.Now()
	for _, ch := range ts {
		select {
		case ch <- now:
		case <-ctx.Done():
		}
	}
}

// logBuffer collects a server's logs for the secret check.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// env is one byoi-api on a temporary database, listening on 127.0.0.1.
type env struct {
	t        testing.TB
	settings envSettings
	opts     []envOpt // of the last start
	dbPath   string
	keyPath  string
	st       store.Store
	keys     *controlplane.Keyring
	srv      *controlplane.Server
	hs       *httptest.Server
	url      string
	clock    *fakeClock
	logs     *logBuffer
	admin    *controlplane.Admin
	secrets  []string // must never appear in logs
}

// envOpt sets the server's configuration, or (with settings) the env's.
type envOpt func(*envConfig)

type envConfig struct {
	controlplane.Config
	envSettings
}

// envSettings are the env's own settings.
type envSettings struct {
	postgres bool // the store on PostgreSQL (BYOI_TEST_PG_DSN) instead of SQLite
}

// cfg makes an envOpt of a change to the server's configuration.
func cfg(f func(*controlplane.Config)) envOpt { return func(c *envConfig) { f(&c.Config) } }

// onPostgres runs the env's store on PostgreSQL.
func onPostgres(c *envConfig) { c.postgres = true }

// bothStores runs fn once on SQLite and once on PostgreSQL (skipped
// without BYOI_TEST_PG_DSN, failed in CI), with the option that picks
// the store.
func bothStores(t *testing.T, fn func(t *testing.T, backend envOpt)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, func(*envConfig) {}) })
	t.Run("postgres", func(t *testing.T) { fn(t, onPostgres) })
}

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	t.Setenv("HOME", t.TempDir()) // no ~/.ovh.conf for go-ovh
	for _, k := range []string{"OVH_ENDPOINT", "OVH_APPLICATION_KEY", "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY", "OVH_CLIENT_ID", "OVH_CLIENT_SECRET", "OVH_ACCESS_TOKEN"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	e := &env{t: t, dbPath: filepath.Join(dir, "byoi.db"), keyPath: filepath.Join(dir, "byoi.db.key"), clock: newFakeClock(), logs: &logBuffer{}}
	var ec envConfig
	for _, o := range opts {
		o(&ec)
	}
	e.settings = ec.envSettings
	if e.settings.postgres {
		e.dbPath = pgtest.DSN(t)
	}
	e.start(opts...)
	t.Cleanup(func() {
		e.stop()
		e.checkLogs()
	})
	return e
}

func (e *env) start(opts ...envOpt) {
	t := e.t
	t.Helper()
	if opts == nil {
		opts = e.opts
	}
	e.opts = opts
	var err error
	if e.st, e.keys, err = open.Store(context.Background(), e.dbPath, e.keyPath); err != nil {
		t.Fatal(err)
	}
	c := envConfig{Config: controlplane.Config{Store: e.st, Keys: e.keys, Clock: e.clock, Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}}
	for _, o := range opts {
		o(&c)
	}
	if e.srv, err = controlplane.New(c.Config); err != nil {
		t.Fatal(err)
	}
	e.hs = httptest.NewServer(e.srv.Handler())
	e.url = e.hs.URL
	e.admin = &controlplane.Admin{Store: e.st, Keys: e.keys, Now: e.clock.Now}
}

func (e *env) stop() {
	if e.hs != nil {
		e.hs.Close()
		e.st.Close()
		e.hs = nil
	}
}

// restart closes the server and its database and opens them again.
func (e *env) restart() {
	e.stop()
	e.start()
}

func (e *env) checkLogs() {
	logs := e.logs.String()
	for _, s := range e.secrets {
		if s != "" && strings.Contains(logs, s) {
			e.t.Errorf("a secret (%.6s...) appears in the logs", s)
		}
	}
}

func (e *env) secret(s ...string) { e.secrets = append(e.secrets, s...) }

// customer creates a customer with a signature credential and an access
// token, and go-ovh clients for both.
type customer struct {
	name   string
	cred   controlplane.Credential
	token  string
	signed *ovh.Client
	bearer *ovh.Client
}

func (e *env) customer(name string) *customer {
	t := e.t
	t.Helper()
	ctx := context.Background()
	if err := e.admin.AddCustomer(ctx, name); err != nil {
		t.Fatal(err)
	}
	cr, err := e.admin.AddCredential(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.admin.AddToken(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	e.secret(cr.ApplicationSecret, cr.ConsumerKey, tok)
	c := &customer{name: name, cred: cr, token: tok}
	if c.signed, err = ovh.NewClient(e.url+"/1.0", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey); err != nil {
		t.Fatal(err)
	}
	if c.bearer, err = ovh.NewAccessTokenClient(e.url+"/1.0", tok); err != nil {
		t.Fatal(err)
	}
	return c
}

// agent is a simulated byoi agent: a plain HTTP client on agentapi.
type agent struct {
	e      *env
	server string
	token  string
	depl   int64
	att    int
	seq    int64
}

func (e *env) server(name, customer string) *agent {
	e.t.Helper()
	tok, err := e.admin.AddServer(context.Background(), name, customer, "")
	if err != nil {
		e.t.Fatal(err)
	}
	e.secret(tok)
	return &agent{e: e, server: name, token: tok}
}

// do sends an agent request and decodes a 2xx answer into out.
func (a *agent) do(method, path string, in, out any) (int, agentapi.Error) {
	a.e.t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			a.e.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.e.url+path, body)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var ae agentapi.Error
	if resp.StatusCode >= 300 {
		json.Unmarshal(data, &ae)
		return resp.StatusCode, ae
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			a.e.t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode, ae
}

func (a *agent) inventory(inv agentapi.Inventory) {
	a.e.t.Helper()
	if st, ae := a.do("POST", agentapi.InventoryPath(a.server), inv, nil); st != 204 {
		a.e.t.Fatalf("inventory: %d %+v", st, ae)
	}
}

// pickUpJob gets the job (no attempt).
func (a *agent) pickUpJob() agentapi.Assignment {
	a.e.t.Helper()
	var as agentapi.Assignment
	if st, ae := a.do("GET", agentapi.JobPath(a.server), nil, &as); st != 200 {
		a.e.t.Fatalf("job: %d %+v", st, ae)
	}
	return as
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pickUp gets the job and opens an attempt.
func (a *agent) pickUp() agentapi.Assignment {
	a.e.t.Helper()
	var as agentapi.Assignment
	if st, ae := a.do("GET", agentapi.JobPath(a.server), nil, &as); st != 200 {
		a.e.t.Fatalf("job: %d %+v", st, ae)
	}
	var at agentapi.Attempt
	if st, ae := a.do("POST", agentapi.AttemptsPath(a.server, as.DeploymentID), nil, &at); st != 200 {
		a.e.t.Fatalf("attempt: %d %+v", st, ae)
	}
	a.depl, a.att, a.seq = as.DeploymentID, at.Attempt, 0
	return as
}

func (a *agent) event(status job.Status, step job.Step, kind job.Kind, code job.Code, msg string, done, total int64) job.Event {
	a.seq++
	return job.Event{Seq: a.seq, Time: time.Now(), Status: status, Step: step, Kind: kind, Code: code, Message: msg, BytesDone: done, BytesTotal: total}
}

func (a *agent) send(evs ...job.Event) (int, agentapi.Ack, agentapi.Error) {
	a.e.t.Helper()
	var ack agentapi.Ack
	st, ae := a.do("POST", agentapi.EventsPath(a.server, a.depl), agentapi.EventBatch{Attempt: a.att, Events: evs}, &ack)
	return st, ack, ae
}

func (a *agent) mustSend(evs ...job.Event) agentapi.Ack {
	a.e.t.Helper()
	st, ack, ae := a.send(evs...)
	if st != 200 {
		a.e.t.Fatalf("events: %d %+v", st, ae)
	}
	return ack
}

// apiErr returns go-ovh's APIError of err.
func apiErr(t *testing.T, err error) *ovh.APIError {
	t.Helper()
	ae, ok := err.(*ovh.APIError)
	if !ok {
		t.Fatalf("want *ovh.APIError, got %T %v", err, err)
	}
	return ae
}

func wantAPIErr(t *testing.T, err error, code int, class, message string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want error %d %s, got success", code, class)
	}
	ae := apiErr(t, err)
	if ae.Code != code || ae.Class != class || (message != "" && ae.Message != message) {
		t.Fatalf("got %d %q %q, want %d %q %q", ae.Code, ae.Class, ae.Message, code, class, message)
	}
	if ae.QueryID == "" {
		t.Errorf("no X-Ovh-QueryID on the error")
	}
}

func path(server, tail string) string { return fmt.Sprintf("/dedicated/server/%s%s", server, tail) }
