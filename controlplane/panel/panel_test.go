package panel_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/panel"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// TestPageAndAssets: the page and its assets carry the CSP and the other
// security headers; the page has no inline script, event handler or style
// attribute; the script never writes HTML (textContent and createElement
// only); the panel is at /panel/.
func TestPageAndAssets(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	resp := c.page()
	for _, p := range []string{"/panel/", "/panel/static/app.js", "/panel/static/app.css", "/panel/static/favicon.svg", "/panel/api/session", "/panel/nothing", "/panel/static/index.html"} {
		resp, _ := c.do("GET", p, "", nil)
		h := resp.Header
		if h.Get("Content-Security-Policy") != panel.CSP || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("X-Frame-Options") != "DENY" || h.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: security headers %v", p, h)
		}
	}
	if got := resp.Header.Get("Content-Security-Policy"); got != "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'" {
		t.Errorf("CSP %q", got)
	}
	for p, ct := range map[string]string{"/panel/static/app.js": "javascript", "/panel/static/app.css": "text/css", "/panel/static/favicon.svg": "image/svg+xml", "/panel/": "text/html"} {
		resp, _ := c.do("GET", p, "", nil)
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), ct) {
			t.Errorf("%s: %d %q", p, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	if resp, _ := c.do("GET", "/panel/static/index.html", "", nil); resp.StatusCode != 404 {
		t.Errorf("the page template is served raw: %d", resp.StatusCode)
	}
	if resp, _ := c.do("GET", "/panel", "", nil); resp.StatusCode/100 != 3 || resp.Header.Get("Location") != "/panel/" {
		t.Errorf("/panel: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}

	html, err := os.ReadFile("static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`(?i)<script(\s[^>]*)?>[^<]*\S[^<]*</script>`), // inline script
		regexp.MustCompile(`(?i)\son[a-z]+\s*=`),                          // event handler attribute
		regexp.MustCompile(`(?i)\sstyle\s*=`),                             // style attribute
		regexp.MustCompile(`(?i)<style`),                                  // style element
		regexp.MustCompile(`(?i)javascript:`),
		regexp.MustCompile(`(?i)https?://[^\s"<>]+`), // nothing from elsewhere (no CDN)
	} {
		for _, m := range bad.FindAll(html, -1) {
			if strings.Contains(string(m), "example.com") { // placeholders
				continue
			}
			t.Errorf("index.html: %s", m)
		}
	}
	for _, tag := range regexp.MustCompile(`(?i)<script[^>]*>`).FindAll(html, -1) {
		if !strings.Contains(string(tag), ` src="static/`) {
			t.Errorf("index.html: a script not from the panel's own files: %s", tag)
		}
	}
	js, err := os.ReadFile("static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute('on", `setAttribute("on`, ".style", "srcdoc", "createContextualFragment", "http://", "https://"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("app.js uses %s", bad)
		}
	}
	// every static file is embedded (the binary works offline)
	filepath.WalkDir("static", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && p != "static/index.html" {
			if resp, _ := c.do("GET", "/panel/"+p, "", nil); resp.StatusCode != 200 {
				t.Errorf("%s not served: %d", p, resp.StatusCode)
			}
		}
		return nil
	})
}

// TestSignIn: an access token is exchanged for a session cookie (HttpOnly,
// SameSite=Strict, Secure over TLS or behind an https public URL); sign-in
// itself needs the page's CSRF token; the database keeps only the hash of
// the session id; a session works on another instance sharing the
// database; sign-out ends it everywhere; a session expires.
func TestSignIn(t *testing.T) {
	e := newEnv(t)
	tok := e.customer("acme")

	// no pre-session cookie, no token: refused
	fresh := e.client()
	resp, body := fresh.do("POST", "/panel/api/login", `{"token":"`+tok+`"}`, nil)
	if resp.StatusCode != 403 || decodeErr(t, body).Message != job.Text(job.APICSRF) {
		t.Fatalf("login without CSRF: %d %s", resp.StatusCode, body)
	}
	c := e.client()
	pg := c.page()
	pre := cookieNamed(pg, "byoi_presession")
	if pre == nil || !pre.HttpOnly || pre.SameSite != http.SameSiteStrictMode || pre.Secure || pre.Path != "/panel/" {
		t.Fatalf("pre-session cookie %+v", pre)
	}
	for _, h := range []map[string]string{nil, {"X-CSRF-Token": "x" + c.csrf}, {"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "cross-site"}} {
		if resp, body := c.do("POST", "/panel/api/login", `{"token":"`+tok+`"}`, h); resp.StatusCode != 403 {
			t.Fatalf("login with %v: %d %s", h, resp.StatusCode, body)
		}
	}
	// a wrong token
	resp, body = c.do("POST", "/panel/api/login", `{"token":"byoi_at_nope"}`, map[string]string{"X-CSRF-Token": c.csrf})
	if resp.StatusCode != 401 || decodeErr(t, body).Message != job.Text(job.APIBadToken) {
		t.Fatalf("bad token: %d %s", resp.StatusCode, body)
	}
	if st, body := c.call("GET", "/panel/api/session", ""); st != 401 || decodeErr(t, body).Message != job.Text(job.APINotAuthed) {
		t.Fatalf("session before sign-in: %d %s", st, body)
	}
	resp, body = c.do("POST", "/panel/api/login", `{"token":"`+tok+`"}`, map[string]string{"X-CSRF-Token": c.csrf})
	if resp.StatusCode != 200 {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	sc := cookieNamed(resp, "byoi_session")
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Secure || sc.Path != "/panel/" || sc.MaxAge != 12*3600 {
		t.Fatalf("session cookie %+v", sc)
	}
	if strings.Contains(string(body), sc.Value) {
		t.Fatal("the session id is in the answer's body")
	}
	var sv struct{ Customer, CSRF string }
	json.Unmarshal(body, &sv)
	c.csrf = sv.CSRF
	if sv.Customer != "acme" {
		t.Fatalf("%s", body)
	}
	// stored hashed
	sum := sha256.Sum256([]byte(sc.Value))
	if _, err := e.st.SessionByHash(context.Background(), sum[:], time.Now()); err != nil {
		t.Fatalf("session not stored by its hash: %v", err)
	}
	if _, err := e.st.SessionByHash(context.Background(), []byte(sc.Value), time.Now()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("session stored in clear: %v", err)
	}
	if st, body := c.call("GET", "/panel/api/session", ""); st != 200 || !strings.Contains(string(body), `"customer":"acme"`) {
		t.Fatalf("session: %d %s", st, body)
	}
	// the page now carries the session's token
	c.page()
	if c.csrf != sv.CSRF {
		t.Fatal("the page's CSRF token is not the session's")
	}

	// another instance on the same database serves the same session
	e2 := newEnvAt(t, e.dbPath, false)
	c2 := e2.clientOf(e2.url)
	c2.hc.Jar.SetCookies(mustURL(e2.url+"/panel/"), []*http.Cookie{{Name: "byoi_session", Value: sc.Value, Path: "/panel/"}})
	c2.csrf = c.csrf
	if st, body := c2.call("GET", "/panel/api/dedicated/server", ""); st != 200 || string(body) != "[]" {
		t.Fatalf("second instance: %d %s", st, body)
	}

	// sign-out needs the token, then ends the session on every instance
	if resp, _ := c.do("POST", "/panel/api/logout", "", nil); resp.StatusCode != 403 {
		t.Fatalf("logout without CSRF: %d", resp.StatusCode)
	}
	if st, _ := c.call("POST", "/panel/api/logout", ""); st != 204 {
		t.Fatalf("logout: %d", st)
	}
	if st, _ := c2.call("GET", "/panel/api/dedicated/server", ""); st != 401 {
		t.Fatalf("second instance after sign-out: %d", st)
	}
	if st, _ := c.call("GET", "/panel/api/session", ""); st != 401 {
		t.Fatalf("after sign-out: %d", st)
	}

	// expiry
	c3 := e.client()
	c3.signIn(tok)
	e.clock.Advance(11 * time.Hour)
	if st, _ := c3.call("GET", "/panel/api/session", ""); st != 200 {
		t.Fatalf("after 11 h: %d", st)
	}
	e.clock.Advance(2 * time.Hour)
	if st, _ := c3.call("GET", "/panel/api/session", ""); st != 401 {
		t.Fatalf("after 13 h: %d", st)
	}

	// TLS: Secure cookies
	et := newEnvAt(t, filepath.Join(t.TempDir(), "tls.db"), true)
	ct := et.client()
	if pre := cookieNamed(ct.page(), "byoi_presession"); pre == nil || !pre.Secure {
		t.Fatalf("pre-session cookie over TLS %+v", pre)
	}
	tt := et.customer("acme")
	resp, _ = ct.do("POST", "/panel/api/login", `{"token":"`+tt+`"}`, map[string]string{"X-CSRF-Token": ct.csrf})
	if sc := cookieNamed(resp, "byoi_session"); resp.StatusCode != 200 || sc == nil || !sc.Secure || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie over TLS: %d %+v", resp.StatusCode, sc)
	}
	// behind a proxy: the public URL's scheme and path
	ep := newEnv(t, func(cfg *controlplane.Config) { cfg.PublicURL = "https://api.example.com/byoi" })
	if pre := cookieNamed(ep.client().page(), "byoi_presession"); pre == nil || !pre.Secure || pre.Path != "/byoi/panel/" {
		t.Fatalf("pre-session cookie behind a proxy %+v", pre)
	}
}

// TestCSRF: every state-changing request without the session's token, with
// another session's token, or from another site, is refused and changes
// nothing; reading needs no token.
func TestCSRF(t *testing.T) {
	e := newEnv(t)
	tok := e.customer("acme")
	e.server("ns1", "acme")
	c := e.client()
	c.signIn(tok)
	other := e.client()
	other.signIn(tok)
	body := reinstallBody("web1")
	reqs := []struct{ method, path, body string }{
		{"POST", "/panel/api/dedicated/server/ns1/reinstall", body},
		{"POST", "/panel/api/dedicated/server/ns1/bringYourOwnImage", `{"URL":"https://x/i","type":"raw"}`},
		{"DELETE", "/panel/api/dedicated/server/ns1/bringYourOwnImage", ""},
		{"PUT", "/panel/api/dedicated/server/ns1", `{"bootId":1}`},
		{"POST", "/panel/api/validate/ns1", body},
		{"POST", "/panel/api/logout", ""},
	}
	for _, r := range reqs {
		for name, h := range map[string]map[string]string{
			"no token":      nil,
			"empty token":   {"X-CSRF-Token": ""},
			"another token": {"X-CSRF-Token": other.csrf},
			"cross-site":    {"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "cross-site"},
			"same-site":     {"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "same-site"},
		} {
			resp, data := c.do(r.method, r.path, r.body, h)
			if resp.StatusCode != 403 || decodeErr(t, data).Message != job.Text(job.APICSRF) {
				t.Errorf("%s %s, %s: %d %s", r.method, r.path, name, resp.StatusCode, data)
			}
		}
	}
	// nothing changed
	if st, data := c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage/history", ""); st != 200 || string(data) != "[]" {
		t.Fatalf("history: %d %s", st, data)
	}
	if st, data := c.call("GET", "/panel/api/dedicated/server/ns1", ""); st != 200 || !strings.Contains(string(data), `"bootId":2`) {
		t.Fatalf("server: %d %s", st, data)
	}
	if st, _ := c.call("GET", "/panel/api/session", ""); st != 200 {
		t.Fatal("signed out by a refused request")
	}
	// with the token (same-origin, as the browser says) it works
	resp, data := c.do("POST", "/panel/api/dedicated/server/ns1/reinstall", body, map[string]string{"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != 200 {
		t.Fatalf("reinstall with the token: %d %s", resp.StatusCode, data)
	}
	// a GET needs no token, and an agent or API path is not reachable
	resp, _ = c.do("GET", "/panel/api/dedicated/server/ns1/install/status", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET without token: %d", resp.StatusCode)
	}
	for _, p := range []string{"/panel/api/agent/v1/servers/ns1/job", "/panel/api/../../agent/v1/servers/ns1/job", "/panel/api/auth/time"} {
		if st, data := c.call("GET", p, ""); st == 200 {
			t.Errorf("%s: %d %s", p, st, data)
		}
	}
}

// TestOtherCustomer: a customer's session sees only its servers; another
// customer's server answers 404 exactly as one that does not exist, for
// reading, validating, deploying and deleting.
func TestOtherCustomer(t *testing.T) {
	e := newEnv(t)
	acme := e.customer("acme")
	e.customer("globex")
	e.server("ns1", "acme")
	g := e.server("ns2", "globex")
	g.inventory(inventory)
	c := e.client()
	c.signIn(acme)
	if st, data := c.call("GET", "/panel/api/dedicated/server", ""); st != 200 || string(data) != `["ns1"]` {
		t.Fatalf("servers: %d %s", st, data)
	}
	want := job.Text(job.APINotFound, "serviceName = ns2")
	for _, r := range []struct{ method, path, body string }{
		{"GET", "", ""}, {"GET", "/specifications/hardware", ""}, {"GET", "/bringYourOwnImage", ""},
		{"GET", "/bringYourOwnImage/history", ""}, {"GET", "/bringYourOwnImage/events", ""}, {"GET", "/install/status", ""},
		{"GET", "/task/1", ""}, {"POST", "/reinstall", reinstallBody("web1")}, {"DELETE", "/bringYourOwnImage", ""},
		{"PUT", "", `{"bootId":1}`},
	} {
		st, data := c.call(r.method, "/panel/api/dedicated/server/ns2"+r.path, r.body)
		if st != 404 || decodeErr(t, data).Message != want {
			t.Errorf("%s ns2%s: %d %s", r.method, r.path, st, data)
		}
	}
	if st, data := c.call("POST", "/panel/api/validate/ns2", reinstallBody("web1")); st != 404 || decodeErr(t, data).Message != want {
		t.Errorf("validate ns2: %d %s", st, data)
	}
	// and the same for a server that does not exist
	if st, data := c.call("GET", "/panel/api/dedicated/server/ns3", ""); st != 404 || decodeErr(t, data).Message != job.Text(job.APINotFound, "serviceName = ns3") {
		t.Errorf("ns3: %d %s", st, data)
	}
	// nothing happened to ns2
	if st := g.do("GET", "/agent/v1/servers/ns2/job", nil, nil); st != 204 {
		t.Fatalf("ns2 got a job: %d", st)
	}
}

// reinstallBody is a valid reinstall body with a ConfigDrive.
func reinstallBody(hostname string) string {
	b, _ := json.Marshal(map[string]any{
		"operatingSystem": "byoi_64",
		"customizations": map[string]any{
			"imageURL": "https://images.example.com/debian.qcow2", "imageType": "qcow2",
			"hostname": hostname, "httpHeaders": map[string]string{"Authorization": headerSecret},
			"configDriveUserData": userDataSecret,
		},
		"storage": []map[string]any{{"diskGroupId": 1}},
	})
	return string(b)
}

const (
	headerSecret   = "Bearer PANEL-HEADER-s3cret"
	userDataSecret = "#cloud-config\n# PANEL-USERDATA-s3cret\n"
)

// TestDeployThroughPanel: the panel's submit creates the deployment
// through the customer API's own handler (the agent receives the body
// exactly as posted); status, steps, events and history read through the
// panel are the API's; DELETE puts the server back to rescue; no answer
// to the panel ever holds a header value or the user data.
func TestDeployThroughPanel(t *testing.T) {
	e := newEnv(t)
	tok := e.customer("acme")
	a := e.server("ns1", "acme")
	e.secret("PANEL-HEADER-s3cret", "PANEL-USERDATA-s3cret")
	a.inventory(inventory)
	c := e.client()
	c.signIn(tok)
	body := reinstallBody("web1")
	if st, data := c.call("POST", "/panel/api/validate/ns1", body); st != 200 || string(data) != "{}" {
		t.Fatalf("validate: %d %s", st, data)
	}
	if st, data := c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage/history", ""); st != 200 || string(data) != "[]" {
		t.Fatalf("validate created something: %s", data)
	}
	st, data := c.call("POST", "/panel/api/dedicated/server/ns1/reinstall", body)
	var task struct {
		TaskID           int64
		Function, Status string
	}
	json.Unmarshal(data, &task)
	if st != 200 || task.Function != "reinstallServer" || task.Status != "init" {
		t.Fatalf("reinstall: %d %s", st, data)
	}
	if got := a.pickUp(); string(got) != body {
		t.Fatalf("the agent got %s, want the body as posted", got)
	}
	a.send(a.event("doing", job.StepDownload, job.KindProgress, "", "", 1<<20, 4<<20))
	a.send(a.event("doing", job.StepDownload, job.KindProgress, "", "", 3<<20, 4<<20))
	st, data = c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage", "")
	if st != 200 || !strings.Contains(string(data), job.Text(job.MsgDownloading, "3.0 MiB", "4.0 MiB")) {
		t.Fatalf("status: %d %s", st, data)
	}
	st, data = c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage/events?after=0", "")
	var evs struct {
		DeploymentID int64
		Next         int64
		Events       []struct {
			Kind      string
			BytesDone int64
			Rate      float64
		}
	}
	json.Unmarshal(data, &evs)
	if st != 200 || len(evs.Events) != 3 || evs.Events[2].BytesDone != 3<<20 || evs.Next != 3 {
		t.Fatalf("events: %d %s", st, data)
	}
	a.send(a.event("done", job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0))
	st, data = c.call("GET", "/panel/api/dedicated/server/ns1/install/status", "")
	if st != 200 || strings.Count(string(data), `"status":"done"`) != len(job.Steps) {
		t.Fatalf("install/status: %d %s", st, data)
	}
	if st, data = c.call("GET", "/panel/api/dedicated/server/ns1", ""); !strings.Contains(string(data), `"bootId":1`) {
		t.Fatalf("boot after done: %s", data)
	}
	if st, _ = c.call("DELETE", "/panel/api/dedicated/server/ns1/bringYourOwnImage", ""); st != 200 {
		t.Fatalf("delete: %d", st)
	}
	if st, data = c.call("GET", "/panel/api/dedicated/server/ns1", ""); !strings.Contains(string(data), `"bootId":2`) {
		t.Fatalf("boot after delete: %s", data)
	}
	if st, data = c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage/history", ""); st != 200 || !strings.Contains(string(data), `"cleared":true`) {
		t.Fatalf("history: %s", data)
	}
	for _, s := range []string{"PANEL-HEADER-s3cret", "PANEL-USERDATA-s3cret"} {
		if strings.Contains(c.seen.String(), s) {
			t.Errorf("a panel answer holds a secret (%s)", s)
		}
	}
}

// TestBinaryDeps: the browser driver and the test helpers are test
// dependencies only: byoi-api does not carry them.
func TestBinaryDeps(t *testing.T) {
	goBin := testutil.RequireCommand(t, "go")
	out, err := exec.Command(goBin, "list", "-deps", "github.com/byoi/byoi/cmd/byoi-api").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	if !strings.Contains(string(out), "github.com/byoi/byoi/controlplane/panel\n") {
		t.Error("byoi-api does not serve the panel")
	}
	for _, p := range strings.Fields(string(out)) {
		for _, bad := range []string{"chromedp", "byoi/internal/testimage", "byoi/internal/testutil", "x/crypto/ssh"} {
			if strings.Contains(p, bad) {
				t.Errorf("byoi-api depends on %s", p)
			}
		}
	}
}
