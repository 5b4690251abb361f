package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The cases of issue 22 (trusting the network less): boot tokens handed
// out once, revocable and expirable secrets, replays, the database's own
// settings, the attempt cap.

const (
	silence = 90 * time.Second
	grace   = 15 * time.Minute
)

func mint(t *testing.T, s store.Store, id int64, hash string, now time.Time) bool {
	t.Helper()
	return must(s.MintBootToken(ctx, store.BootMint{ServerID: id, TokenHash: []byte(hash), Now: now, Silence: silence, Grace: grace}))
}

func byID(t *testing.T, s store.Store, name string) store.Server {
	t.Helper()
	return must(s.ServerByName(ctx, name))
}

// testBootTokens: a new server is armed; the first mint disarms it and a
// second mint is refused while the agent is live; silence re-arms; a
// customer's rescue arms but never takes a live agent's token; a reboot
// arm does; a done deployment makes the minted token expire and lets it be
// revoked; an operator's token is never revoked by the boot rules.
func testBootTokens(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	if got := byID(t, s, "ns1"); got.Armed != store.ArmedRescue || !got.HasToken || got.TokenSource != store.TokenByOperator {
		t.Fatalf("a new server: %+v, want armed with the operator's token", got)
	}
	if !mint(t, s, sv.ID, "boot1", t0) {
		t.Fatal("the first mint of an armed server was refused")
	}
	got := byID(t, s, "ns1")
	if got.Armed != store.Disarmed || got.TokenSource != store.TokenByNetboot || !got.TokenAt.Equal(t0) {
		t.Fatalf("after a mint: %+v", got)
	}
	if _, err := s.ServerByAgentToken(ctx, []byte("hash-ns1")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the operator's token still works after a mint: %v", err)
	}
	if got := must(s.ServerByAgentToken(ctx, []byte("boot1"))); got.ID != sv.ID {
		t.Fatal(got)
	}
	// Its rescue is booting (the mint counts as a sign of life): no
	// second token, even for an instant's race.
	if mint(t, s, sv.ID, "boot2", t0.Add(time.Second)) {
		t.Fatal("a second mint while the rescue boots")
	}
	// The agent speaks: still live after the mint's own time is old.
	ok(t, s.TouchAgent(ctx, sv.ID, t0.Add(60*time.Second)))
	if mint(t, s, sv.ID, "boot2", t0.Add(120*time.Second)) {
		t.Fatal("minted for a live agent")
	}
	// A customer asks for rescue while the agent is live: armed, and
	// still no mint (the agent's token is not taken).
	ok(t, s.SetBoot(ctx, sv.ID, store.BootRescue))
	if got := byID(t, s, "ns1"); got.Armed != store.ArmedRescue {
		t.Fatalf("PUT rescue did not arm: %+v", got)
	}
	if mint(t, s, sv.ID, "boot2", t0.Add(121*time.Second)) {
		t.Fatal("an armed mint took a live agent's token")
	}
	// Silent for 3 heartbeats: the next fetch mints.
	if !mint(t, s, sv.ID, "boot2", t0.Add(60*time.Second+silence)) {
		t.Fatal("no mint after the agent went silent")
	}
	if _, err := s.ServerByAgentToken(ctx, []byte("boot1")); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("the silent agent's token still works")
	}
	// A reboot arm mints at once, live agent or not.
	now := t0.Add(200 * time.Second)
	ok(t, s.TouchAgent(ctx, sv.ID, now))
	ok(t, s.ArmServer(ctx, sv.ID, store.ArmedReboot))
	ok(t, s.ArmServer(ctx, sv.ID, store.ArmedRescue)) // never lowers
	if got := byID(t, s, "ns1"); got.Armed != store.ArmedReboot {
		t.Fatalf("an arm lowered a reboot arm: %+v", got)
	}
	if !mint(t, s, sv.ID, "boot3", now.Add(time.Second)) {
		t.Fatal("no mint after a reboot arm")
	}
	if err := s.ArmServer(ctx, 999999, store.ArmedRescue); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("arm of no server: %v", err)
	}

	// A deployment: CreateDeployment arms, OpenAttempt disarms, done
	// records when the token starts to expire.
	d, _ := create(t, s, sv)
	if got := byID(t, s, "ns1"); got.Armed != store.ArmedRescue {
		t.Fatalf("a new deployment did not arm: %+v", got)
	}
	done := now.Add(time.Minute)
	must(s.OpenAttempt(ctx, sv.ID, d.ID, done))
	if got := byID(t, s, "ns1"); got.Armed != store.Disarmed {
		t.Fatalf("an attempt did not disarm: %+v", got)
	}
	must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: done,
		Events: []job.Event{{Seq: 1, Time: done, Status: job.StatusDone, Kind: job.KindInfo, Code: job.MsgDone, Message: "done"}}}))
	got = byID(t, s, "ns1")
	if !got.TokenDoneAt.Equal(done) || store.TokenExpired(got, done.Add(grace-time.Second), grace) || !store.TokenExpired(got, done.Add(grace), grace) {
		t.Fatalf("after done: %+v", got)
	}
	// The disk script revokes it: a token minted after the end is not
	// touched.
	if r := must(s.RevokeBootToken(ctx, sv.ID, now)); r {
		t.Fatal("revoked a token minted after the deployment's end")
	}
	if r := must(s.RevokeBootToken(ctx, sv.ID, done)); !r {
		t.Fatal("the boot token was not revoked")
	}
	if _, err := s.ServerByAgentToken(ctx, []byte("boot3")); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("a revoked token still works")
	}
	if got := byID(t, s, "ns1"); got.HasToken {
		t.Fatalf("after revocation: %+v", got)
	}
	// No token, not armed: no mint; DELETE arms.
	if mint(t, s, sv.ID, "boot4", done.Add(time.Hour)) {
		t.Fatal("minted for a server nobody armed, with no token")
	}
	must(s.ClearDeployments(ctx, sv.ID, done.Add(time.Hour)))
	if !mint(t, s, sv.ID, "boot4", done.Add(time.Hour)) {
		t.Fatal("DELETE did not arm")
	}
	// An operator's token: never revoked by the boot rules.
	ok(t, s.SetAgentToken(ctx, sv.ID, []byte("hand")))
	if r := must(s.RevokeBootToken(ctx, sv.ID, done.Add(2*time.Hour))); r {
		t.Fatal("revoked the operator's token")
	}
	if got := byID(t, s, "ns1"); got.TokenSource != store.TokenByOperator || store.TokenExpired(got, done.Add(100*time.Hour), grace) {
		t.Fatalf("operator's token: %+v", got)
	}
}

