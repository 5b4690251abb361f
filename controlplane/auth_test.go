package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

// rawSigned sends a request signed by hand (to vary one part at a time).
func rawSigned(t *testing.T, e *env, method, p string, body []byte, appKey, secret, consumer string, ts int64, tamper func(*http.Request)) (int, map[string]any, http.Header) {
	t.Helper()
	url := e.url + "/1.0" + p
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	if appKey != "" {
		req.Header.Set("X-Ovh-Application", appKey)
	}
	if consumer != "" {
		req.Header.Set("X-Ovh-Consumer", consumer)
		req.Header.Set("X-Ovh-Timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("X-Ovh-Signature", controlplane.Sign(secret, consumer, method, url, body, ts))
	}
	if tamper != nil {
		tamper(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var v map[string]any
	json.Unmarshal(data, &v)
	if string(data) == "null" {
		v = map[string]any{"null": true}
	}
	return resp.StatusCode, v, resp.Header
}

// TestAuthRefusals: each way a customer request can fail authentication
// gets OVH's status, class and words; a good one passes, by hand and by
// go-ovh; every answer carries X-Ovh-QueryID.
func TestAuthRefusals(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	e.server("ns1", "acme")
	cr := cu.cred
	now := e.clock.Now().Unix()
	p := path("ns1", "/boot?bootType=rescue")

	st, v, h := rawSigned(t, e, "GET", p, nil, cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, nil)
	if st != 200 || h.Get("X-Ovh-QueryID") == "" {
		t.Fatalf("good request: %d %v", st, v)
	}
	// a body is signed too: PUT with the exact bytes
	body := []byte(`{"bootId":2}`)
	if st, v, _ := rawSigned(t, e, "PUT", path("ns1", ""), body, cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, nil); st != 200 || v["null"] != true {
		t.Fatalf("signed PUT: %d %v", st, v)
	}
	for _, tt := range []struct {
		name                     string
		appKey, secret, consumer string
		ts                       int64
		tamper                   func(*http.Request)
		status                   int
		class, msg               string
	}{
		{"no credential", "", "", "", 0, nil, 401, "Client::Unauthorized", job.Text(job.APINotAuthed)},
		{"app key only", cr.ApplicationKey, "", "", 0, nil, 401, "Client::Unauthorized", job.Text(job.APINotAuthed)},
		{"bad signature", cr.ApplicationKey, "wrong-secret", cr.ConsumerKey, now, nil, 400, "Client::BadRequest", job.Text(job.APIInvalidSig)},
		{"stale timestamp", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now - 600, nil, 400, "Client::BadRequest", job.Text(job.APIOutOfTime)},
		{"future timestamp", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now + 600, nil, 400, "Client::BadRequest", job.Text(job.APIOutOfTime)},
		{"unknown app key", "0123456789abcdef", cr.ApplicationSecret, cr.ConsumerKey, now, nil, 403, "Client::Forbidden", job.Text(job.APIInvalidKey)},
		{"wrong consumer key", cr.ApplicationKey, cr.ApplicationSecret, "ffffffffffffffffffffffffffffffff", now, nil, 403, "Client::Forbidden", job.Text(job.APIInvalidCred)},
		{"url changed after signing", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, func(r *http.Request) { r.URL.RawQuery = "bootType=harddisk" }, 400, "Client::BadRequest", job.Text(job.APIInvalidSig)},
		{"bad bearer", "", "", "", 0, func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, 401, "Client::Unauthorized", job.Text(job.APIBadToken)},
		{"an agent token is not a customer token", "", "", "", 0, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+e.secrets[len(e.secrets)-1]) }, 401, "Client::Unauthorized", job.Text(job.APIBadToken)},
	} {
		st, v, h := rawSigned(t, e, "GET", p, nil, tt.appKey, tt.secret, tt.consumer, tt.ts, tt.tamper)
		if st != tt.status || v["class"] != tt.class || v["message"] != tt.msg || h.Get("X-Ovh-QueryID") == "" {
			t.Errorf("%s: got %d %v, want %d %s %q", tt.name, st, v, tt.status, tt.class, tt.msg)
		}
	}
	// A changed method fails the signature.
	if st, v, _ := rawSigned(t, e, "GET", path("ns1", "/bringYourOwnImage"), nil, cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, func(r *http.Request) { r.Method = "DELETE" }); st != 400 || v["message"] != job.Text(job.APIInvalidSig) {
		t.Fatalf("method changed: %d %v", st, v)
	}
	// A tampered body fails the signature.
	if st, v, _ := rawSigned(t, e, "PUT", path("ns1", ""), body, cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, func(r *http.Request) {
		r.Body = io.NopCloser(strings.NewReader(`{"bootId":1}`))
	}); st != 400 || v["message"] != job.Text(job.APIInvalidSig) {
		t.Fatalf("tampered body: %d %v", st, v)
	}
	// go-ovh through its own error type
	bad, _ := ovh.NewClient(e.url+"/1.0", cr.ApplicationKey, "wrong", cr.ConsumerKey)
	wantAPIErr(t, bad.Get("/dedicated/server", nil), 400, "Client::BadRequest", job.Text(job.APIInvalidSig))
	// /auth/time needs nothing and is a bare integer
	var ts int64
	if err := bad.GetUnAuth("/auth/time", &ts); err != nil || ts != e.clock.Now().Unix() {
		t.Fatalf("auth/time %d %v", ts, err)
	}
}

// TestPublicURL: behind a proxy, signatures are checked against the
// public URL the client used.
func TestPublicURL(t *testing.T) {
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.PublicURL = "https://api.example.com/byoi" }))
	cu := e.customer("acme")
	e.server("ns1", "acme")
	cr := cu.cred
	now := e.clock.Now().Unix()
	tamper := func(r *http.Request) {
		pub := "https://api.example.com/byoi/1.0" + path("ns1", "")
		r.Header.Set("X-Ovh-Signature", controlplane.Sign(cr.ApplicationSecret, cr.ConsumerKey, "GET", pub, nil, now))
	}
	if st, v, _ := rawSigned(t, e, "GET", path("ns1", ""), nil, cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, tamper); st != 200 {
		t.Fatalf("public URL signature: %d %v", st, v)
	}
	if st, _, _ := rawSigned(t, e, "GET", path("ns1", ""), nil, cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey, now, nil); st != 400 {
		t.Fatalf("a signature over the internal URL passed behind a proxy: %d", st)
	}
}

