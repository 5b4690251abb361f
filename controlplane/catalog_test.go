package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

// coverage records which catalog codes a test saw in a real answer, each
// with how it was triggered. A code is recorded only once its answer was
// checked: the code's text (job.Text with the expected arguments) and, for
// an error, the HTTP status and OVH class.
type coverage struct {
	t    *testing.T
	seen map[job.Code]string
}

func (cv *coverage) note(code job.Code, how string) {
	if _, ok := cv.seen[code]; !ok {
		cv.seen[code] = how
	}
}

// apiError checks an error go-ovh returned.
func (cv *coverage) apiError(how string, err error, status int, class string, code job.Code, args ...any) {
	cv.t.Helper()
	want := job.Text(code, args...)
	ae, ok := err.(*ovh.APIError)
	if !ok {
		cv.t.Errorf("%s: want %s (%d %s %q), got %T %v", how, code, status, class, want, err, err)
		return
	}
	if ae.Code != status || ae.Class != class || ae.Message != want || ae.QueryID == "" {
		cv.t.Errorf("%s: got %d %q %q (query id %q), want %s: %d %q %q", how, ae.Code, ae.Class, ae.Message, ae.QueryID, code, status, class, want)
		return
	}
	cv.note(code, how)
}

// refusal checks an error answer read by hand (agent API, panel).
func (cv *coverage) refusal(how string, gotStatus int, gotClass, gotMsg string, status int, class string, code job.Code, args ...any) {
	cv.t.Helper()
	want := job.Text(code, args...)
	if gotStatus != status || gotClass != class || gotMsg != want {
		cv.t.Errorf("%s: got %d %q %q, want %s: %d %q %q", how, gotStatus, gotClass, gotMsg, code, status, class, want)
		return
	}
	cv.note(code, how)
}

// text checks a status text of an answer (a status message, a task's
// comment, a boot's description).
func (cv *coverage) text(how, got string, code job.Code, args ...any) {
	cv.t.Helper()
	if want := job.Text(code, args...); got != want {
		cv.t.Errorf("%s: got %q, want %s: %q", how, got, code, want)
		return
	}
	cv.note(code, how)
}

// entry checks a history entry the control plane wrote.
func (cv *coverage) entry(how string, ev historyEntry, code job.Code, args ...any) {
	cv.t.Helper()
	if want := job.Text(code, args...); ev.Code != string(code) || ev.Message != want || ev.Source != "controlplane" {
		cv.t.Errorf("%s: got entry %+v, want %s %q from the control plane", how, ev, code, want)
		return
	}
	cv.note(code, how)
}

// historyEntry and historyPage are GET .../bringYourOwnImage/events.
type historyEntry struct{ Source, Status, Code, Message string }

type historyPage struct {
	DeploymentID json.Number
	Status       string
	Events       []historyEntry
}

func historyOf(t *testing.T, c *ovh.Client, server, query string) historyPage {
	t.Helper()
	var p historyPage
	if err := c.Get(path(server, "/bringYourOwnImage/events"+query), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Events) == 0 {
		t.Fatalf("%s: no history entries", server)
	}
	return p
}

func (p historyPage) last() historyEntry { return p.Events[len(p.Events)-1] }

// plainDo sends a request with hc and returns the status, the body and its
// error class and message when it is one.
func plainDo(t *testing.T, hc *http.Client, method, url, body string, hdr map[string]string) (int, []byte, string, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var eb struct{ Class, Message string }
	if resp.StatusCode >= 300 {
		json.Unmarshal(data, &eb)
	}
	return resp.StatusCode, data, eb.Class, eb.Message
}

var panelCSRF = regexp.MustCompile(`<meta name="byoi-csrf" content="([^"]+)">`)