// testBootTokenRace: of many mints at once for one armed server, one wins.
func testBootTokenRace(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := s.MintBootToken(ctx, store.BootMint{ServerID: sv.ID, TokenHash: []byte{byte(i), 'x'}, Now: t0, Silence: silence, Grace: grace})
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			if m {
				won++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d mints won, want 1", won)
	}
}

// testRevocable: access tokens and credentials expire and are revoked;
// revoking a token ends the sessions opened with it.
func testRevocable(t *testing.T, s store.Store) {
	a := must(s.CreateCustomer(ctx, "acme", t0))
	b := must(s.CreateCustomer(ctx, "other", t0))
	tk := must(s.AddAccessToken(ctx, store.AccessToken{CustomerID: a.ID, Hash: []byte("t1"), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	must(s.AddAccessToken(ctx, store.AccessToken{CustomerID: b.ID, Hash: []byte("t2"), CreatedAt: t0}))
	got := must(s.AccessTokenByHash(ctx, []byte("t1")))
	if got.ID != tk.ID || got.CustomerID != a.ID || !got.ExpiresAt.Equal(t0.Add(time.Hour)) || !got.Valid(t0) || got.Valid(t0.Add(time.Hour)) {
		t.Fatalf("%+v", got)
	}
	if l := must(s.AccessTokens(ctx, a.ID)); len(l) != 1 || l[0].ID != tk.ID || l[0].CustomerName != "acme" {
		t.Fatalf("acme's tokens %+v", l)
	}
	if l := must(s.AccessTokens(ctx, 0)); len(l) != 2 {
		t.Fatalf("all tokens %+v", l)
	}
	ok(t, s.CreateSession(ctx, store.Session{IDHash: []byte("s1"), CustomerID: a.ID, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), AccessTokenID: tk.ID}))
	ok(t, s.CreateSession(ctx, store.Session{IDHash: []byte("s2"), CustomerID: a.ID, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	if se := must(s.SessionByHash(ctx, []byte("s1"), t0)); se.AccessTokenID != tk.ID {
		t.Fatalf("%+v", se)
	}
	if err := s.RevokeAccessToken(ctx, b.ID, tk.ID, t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another customer revoked it: %v", err)
	}
	ok(t, s.RevokeAccessToken(ctx, a.ID, tk.ID, t0.Add(time.Minute)))
	ok(t, s.RevokeAccessToken(ctx, 0, tk.ID, t0.Add(2*time.Minute))) // again: no error
	if got := must(s.AccessTokenByHash(ctx, []byte("t1"))); got.Valid(t0) || !got.RevokedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("revoked: %+v", got)
	}
	if _, err := s.CustomerByAccessToken(ctx, []byte("t1")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a revoked token's customer: %v", err)
	}
	if _, err := s.SessionByHash(ctx, []byte("s1"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the revoked token's session: %v", err)
	}
	must(s.SessionByHash(ctx, []byte("s2"), t0))
	if err := s.RevokeAccessToken(ctx, 0, 999999, t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}

	cr := must(s.CreateCredential(ctx, store.Credential{CustomerID: a.ID, AppKey: "ak", SealedSecret: []byte{1}, ConsumerKeyHash: []byte{2}, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	must(s.CreateCredential(ctx, store.Credential{CustomerID: b.ID, AppKey: "bk", SealedSecret: []byte{1}, ConsumerKeyHash: []byte{3}, CreatedAt: t0}))
	if got := must(s.CredentialByID(ctx, cr.ID)); got.AppKey != "ak" || got.CustomerName != "acme" || !got.Valid(t0) || got.Valid(t0.Add(time.Hour)) {
		t.Fatalf("%+v", got)
	}
	if l := must(s.Credentials(ctx, a.ID)); len(l) != 1 || l[0].ID != cr.ID {
		t.Fatalf("%+v", l)
	}
	if err := s.RevokeCredential(ctx, b.ID, cr.ID, t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another customer revoked it: %v", err)
	}
	ok(t, s.RevokeCredential(ctx, a.ID, cr.ID, t0))
	if got := must(s.CredentialByAppKey(ctx, "ak")); got.Valid(t0) || got.RevokedAt.IsZero() {
		t.Fatalf("revoked: %+v", got)
	}
}

// testSignatures: a signature is remembered until it expires, on every
// caller; an expired one is forgotten.
func testSignatures(t *testing.T, s store.Store) {
	ok(t, s.RememberSignature(ctx, []byte("sig1"), t0.Add(10*time.Minute), t0))
	if err := s.RememberSignature(ctx, []byte("sig1"), t0.Add(10*time.Minute), t0.Add(time.Second)); !errors.Is(err, store.ErrExists) {
		t.Fatalf("a replay: %v", err)
	}
	ok(t, s.RememberSignature(ctx, []byte("sig2"), t0.Add(10*time.Minute), t0))
	// After its expiry it is forgotten (the same bytes are a new request).
	ok(t, s.RememberSignature(ctx, []byte("sig1"), t0.Add(30*time.Minute), t0.Add(11*time.Minute)))
}

// testMeta: settings are set once; Empty and SealedSample see the data.
func testMeta(t *testing.T, s store.Store) {
	if e := must(s.Empty(ctx)); !e {
		t.Fatal("a new store is not empty")
	}
	if _, err := s.Meta(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := s.SealedSample(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	ok(t, s.PutMeta(ctx, "k", []byte("v1")))
	if err := s.PutMeta(ctx, "k", []byte("v2")); !errors.Is(err, store.ErrExists) {
		t.Fatal(err)
	}
	if v := must(s.Meta(ctx, "k")); string(v) != "v1" {
		t.Fatal(string(v))
	}
	sv := server(t, s, "acme", "ns1")
	if e := must(s.Empty(ctx)); e {
		t.Fatal("a store with a server is empty")
	}
	create(t, s, sv)
	if x := must(s.SealedSample(ctx)); x.ServerID != sv.ID || string(x.Sealed) != "sealed" {
		t.Fatalf("%+v", x)
	}
	c := must(s.CustomerByName(ctx, "acme"))
	must(s.CreateCredential(ctx, store.Credential{CustomerID: c.ID, AppKey: "ak", SealedSecret: []byte("cs"), ConsumerKeyHash: []byte{2}, CreatedAt: t0}))
	if x := must(s.SealedSample(ctx)); x.AppKey != "ak" || string(x.Sealed) != "cs" {
		t.Fatalf("%+v", x)
	}
}

// testAttemptsCap: a deployment created with a cap fails when its agent
// would open one attempt more, with its own text; its task ends ovhError.
func testAttemptsCap(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	d, tk, err := s.CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeLegacy, SealedJob: []byte("sealed"), MaxAttempts: 2, Now: t0})
	ok(t, err)
	if d.MaxAttempts != 2 {
		t.Fatalf("%+v", d)
	}
	for i := 1; i <= 2; i++ {
		if n := must(s.OpenAttempt(ctx, sv.ID, d.ID, t0)); n != i {
			t.Fatalf("attempt %d, want %d", n, i)
		}
	}
	_, err = s.OpenAttempt(ctx, sv.ID, d.ID, t0.Add(time.Minute))
	var ex *store.AttemptsExhaustedError
	if !errors.As(err, &ex) || !errors.Is(err, store.ErrGone) || ex.Attempts != 2 {
		t.Fatalf("the third attempt: %v", err)
	}
	got := must(s.Deployment(ctx, sv.ID, d.ID))
	if got.Status != store.StatusError || got.Code != job.APIAttemptsExhausted || got.Message != job.Text(job.APIAttemptsExhausted, 2) || got.Attempt != 2 {
		t.Fatalf("%+v", got)
	}
	if task := must(s.Task(ctx, sv.ID, tk.ID)); task.Status != store.TaskOVHError {
		t.Fatalf("task %+v", task)
	}
	h := must(s.History(ctx, d.ID, 0, 100))
	if last := h[len(h)-1]; last.Code != job.APIAttemptsExhausted || last.Source != store.SourceControlPlane {
		t.Fatalf("history %+v", h)
	}
	if _, err := s.OpenAttempt(ctx, sv.ID, d.ID, t0); !errors.Is(err, store.ErrGone) {
		t.Fatal(err)
	}
}

// testClosed: every call on a closed store returns an error (issue 22:
// a read after Close recursed in the old SQLite store until the stack
// overflowed and killed byoi-api); a second Close does nothing.
func testClosed(t *testing.T, s store.Store) {
	ctx := context.Background()
	cu := must(s.CreateCustomer(ctx, "acme", t0))
	must(s.CreateServer(ctx, store.Server{CustomerID: cu.ID, Name: "ns1", CreatedAt: t0}, []byte("hash-ns1")))
	ok(t, s.Close())
	if _, err := s.ServerByName(ctx, "ns1"); err == nil {
		t.Error("ServerByName on a closed store: no error")
	}
	if _, err := s.CustomerByName(ctx, "acme"); err == nil {
		t.Error("CustomerByName on a closed store: no error")
	}
	if _, err := s.CurrentDeployment(ctx, 1); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Errorf("CurrentDeployment on a closed store: %v", err)
	}
	if _, err := s.CreateCustomer(ctx, "other", t0); err == nil {
		t.Error("CreateCustomer on a closed store: no error")
	}
	s.Close()
}