// TestAgentScope: a server's token opens only its own paths; stale
// attempts, deleted and ended deployments are refused as agentapi says.
func TestAgentScope(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	b := e.server("ns2", "acme")
	if err := cu.bearer.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	if err := cu.bearer.Post(path("ns2", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	a.pickUp()
	b.pickUp()
	// b's token on a's paths
	thief := &agent{e: e, server: "ns1", token: b.token, depl: a.depl, att: 1}
	for _, tt := range []struct{ method, p string }{
		{"GET", agentapi.JobPath("ns1")},
		{"POST", agentapi.AttemptsPath("ns1", a.depl)},
		{"POST", agentapi.EventsPath("ns1", a.depl)},
		{"POST", agentapi.InventoryPath("ns1")},
	} {
		var in any
		if strings.HasSuffix(tt.p, "events") {
			in = agentapi.EventBatch{Attempt: 1}
		} else if strings.HasSuffix(tt.p, "inventory") {
			in = inv
		}
		st, ae := thief.do(tt.method, tt.p, in, nil)
		if st != 403 || ae.Class != "Client::Forbidden" || ae.Message != job.Text(job.APIAgentNotAllowed, "ns1") {
			t.Errorf("%s %s with another server's token: %d %+v", tt.method, tt.p, st, ae)
		}
	}
	// b's token with b's name but a's deployment
	cross := &agent{e: e, server: "ns2", token: b.token, depl: a.depl, att: 1}
	if st, _, ae := cross.send(cross.event("doing", job.StepPreflight, job.KindInfo, "", "", 0, 0)); st != 404 {
		t.Errorf("another server's deployment: %d %+v", st, ae)
	}
	// unknown token, no token
	nobody := &agent{e: e, server: "ns1", token: "byoi_ag_nope"}
	if st, ae := nobody.do("GET", agentapi.JobPath("ns1"), nil, nil); st != 401 || ae.Class != "Client::Unauthorized" {
		t.Errorf("unknown token: %d %+v", st, ae)
	}
	// a fresh token replaces the old one
	fresh, err := e.admin.NewAgentToken(context.Background(), "ns1")
	if err != nil {
		t.Fatal(err)
	}
	e.secret(fresh)
	if st, _ := a.do("GET", agentapi.JobPath("ns1"), nil, nil); st != 401 {
		t.Errorf("old token after server token: %d", st)
	}
	a.token = fresh
	// stale attempt
	old := *a
	a.pickUp() // attempt 2
	if st, _, ae := old.send(old.event("doing", job.StepPreflight, job.KindInfo, "", "", 0, 0)); st != 409 || ae.Message != job.Text(job.APIStaleAttempt, 1, 2) {
		t.Errorf("stale attempt: %d %+v", st, ae)
	}
	// bad batch
	if st, _, ae := a.send(a.event("doing", "nostep", job.KindInfo, "", "", 0, 0)); st != 400 || ae.Class != "Client::BadRequest" {
		t.Errorf("bad event: %d %+v", st, ae)
	}
	// DELETE cancels: the agent gets 410 and the job is not served
	if err := cu.bearer.Delete(path("ns1", "/bringYourOwnImage"), nil); err != nil {
		t.Fatal(err)
	}
	if st, _, ae := a.send(); st != 410 || ae.Class != "Client::Gone" {
		t.Errorf("heartbeat after DELETE: %d %+v", st, ae)
	}
	if st, _ := a.do("GET", agentapi.JobPath("ns1"), nil, nil); st != 204 {
		t.Errorf("job after DELETE: %d", st)
	}
	if st, _ := a.do("POST", agentapi.AttemptsPath("ns1", a.depl), nil, nil); st != 410 {
		t.Errorf("attempt after DELETE: %d", st)
	}
	var hist []map[string]any
	cu.bearer.Get(path("ns1", "/bringYourOwnImage/history"), &hist)
	if len(hist) != 1 || hist[0]["status"] != "cancelled" {
		t.Fatalf("history %v", hist)
	}
}

// TestBodyLimits: bodies over their limit get 413 with the catalog's text.
func TestBodyLimits(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	big := map[string]any{"bootId": 1, "efiBootloaderPath": strings.Repeat("a", 5000)}
	wantAPIErr(t, cu.bearer.Put(path("ns1", ""), big, nil), 413, "Client::RequestEntityTooLarge", job.Text(job.APIBodyTooLarge, 4096))
	huge := legacyBody()
	huge["description"] = strings.Repeat("x", job.MaxJobSize)
	wantAPIErr(t, cu.bearer.Post(path("ns1", "/bringYourOwnImage"), huge, nil), 413, "Client::RequestEntityTooLarge", job.Text(job.APIBodyTooLarge, job.MaxJobSize))
	req, _ := http.NewRequest("POST", e.url+agentapi.InventoryPath("ns1"), strings.NewReader(`{"bootMode":"uefi","agentVersion":"`+strings.Repeat("v", agentapi.MaxInventoryBody)+`"}`))
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("inventory over the limit: %d", resp.StatusCode)
	}
}

// TestRestartSafety: the server and its database close and reopen; the
// history is intact, the agent gets the same job and a new attempt, which
// is recorded.
func TestRestartSafety(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	if err := cu.signed.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	first := a.pickUp()
	a.mustSend(a.event("doing", job.StepPreflight, job.KindInfo, "", "", 0, 0), a.event("doing", job.StepDownload, job.KindProgress, "", "", 5, 10))
	e.restart()
	cu = &customer{cred: cu.cred, token: cu.token}
	cu.bearer, _ = ovh.NewAccessTokenClient(e.url+"/1.0", cu.token)
	a.e = e
	var evs struct{ Events []map[string]any }
	if err := cu.bearer.Get(path("ns1", "/bringYourOwnImage/events"), &evs); err != nil || len(evs.Events) != 3 {
		t.Fatalf("history after restart: %v %v", evs, err)
	}
	second := a.pickUp()
	if string(second.Job) != string(first.Job) || second.DeploymentID != first.DeploymentID || second.Attempts != 1 || a.att != 2 {
		t.Fatalf("re-served job differs: %+v vs %+v (attempt %d)", second, first, a.att)
	}
	var st byoiStatus
	cu.bearer.Get(path("ns1", "/bringYourOwnImage"), &st)
	if *st.Message != job.Text(job.MsgRestarted, 2) {
		t.Fatalf("status after restart %q", *st.Message)
	}
	cu.bearer.Get(path("ns1", "/bringYourOwnImage/events"), &evs)
	last := evs.Events[len(evs.Events)-1]
	if last["message"] != job.Text(job.MsgRestarted, 2) || last["source"] != "controlplane" || last["attempt"] != json.Number("2") && last["attempt"] != float64(2) {
		t.Fatalf("restart entry %v", last)
	}
	if ack := a.mustSend(a.event("done", job.StepFinish, job.KindInfo, "", "", 0, 0)); !ack.Done {
		t.Fatal(ack)
	}
}

// TestSilenceTimeout: two Servers on one database race their timeout
// loops on a fake clock; a silent deployment fails exactly once, with
// AgentSilent and task ovhError. A deployment never picked up waits for
// the pickup timeout.
func TestSilenceTimeout(t *testing.T) {
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.AgentTimeout = 5 * time.Minute; c.PickupTimeout = time.Hour }))
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	e.server("ns2", "acme")
	var tk task
	if err := cu.bearer.Post(path("ns1", "/reinstall"), reinstallBody(), &tk); err != nil {
		t.Fatal(err)
	}
	if err := cu.bearer.Post(path("ns2", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	a.pickUp()
	// a second instance on the same file, same clock
	e2 := &env{t: t, dbPath: e.dbPath, keyPath: e.keyPath, clock: e.clock, logs: &logBuffer{}}
	e2.start(cfg(func(c *controlplane.Config) { c.AgentTimeout = 5 * time.Minute; c.PickupTimeout = time.Hour }))
	defer e2.stop()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range []*controlplane.Server{e.srv, e2.srv} {
		wg.Add(1)
		go func() { defer wg.Done(); s.RunTimeouts(ctx) }()
	}
	waitTickers(t, e.clock, 2)
	tick := func() {
		for i := 0; i < 2; i++ { // each loop takes a tick; the second Tick waits for the first sweep
			e.clock.Tick(ctx)
		}
	}
	e.clock.Advance(4 * time.Minute)
	tick()
	a.mustSend() // heartbeat at +4m
	e.clock.Advance(4 * time.Minute)
	tick()
	if st := getStatus(t, cu.bearer, "ns1"); st.Status != "doing" {
		t.Fatalf("failed despite the heartbeat: %+v", st)
	}
	e.clock.Advance(2 * time.Minute) // +10m, silent for 6m
	tick()
	tick()
	st := getStatus(t, cu.bearer, "ns1")
	if st.Status != "error" || *st.Message != job.Text(job.AgentSilent, "5m0s") {
		t.Fatalf("%+v", st)
	}
	var got task
	cu.bearer.Get(path("ns1", "/task/"+tk.TaskID.String()), &got)
	if got.Status != "ovhError" {
		t.Fatalf("task %+v", got)
	}
	if s := getStatus(t, cu.bearer, "ns2"); s.Status != "doing" {
		t.Fatalf("never picked up, failed before the pickup timeout: %+v", s)
	}
	var evs struct{ Events []map[string]any }
	cu.bearer.Get(path("ns1", "/bringYourOwnImage/events"), &evs)
	n := 0
	for _, ev := range evs.Events {
		if ev["code"] == string(job.AgentSilent) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("AgentSilent recorded %d times", n)
	}
	if st, _, _ := a.send(); st != 410 {
		t.Fatalf("late agent: %d", st)
	}
	e.clock.Advance(time.Hour)
	tick()
	tick()
	if s := getStatus(t, cu.bearer, "ns2"); s.Status != "error" || *s.Message != job.Text(job.APIPickupTimeout, "1h0m0s") {
		t.Fatalf("pickup timeout: %+v", s)
	}
	cancel()
	wg.Wait()
	logs := e.logs.String() + e2.logs.String()
	if c := strings.Count(logs, "agent silent"); c != 2 { // ns1 then ns2, once each fleet-wide
		t.Errorf("%d expiries logged, want 2:\n%s", c, logs)
	}
}

func waitTickers(t *testing.T, c *fakeClock, n int) {
	for i := 0; i < 1000; i++ {
		c.mu.Lock()
		k := len(c.tickers)
		c.mu.Unlock()
		if k >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("timeout loops did not start")
}