// TestAPICatalogCoverage triggers, through the real HTTP API (go-ovh
// clients, the simulated agent, the Control Panel for what only it
// answers), every catalog code of the control plane's group
// (job.IsControlPlaneCode): each API error with its text, HTTP status and
// OVH class, each status text where a customer reads it (status, history,
// task, boot). Job spec codes are job's TestValidationCodes', deployment
// codes agent's TestCatalogCoverage's. A control-plane code no answer here
// carries fails the test.
func TestAPICatalogCoverage(t *testing.T) {
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.AgentTimeout = 5 * time.Minute; c.PickupTimeout = time.Hour }))
	e.secret(headerSecret, "HEADER-SECRET-v4lue", "USERDATA-SECRET-v4lue", "QUERY-SECRET")
	cu := e.customer("acme")
	e.customer("globex")
	a := e.server("ns1", "acme")
	b := e.server("ns2", "acme")
	e.server("ns9", "globex")
	c, bc, cr := cu.signed, cu.bearer, cu.cred
	cv := &coverage{t: t, seen: map[job.Code]string{}}
	const (
		badRequest = "Client::BadRequest"
		notFound   = "Client::NotFound"
	)

	// Authentication, before the clock moves (go-ovh signs with the
	// server's time it read once).
	var names []string
	if err := c.Get("/dedicated/server", &names); err != nil {
		t.Fatal(err)
	}
	endpoint := e.url + "/1.0"
	wrongSecret, _ := ovh.NewClient(endpoint, cr.ApplicationKey, "wrong-secret", cr.ConsumerKey)
	cv.apiError("signed with another secret", wrongSecret.Get("/dedicated/server", nil), 400, badRequest, job.APIInvalidSig)
	unknownKey, _ := ovh.NewClient(endpoint, "0123456789abcdef", cr.ApplicationSecret, cr.ConsumerKey)
	cv.apiError("unknown application key", unknownKey.Get("/dedicated/server", nil), 403, "Client::Forbidden", job.APIInvalidKey)
	wrongConsumer, _ := ovh.NewClient(endpoint, cr.ApplicationKey, cr.ApplicationSecret, "ffffffffffffffffffffffffffffffff")
	cv.apiError("another consumer key", wrongConsumer.Get("/dedicated/server", nil), 403, "Client::Forbidden", job.APIInvalidCred)
	badBearer, _ := ovh.NewAccessTokenClient(endpoint, "byoi_at_nope")
	cv.apiError("unknown access token", badBearer.Get("/dedicated/server", nil), 401, "Client::Unauthorized", job.APIBadToken)
	st, _, class, msg := plainDo(t, http.DefaultClient, "GET", endpoint+"/dedicated/server", "", nil)
	cv.refusal("no credential", st, class, msg, 401, "Client::Unauthorized", job.APINotAuthed)
	e.clock.Advance(10 * time.Minute)
	cv.apiError("timestamp out of the window", c.Get("/dedicated/server", nil), 400, badRequest, job.APIOutOfTime)
	e.clock.Advance(-10 * time.Minute)

	// Routes, methods, bodies and parameters.
	cv.apiError("unknown route", c.Get("/dedicated/nothing", nil), 404, notFound, job.APINotFound, "path")
	cv.apiError("another customer's server", c.Get(path("ns9", ""), nil), 404, notFound, job.APINotFound, "serviceName = ns9")
	cv.apiError("unknown boot", c.Get(path("ns1", "/boot/7"), nil), 404, notFound, job.APINotFound, "bootId = 7")
	cv.apiError("PUT an unknown boot", c.Put(path("ns1", ""), map[string]any{"bootId": 77}, nil), 404, notFound, job.APINotFound, "bootId = 77")
	cv.apiError("unknown task", c.Get(path("ns1", "/task/999999"), nil), 404, notFound, job.APINotFound, "taskId = 999999")
	cv.apiError("PUT on bringYourOwnImage", c.Put(path("ns1", "/bringYourOwnImage"), map[string]any{}, nil), 405, "Client::MethodNotAllowed", job.APIMethod, "PUT")
	cv.apiError("PUT body over 4 KiB", c.Put(path("ns1", ""), map[string]any{"efiBootloaderPath": strings.Repeat("a", 5000)}, nil), 413, "Client::RequestEntityTooLarge", job.APIBodyTooLarge, 4<<10)
	huge := legacyBody()
	huge["description"] = strings.Repeat("x", job.MaxJobSize)
	cv.apiError("job body over the job limit", c.Post(path("ns1", "/bringYourOwnImage"), huge, nil), 413, "Client::RequestEntityTooLarge", job.APIBodyTooLarge, job.MaxJobSize)
	cv.apiError("unknown field in PUT", c.Put(path("ns1", ""), map[string]any{"bootid": 1}, nil), 400, badRequest, job.APIBadRequest, `unknown field "bootid"`)
	cv.apiError("unknown boot type", c.Get(path("ns1", "/boot?bootType=floppy"), nil), 400, badRequest, job.APIBadParam, "bootType", "harddisk, internal, ipxeCustomerScript, network, power or rescue")
	cv.apiError("deployment id not a number", c.Get(path("ns1", "/bringYourOwnImage/events?deployment=x"), nil), 400, badRequest, job.APIBadParam, "deployment", "a deployment id")
	cv.apiError("unknown deployment", c.Get(path("ns1", "/bringYourOwnImage/events?deployment=999999"), nil), 404, notFound, job.APINotFound, "deployment = 999999")

	// Boots.
	var boot struct {
		BootID                json.Number
		BootType, Description string
	}
	if err := c.Get(path("ns1", "/boot/1"), &boot); err != nil || boot.BootType != "harddisk" {
		t.Fatalf("boot 1: %+v %v", boot, err)
	}
	cv.text("GET boot 1", boot.Description, job.MsgBootHarddisk)
	if err := c.Get(path("ns1", "/boot/2"), &boot); err != nil || boot.BootType != "rescue" {
		t.Fatalf("boot 2: %+v %v", boot, err)
	}
	cv.text("GET boot 2", boot.Description, job.MsgBootRescue)

	// No deployment yet.
	cv.apiError("status before any deployment", c.Get(path("ns1", "/bringYourOwnImage"), nil), 404, notFound, job.APINoDeployment, "ns1")
	cv.apiError("install/status before any deployment", c.Get(path("ns1", "/install/status"), nil), 404, notFound, job.APINoDeployment, "ns1")
	cv.apiError("DELETE with nothing to erase", bc.Delete(path("ns1", "/bringYourOwnImage"), nil), 404, notFound, job.APINoDeployment, "ns1")

	// A reinstall: its task, the history's first entry, a second POST.
	var tk task
	if err := c.Post(path("ns1", "/reinstall"), reinstallBody(), &tk); err != nil {
		t.Fatal(err)
	}
	cv.text("POST reinstall's task", tk.Comment, job.MsgTaskReinstall)
	var got task
	if err := c.Get(path("ns1", "/task/"+tk.TaskID.String()), &got); err != nil {
		t.Fatal(err)
	}
	cv.text("GET task", got.Comment, job.MsgTaskReinstall)
	cv.apiError("second POST while one runs", c.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil), 409, "Client::BadRequest::TaskAlreadyExists",
		job.APITaskRunning, mustInt(t, tk.TaskID), "reinstallServer", "init", "ns1")
	cv.entry("history before pickup", historyOf(t, bc, "ns1", "").Events[0], job.MsgWaitingAgent)
	cv.apiError("events limit 0", c.Get(path("ns1", "/bringYourOwnImage/events?limit=0"), nil), 400, badRequest, job.APIBadParam, "limit", "1 to 1000")
	cv.apiError("events after -1", c.Get(path("ns1", "/bringYourOwnImage/events?after=-1"), nil), 400, badRequest, job.APIBadParam, "after", "a number")

	// The agent API.
	a.pickUp()
	old := *a
	a.pickUp() // the agent restarted: attempt 2
	cv.text("status after the agent restarted", *getStatus(t, bc, "ns1").Message, job.MsgRestarted, 2)
	cv.entry("history after the agent restarted", historyOf(t, bc, "ns1", "").last(), job.MsgRestarted, 2)
	st, _, ae := old.send(old.event("doing", job.StepPreflight, job.KindInfo, "", "", 0, 0))
	cv.refusal("events of attempt 1", st, ae.Class, ae.Message, 409, "Client::Conflict", job.APIStaleAttempt, 1, 2)
	thief := &agent{e: e, server: "ns1", token: b.token}
	st, ae = thief.do("GET", agentapi.JobPath("ns1"), nil, nil)
	cv.refusal("ns2's token on ns1's job", st, ae.Class, ae.Message, 403, "Client::Forbidden", job.APIAgentNotAllowed, "ns1")
	st, ae = (&agent{e: e, server: "ns1", token: "byoi_ag_nope"}).do("GET", agentapi.JobPath("ns1"), nil, nil)
	cv.refusal("unknown agent token", st, ae.Class, ae.Message, 401, "Client::Unauthorized", job.APIBadToken)
	st, _, class, msg = plainDo(t, http.DefaultClient, "GET", e.url+agentapi.JobPath("ns1"), "", nil)
	cv.refusal("agent without a token", st, class, msg, 401, "Client::Unauthorized", job.APINotAuthed)
	st, ae = a.do("POST", agentapi.AttemptsPath("ns1", 999999), nil, nil)
	cv.refusal("attempt on an unknown deployment", st, ae.Class, ae.Message, 404, notFound, job.APINotFound, "deployment = 999999")
	st, ae = a.do("POST", agentapi.EventsPath("ns1", a.depl), agentapi.EventBatch{Attempt: 0}, nil)
	cv.refusal("events of attempt 0", st, ae.Class, ae.Message, 400, badRequest, job.APIBadRequest, "attempt must be 1 or more")

	// DELETE: the deployment is cancelled, the agent told it is gone.
	depl := a.depl
	if err := c.Delete(path("ns1", "/bringYourOwnImage"), nil); err != nil {
		t.Fatal(err)
	}
	var hist []struct {
		Status  string
		Code    *string
		Message string
	}
	if err := bc.Get(path("ns1", "/bringYourOwnImage/history"), &hist); err != nil || len(hist) != 1 || hist[0].Status != "cancelled" || hist[0].Code == nil || *hist[0].Code != string(job.MsgCancelled) {
		t.Fatalf("history after DELETE: %+v %v", hist, err)
	}
	cv.text("history after DELETE", hist[0].Message, job.MsgCancelled)
	cv.entry("events of the cancelled deployment", historyOf(t, bc, "ns1", fmt.Sprintf("?deployment=%d", depl)).last(), job.MsgCancelled)
	if err := bc.Get(path("ns1", "/task/"+tk.TaskID.String()), &got); err != nil || got.Status != "cancelled" || got.Comment != job.Text(job.MsgTaskReinstall) {
		t.Errorf("task after DELETE: %+v %v", got, err)
	}
	st, _, ae = a.send()
	cv.refusal("heartbeat after DELETE", st, ae.Class, ae.Message, 410, "Client::Gone", job.APIDeploymentGone, depl)
	st, ae = a.do("POST", agentapi.AttemptsPath("ns1", depl), nil, nil)
	cv.refusal("attempt after DELETE", st, ae.Class, ae.Message, 410, "Client::Gone", job.APIDeploymentGone, depl)

	// Timeouts: an agent that went silent, a deployment no agent picked
	// up. (The clock moves: go-ovh's signatures would be out of time, the
	// access token carries on.)
	ns3 := e.server("ns3", "acme")
	e.server("ns4", "acme")
	var tk3 task
	if err := bc.Post(path("ns3", "/reinstall"), reinstallBody(), &tk3); err != nil {
		t.Fatal(err)
	}
	var tk4 task
	if err := bc.Post(path("ns4", "/reinstall"), reinstallBody(), &tk4); err != nil {
		t.Fatal(err)
	}
	ns3.pickUp()
	ctx := context.Background()
	e.clock.Advance(6 * time.Minute)
	if exp, err := e.srv.Sweep(ctx); err != nil || len(exp) != 1 {
		t.Fatalf("sweep after 6 minutes: %v %v", exp, err)
	}
	s3 := getStatus(t, bc, "ns3")
	if s3.Status != "error" {
		t.Errorf("silent agent: %+v", s3)
	}
	cv.text("status of a silent agent's deployment", *s3.Message, job.AgentSilent, "5m0s")
	cv.entry("history of a silent agent's deployment", historyOf(t, bc, "ns3", "").last(), job.AgentSilent, "5m0s")
	var is installStatus
	if err := bc.Get(path("ns3", "/install/status"), &is); err != nil {
		t.Fatal(err)
	}
	if is.Progress[0].Status != "error" || is.Progress[0].Error != job.Text(job.AgentSilent, "5m0s") {
		t.Errorf("install/status of a silent agent's deployment: %+v", is)
	}
	if err := bc.Get(path("ns3", "/task/"+tk3.TaskID.String()), &got); err != nil || got.Status != "ovhError" {
		t.Errorf("task of a silent agent: %+v %v", got, err)
	}
	e.clock.Advance(time.Hour)
	if exp, err := e.srv.Sweep(ctx); err != nil || len(exp) != 1 {
		t.Fatalf("sweep after an hour: %v %v", exp, err)
	}
	s4 := getStatus(t, bc, "ns4")
	if s4.Status != "error" {
		t.Errorf("never picked up: %+v", s4)
	}
	cv.text("status of a deployment never picked up", *s4.Message, job.APIPickupTimeout, "1h0m0s")
	cv.entry("history of a deployment never picked up", historyOf(t, bc, "ns4", "").last(), job.APIPickupTimeout, "1h0m0s")
	if err := bc.Get(path("ns4", "/task/"+tk4.TaskID.String()), &got); err != nil || got.Status != "ovhError" {
		t.Errorf("task never picked up: %+v %v", got, err)
	}

	// The Control Panel: its session and CSRF checks, then the API's own
	// answers through it.
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	st, _, class, msg = plainDo(t, browser, "GET", e.url+"/panel/api/session", "", nil)
	cv.refusal("panel without a session", st, class, msg, 401, "Client::Unauthorized", job.APINotAuthed)
	st, page, _, _ := plainDo(t, browser, "GET", e.url+"/panel/", "", nil)
	m := panelCSRF.FindSubmatch(page)
	if st != 200 || m == nil {
		t.Fatalf("panel page: %d, no CSRF token", st)
	}
	login := func(token string, hdr map[string]string) (int, []byte, string, string) {
		b, _ := json.Marshal(map[string]string{"token": token})
		return plainDo(t, browser, "POST", e.url+"/panel/api/login", string(b), hdr)
	}
	st, _, class, msg = login(cu.token, nil)
	cv.refusal("panel sign-in without the page's CSRF token", st, class, msg, 403, "Client::Forbidden", job.APICSRF)
	st, _, class, msg = login("byoi_at_nope", map[string]string{"X-CSRF-Token": string(m[1])})
	cv.refusal("panel sign-in with an unknown token", st, class, msg, 401, "Client::Unauthorized", job.APIBadToken)
	st, body, _, _ := login(cu.token, map[string]string{"X-CSRF-Token": string(m[1])})
	var sess struct{ Customer, CSRF string }
	if json.Unmarshal(body, &sess); st != 200 || sess.CSRF == "" {
		t.Fatalf("panel sign-in: %d %s", st, body)
	}
	del := e.url + "/panel/api" + path("ns1", "/bringYourOwnImage")
	st, _, class, msg = plainDo(t, browser, "DELETE", del, "", nil)
	cv.refusal("panel DELETE without the CSRF token", st, class, msg, 403, "Client::Forbidden", job.APICSRF)
	st, _, class, msg = plainDo(t, browser, "DELETE", del, "", map[string]string{"X-CSRF-Token": sess.CSRF})
	cv.refusal("panel DELETE with nothing to erase", st, class, msg, 404, notFound, job.APINoDeployment, "ns1")
	st, _, class, msg = plainDo(t, browser, "POST", e.url+"/panel/api/validate/ns1", strings.Repeat(" ", job.MaxJobSize+1), map[string]string{"X-CSRF-Token": sess.CSRF})
	cv.refusal("panel validation of a body over the job limit", st, class, msg, 413, "Client::RequestEntityTooLarge", job.APIBodyTooLarge, job.MaxJobSize)
	st, _, class, msg = plainDo(t, browser, "POST", e.url+"/panel/api/logout", "", nil)
	cv.refusal("panel sign-out without the CSRF token", st, class, msg, 403, "Client::Forbidden", job.APICSRF)

	ovhCatalogCoverage(t, e, cv, cu) // issue 24: ovh_catalog_test.go

	// Issue 22. A replayed signed request (byte for byte, within the
	// window) is refused, on the first try's instance or any other.
	put := e.signedReq(t, cu, "PUT", path("ns1", ""), `{"bootId":2}`)
	if st, class, msg := send(t, put, `{"bootId":2}`); st != 200 {
		t.Fatalf("signed PUT: %d %s %s", st, class, msg)
	}
	st, class, msg = send(t, put, `{"bootId":2}`)
	cv.refusal("a signed PUT replayed", st, class, msg, 400, badRequest, job.APIReplayed)

	// A credential its customer revoked (OVH's DELETE /me/api/credential)
	// fails at once.
	cr2, err := e.admin.AddCredential(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	e.secret(cr2.ApplicationSecret, cr2.ConsumerKey)
	now, _ := ovh.NewClient(e.url+"/1.0", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey) // the server's clock moved
	if err := now.Delete(fmt.Sprintf("/me/api/credential/%d", cr2.ID), nil); err != nil {
		t.Fatal(err)
	}
	revoked, _ := ovh.NewClient(e.url+"/1.0", cr2.ApplicationKey, cr2.ApplicationSecret, cr2.ConsumerKey)
	cv.apiError("a revoked credential", revoked.Get("/dedicated/server", nil), 403, "Client::Forbidden", job.APICredentialInvalid)

	// Attempts capped (3 by default): the fourth start fails the deployment.
	ex := e.server("ns5", "acme")
	if err := bc.Post(path("ns5", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		ex.pickUp()
	}
	as := ex.pickUpJob()
	st, ae = ex.do("POST", agentapi.AttemptsPath("ns5", as.DeploymentID), nil, nil)
	cv.refusal("a fourth attempt", st, ae.Class, ae.Message, 410, "Client::Gone", job.APIAttemptsExhausted, 3)

	// Bodies: a second env whose budget holds one small body and whose
	// bodies must arrive within a second.
	e2 := newEnv(t, cfg(func(c *controlplane.Config) {
		c.BodyMemory = 6 << 10
		c.BodyTimeout = time.Second
		c.BodyMinRate = 1 << 30
	}), withNetbootRate(t, 2, 2))
	cu2 := e2.customer("acme")
	e2.server("ns1", "acme")
	auth := map[string]string{"Authorization": "Bearer " + cu2.token, "Content-Type": "application/json"}
	slow := startSlow(t, e2.url, "PUT", "/1.0"+path("ns1", ""), auth, 4000, "{")
	waitFor(t, func() bool { return e2.srv.BodyMemoryInUse() > 0 })
	busy := startSlow(t, e2.url, "PUT", "/1.0"+path("ns1", ""), auth, 4000, "{")
	st, class, msg, hdr := busy.answer(5 * time.Second)
	cv.refusal("a body beyond the memory of bodies in flight", st, class, msg, 503, "Server::ServiceUnavailable", job.APIBusy)
	if hdr.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	st, class, msg, _ = slow.answer(5 * time.Second)
	cv.refusal("a body that did not arrive in time", st, class, msg, 408, "Client::RequestTimeout", job.APIBodyTimeout, "1s")

	// Network boot: rate-limited per source address (burst 2 here).
	for i := 0; i < 2; i++ {
		if st, _ := get(t, e2, "/boot/boot.ipxe"); st != 200 {
			t.Fatalf("boot.ipxe %d: %d", i, st)
		}
	}
	st, text := get(t, e2, "/boot/boot.ipxe")
	if want := job.Text(job.APIBootRateLimited, 30) + "\n"; st != 429 || text != want {
		t.Errorf("a third boot request at once: %d %q, want 429 %q", st, text, want)
	} else {
		cv.note(job.APIBootRateLimited, "network boot beyond the burst")
	}

	// Ours: the store failed under the server (closed here; before, a
	// read of a closed SQLite store recursed until the stack overflowed
	// and killed byoi-api). The error is logged, the customer sees only
	// that it is ours.
	e.st.Close()
	cv.apiError("a store that fails", bc.Get("/dedicated/server", nil), 500, "Server::InternalServerError", job.APIInternal)
	if !strings.Contains(e.logs.String(), "request failed") {
		t.Error("an internal error was not logged")
	}

	// Every control-plane code was triggered here, and nothing else.
	for _, code := range job.Codes() {
		if _, ok := cv.seen[code]; job.IsControlPlaneCode(code) && !ok {
			t.Errorf("control-plane code %s is never triggered by this test", code)
		}
	}
	var codes []string
	for code, how := range cv.seen {
		if !job.IsControlPlaneCode(code) {
			t.Errorf("%s (%s) is not in the control plane's group", code, how)
		}
		codes = append(codes, string(code)+": "+how)
	}
	sort.Strings(codes)
	t.Logf("%d control-plane codes triggered:\n%s", len(codes), strings.Join(codes, "\n"))
}
