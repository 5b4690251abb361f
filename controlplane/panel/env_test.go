package panel_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
	"github.com/byoi/byoi/job"
)

// clock is a controllable clock (real time plus an offset).
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// logBuffer collects the server's logs, checked for secrets.
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

// env is one byoi-api (customer API, agent API and panel) on a temporary
// database, listening on 127.0.0.1.
type env struct {
	t       testing.TB
	dbPath  string
	st      *sqlitestore.Store
	keys    *controlplane.Keyring
	srv     *controlplane.Server
	hs      *httptest.Server
	url     string
	clock   *clock
	logs    *logBuffer
	admin   *controlplane.Admin
	secrets []string
}

type envOpt func(*controlplane.Config)

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	return newEnvAt(t, filepath.Join(t.TempDir(), "byoi.db"), false, opts...)
}

// newEnvAt starts an instance on the database at dbPath (another
// instance may share it); tlsOn serves HTTPS.
func newEnvAt(t testing.TB, dbPath string, tlsOn bool, opts ...envOpt) *env {
	t.Helper()
	e := &env{t: t, dbPath: dbPath, clock: &clock{}, logs: &logBuffer{}}
	var err error
	if e.keys, err = controlplane.LoadOrCreateKey(dbPath + ".key"); err != nil {
		t.Fatal(err)
	}
	if e.st, err = sqlitestore.Open(context.Background(), dbPath); err != nil {
		t.Fatal(err)
	}
	cfg := controlplane.Config{Store: e.st, Keys: e.keys, Clock: e.clock, Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, o := range opts {
		o(&cfg)
	}
	if e.srv, err = controlplane.New(cfg); err != nil {
		t.Fatal(err)
	}
	if tlsOn {
		e.hs = httptest.NewTLSServer(e.srv.Handler())
	} else {
		e.hs = httptest.NewServer(e.srv.Handler())
	}
	e.url = e.hs.URL
	e.admin = &controlplane.Admin{Store: e.st, Keys: e.keys, Now: e.clock.Now}
	t.Cleanup(func() {
		e.hs.Close()
		e.st.Close()
		logs := e.logs.String()
		for _, s := range e.secrets {
			if s != "" && strings.Contains(logs, s) {
				t.Errorf("a secret (%.8s...) appears in the logs", s)
			}
		}
	})
	return e
}

func (e *env) secret(s ...string) { e.secrets = append(e.secrets, s...) }

// customer creates a customer and returns an access token of it.
func (e *env) customer(name string) string {
	e.t.Helper()
	ctx := context.Background()
	if err := e.admin.AddCustomer(ctx, name); err != nil {
		e.t.Fatal(err)
	}
	tok, err := e.admin.AddToken(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.secret(tok)
	return tok
}

// agent is a simulated byoi agent: a plain HTTP client of agentapi.
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

func (a *agent) do(method, path string, in, out any) int {
	a.e.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.e.url+path, body)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.e.hs.Client().Do(req)
	if err != nil {
		a.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode < 300 && out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			a.e.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	if resp.StatusCode >= 300 {
		a.e.t.Logf("agent %s %s: %d %s", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode
}

var inventory = agentapi.Inventory{BootMode: "uefi", AgentVersion: "test", DiskGroups: []agentapi.DiskGroup{
	{DiskGroupID: 1, Description: "2 X Disk NVME 1920 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 1920}, DiskType: "NVME", NumberOfDisks: 2},
	{DiskGroupID: 2, Description: "1 X Disk SATA 4000 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 4000}, DiskType: "SATA", NumberOfDisks: 1},
}}

func (a *agent) inventory(inv agentapi.Inventory) {
	a.e.t.Helper()
	if st := a.do("POST", agentapi.InventoryPath(a.server), inv, nil); st != 204 {
		a.e.t.Fatalf("inventory: %d", st)
	}
}

// pickUp gets the job and opens an attempt; it returns the job body.
func (a *agent) pickUp() []byte {
	a.e.t.Helper()
	var as agentapi.Assignment
	if st := a.do("GET", agentapi.JobPath(a.server), nil, &as); st != 200 {
		a.e.t.Fatalf("job: %d", st)
	}
	var at agentapi.Attempt
	if st := a.do("POST", agentapi.AttemptsPath(a.server, as.DeploymentID), nil, &at); st != 200 {
		a.e.t.Fatalf("attempt: %d", st)
	}
	a.depl, a.att, a.seq = as.DeploymentID, at.Attempt, 0
	return as.Job
}

func (a *agent) event(status job.Status, step job.Step, kind job.Kind, code job.Code, msg string, done, total int64) job.Event {
	a.seq++
	return job.Event{Seq: a.seq, Time: time.Now(), Status: status, Step: step, Kind: kind, Code: code, Message: msg, BytesDone: done, BytesTotal: total}
}

func (a *agent) send(evs ...job.Event) {
	a.e.t.Helper()
	var ack agentapi.Ack
	if st := a.do("POST", agentapi.EventsPath(a.server, a.depl), agentapi.EventBatch{Attempt: a.att, Events: evs}, &ack); st != 200 {
		a.e.t.Fatalf("events: %d", st)
	}
}

// client is a browser-like HTTP client of the panel: a cookie jar and the
// CSRF token the page gave.
type client struct {
	e    *env
	base string
	hc   *http.Client
	csrf string
	seen bytes.Buffer // every body received, for the secret check
}

func (e *env) client() *client { return e.clientOf(e.url) }

// clientOf is a client of the instance at base (several instances may
// share one database).
func (e *env) clientOf(base string) *client {
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &client{e: e, base: base, hc: hc}
}

var metaCSRF = regexp.MustCompile(`<meta name="byoi-csrf" content="([^"]+)">`)

// page loads /panel/ and keeps its CSRF token.
func (c *client) page() *http.Response {
	c.e.t.Helper()
	resp, body := c.do("GET", "/panel/", "", nil)
	m := metaCSRF.FindSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		c.e.t.Fatalf("page: %d, no CSRF token: %s", resp.StatusCode, body)
	}
	c.csrf = string(m[1])
	return resp
}

// signIn loads the page and signs in with an access token.
func (c *client) signIn(token string) {
	c.e.t.Helper()
	c.page()
	resp, body := c.do("POST", "/panel/api/login", `{"token":`+strconvQuote(token)+`}`, map[string]string{"X-CSRF-Token": c.csrf})
	if resp.StatusCode != 200 {
		c.e.t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	var s struct{ Customer, CSRF string }
	json.Unmarshal(body, &s)
	if s.CSRF == "" {
		c.e.t.Fatalf("login answer %s", body)
	}
	c.csrf = s.CSRF
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// do sends a request; hdr may set X-CSRF-Token and others.
func (c *client) do(method, path, body string, hdr map[string]string) (*http.Response, []byte) {
	c.e.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	c.seen.Write(data)
	return resp, data
}

// call sends a request with the session's CSRF token, as the page does.
func (c *client) call(method, path, body string) (int, []byte) {
	c.e.t.Helper()
	resp, data := c.do(method, path, body, map[string]string{"X-CSRF-Token": c.csrf})
	return resp.StatusCode, data
}

// apiError is the customer API's error body.
type apiError struct {
	Class   string            `json:"class"`
	Message string            `json:"message"`
	Details map[string]string `json:"details"`
}

func decodeErr(t testing.TB, data []byte) apiError {
	t.Helper()
	var ae apiError
	if err := json.Unmarshal(data, &ae); err != nil {
		t.Fatalf("error body %q: %v", data, err)
	}
	return ae
}

func cookieNamed(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
