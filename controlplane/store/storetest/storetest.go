// Package storetest is the conformance suite every store.Store backend
// must pass (dex's storage/conformance model): a table of cases run
// against a constructor of empty stores. The SQLite store runs it in its
// tests; the PostgreSQL store will run the same.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Run runs every case, each on a new empty store from newStore.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			defer func() {
				if r := recover(); r != nil {
					if f, ok := r.(failure); ok {
						t.Fatalf("unexpected error: %v", f.err)
					}
					panic(r)
				}
			}()
			c.fn(t, s)
		})
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

var cases = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"Customers", testCustomers},
	{"Credentials", testCredentials},
	{"Servers", testServers},
	{"OneRunningDeployment", testOneRunning},
	{"ConcurrentCreate", testConcurrentCreate},
	{"DeploymentDone", testDone},
	{"DeploymentError", testError},
	{"EventsIdempotent", testIdempotent},
	{"StaleAttempt", testStale},
	{"Restart", testRestart},
	{"Clear", testClear},
	{"ExpireSilentOnce", testExpire},
	{"PickupTimeout", testPickup},
	{"HistoryPaging", testPaging},
	{"NotFound", testNotFound},
	{"Sessions", testSessions},
	{"Netboot", testNetboot},
	{"BootTokens", testBootTokens},
	{"BootTokenRace", testBootTokenRace},
	{"Revocable", testRevocable},
	{"Signatures", testSignatures},
	{"Meta", testMeta},
	{"AttemptsCap", testAttemptsCap},
	{"ClosedStore", testClosed},
	{"ServerProps", testServerProps}, // issue 24
	{"Tasks", testTasks},             // issue 24
	{"Fleet", testFleet},
	{"ServerBMC", testServerBMC},
	{"PowerClaim", testPowerClaim},
	{"PowerAbandoned", testPowerAbandoned},
	{"PowerOutcome", testPowerOutcome},
	{"RescueDeadline", testRescueDeadline},
	{"BootWatch", testBootWatch},
	{"DeploymentLogs", testDeploymentLogs},
}

// must returns v, or fails the case (Run recovers the panic into t.Fatal).
func must[T any](v T, err error) T {
	if err != nil {
		panic(failure{err})
	}
	return v
}

type failure struct{ err error }

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var ctx = context.Background()

func server(t *testing.T, s store.Store, customer, name string) store.Server {
	t.Helper()
	c, err := s.CustomerByName(ctx, customer)
	if errors.Is(err, store.ErrNotFound) {
		c = must(s.CreateCustomer(ctx, customer, t0))
	} else {
		ok(t, err)
	}
	return must(s.CreateServer(ctx, store.Server{CustomerID: c.ID, Name: name, CreatedAt: t0}, []byte("hash-"+name)))
}

func create(t *testing.T, s store.Store, sv store.Server) (store.Deployment, store.Task) {
	t.Helper()
	d, tk, err := s.CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeLegacy, SealedJob: []byte("sealed"), Checksum: "abc", Now: t0})
	ok(t, err)
	return d, tk
}

func ev(seq int64, status job.Status, step job.Step, kind job.Kind, done, total int64) job.Event {
	return job.Event{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second), Status: status, Step: step, Kind: kind, BytesDone: done, BytesTotal: total}
}

func testCustomers(t *testing.T, s store.Store) {
	c := must(s.CreateCustomer(ctx, "acme", t0))
	if _, err := s.CreateCustomer(ctx, "acme", t0); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate customer: %v", err)
	}
	got := must(s.CustomerByName(ctx, "acme"))
	if got.ID != c.ID || got.Name != "acme" || !got.CreatedAt.Equal(t0) {
		t.Fatalf("got %+v want %+v", got, c)
	}
	if got := must(s.Customer(ctx, c.ID)); got.Name != "acme" {
		t.Fatal(got)
	}
	ok(t, s.CreateAccessToken(ctx, c.ID, []byte("tokhash"), t0))
	if err := s.CreateAccessToken(ctx, c.ID, []byte("tokhash"), t0); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate token: %v", err)
	}
	if got := must(s.CustomerByAccessToken(ctx, []byte("tokhash"))); got.ID != c.ID {
		t.Fatal(got)
	}
	if _, err := s.CustomerByAccessToken(ctx, []byte("other")); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
}

func testCredentials(t *testing.T, s store.Store) {
	c := must(s.CreateCustomer(ctx, "acme", t0))
	cr := must(s.CreateCredential(ctx, store.Credential{CustomerID: c.ID, AppKey: "ak", SealedSecret: []byte{1, 2}, ConsumerKeyHash: []byte{3}, CreatedAt: t0}))
	got := must(s.CredentialByAppKey(ctx, "ak"))
	if got.ID != cr.ID || got.CustomerID != c.ID || string(got.SealedSecret) != "\x01\x02" || string(got.ConsumerKeyHash) != "\x03" {
		t.Fatalf("%+v", got)
	}
	if _, err := s.CreateCredential(ctx, store.Credential{CustomerID: c.ID, AppKey: "ak", SealedSecret: []byte{1}, ConsumerKeyHash: []byte{4}, CreatedAt: t0}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate app key: %v", err)
	}
	if _, err := s.CredentialByAppKey(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
}

func testServers(t *testing.T, s store.Store) {
	a := server(t, s, "acme", "ns1")
	server(t, s, "acme", "ns0")
	server(t, s, "other", "ns2")
	if _, err := s.CreateServer(ctx, store.Server{CustomerID: a.CustomerID, Name: "ns1", CreatedAt: t0}, []byte("x")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate server: %v", err)
	}
	if a.BootID != store.BootRescue {
		t.Errorf("new server boots %d, want rescue", a.BootID)
	}
	list := must(s.ListServers(ctx, a.CustomerID))
	if len(list) != 2 || list[0].Name != "ns0" || list[1].Name != "ns1" {
		t.Fatalf("list %+v", list)
	}
	if got := must(s.ServerByAgentToken(ctx, []byte("hash-ns1"))); got.ID != a.ID {
		t.Fatal(got)
	}
	ok(t, s.SetAgentToken(ctx, a.ID, []byte("new")))
	if _, err := s.ServerByAgentToken(ctx, []byte("hash-ns1")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old token still works: %v", err)
	}
	ok(t, s.SetBoot(ctx, a.ID, store.BootHarddisk))
	ok(t, s.SetEFIBootloaderPath(ctx, a.ID, `\efi\debian\grubx64.efi`))
	ok(t, s.PutInventory(ctx, a.ID, []byte(`{"bootMode":"uefi"}`), t0))
	got := must(s.ServerByName(ctx, "ns1"))
	if got.BootID != store.BootHarddisk || got.EFIBootloaderPath != `\efi\debian\grubx64.efi` || string(got.Inventory) != `{"bootMode":"uefi"}` || !got.InventoryAt.Equal(t0) {
		t.Fatalf("%+v", got)
	}
	if err := s.SetBoot(ctx, 9999, 1); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
}

func testOneRunning(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	other := server(t, s, "acme", "ns2")
	d, tk := create(t, s, sv)
	if d.Status != store.StatusDoing || d.Message != job.Text(job.MsgStarting) || tk.Status != store.TaskInit || tk.Function != store.FunctionReinstall || d.TaskID != tk.ID || d.ServerName != "ns1" {
		t.Fatalf("%+v %+v", d, tk)
	}
	_, _, err := s.CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeReinstall, SealedJob: []byte("x"), Now: t0})
	var tr *store.TaskRunningError
	if !errors.As(err, &tr) || tr.Task.ID != tk.ID || tr.Server != "ns1" || tr.Task.Status != store.TaskInit {
		t.Fatalf("second deployment: %v", err)
	}
	want := job.Text(job.APITaskRunning, tk.ID, "reinstallServer", "init", "ns1")
	if err.Error() != want {
		t.Errorf("%q, want %q", err.Error(), want)
	}
	create(t, s, other) // another server is independent
	_, tk2 := create(t, s, server(t, s, "acme", "ns3"))
	if tk2.ID <= tk.ID {
		t.Errorf("task ids not increasing: %d then %d", tk.ID, tk2.ID)
	}
}

func testConcurrentCreate(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted, refused := 0, 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := s.CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeLegacy, SealedJob: []byte("x"), Now: t0})
			var tr *store.TaskRunningError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				accepted++
			case errors.As(err, &tr):
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if accepted != 1 || refused != 19 {
		t.Fatalf("accepted %d refused %d", accepted, refused)
	}
}

func start(t *testing.T, s store.Store) (store.Server, store.Deployment) {
	sv := server(t, s, "acme", "ns1")
	d, _ := create(t, s, sv)
	if _, _, err := s.RunningDeployment(ctx, sv.ID); err != nil {
		t.Fatal(err)
	}
	n := must(s.OpenAttempt(ctx, sv.ID, d.ID, t0))
	if n != 1 {
		t.Fatalf("attempt %d", n)
	}
	return sv, d
}

func testDone(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	tk := must(s.Task(ctx, sv.ID, d.TaskID))
	if tk.Status != store.TaskDoing {
		t.Fatalf("task after attempt: %s", tk.Status)
	}
	ack := must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{
		ev(1, job.StatusDoing, job.StepPreflight, job.KindInfo, 0, 0),
		ev(2, job.StatusDoing, job.StepDownload, job.KindProgress, 1<<30, 4<<30),
	}}))
	if ack.Seq != 2 || ack.Done {
		t.Fatalf("%+v", ack)
	}
	cur := must(s.CurrentDeployment(ctx, sv.ID))
	if cur.Message != job.Text(job.MsgDownloading, "1.0 GiB", "4.0 GiB") || cur.Step != job.StepDownload || cur.BytesTotal != 4<<30 {
		t.Fatalf("%+v", cur)
	}
	ack = must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{
		ev(3, job.StatusDoing, job.StepDownload, job.KindProgress, 3<<30, 4<<30),
		ev(4, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0),
	}}))
	if ack.Seq != 4 || !ack.Done {
		t.Fatalf("%+v", ack)
	}
	cur = must(s.CurrentDeployment(ctx, sv.ID))
	tk = must(s.Task(ctx, sv.ID, d.TaskID))
	srv := must(s.ServerByName(ctx, "ns1"))
	if cur.Status != store.StatusDone || cur.Message != job.Text(job.MsgDone) || cur.EndedAt.IsZero() || tk.Status != store.TaskDone || tk.DoneDate.IsZero() || srv.BootID != store.BootHarddisk {
		t.Fatalf("%+v %+v boot %d", cur, tk, srv.BootID)
	}
	h := must(s.History(ctx, d.ID, 0, 100))
	if len(h) != 5 || h[0].Source != store.SourceControlPlane || h[1].Seq != 1 || h[4].Status != job.StatusDone {
		t.Fatalf("history %+v", h)
	}
	if r := h[3].Rate; r < 2<<30-1 || r > 2<<30+1 { // 2 GiB in 1 s
		t.Errorf("rate %v", r)
	}
	// The final batch again (lost answer): acknowledged; anything else gone.
	ack = must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{ev(4, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)}}))
	if ack.Seq != 4 || !ack.Done {
		t.Fatalf("repeat: %+v", ack)
	}
	if _, err := s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0}); !errors.Is(err, store.ErrGone) {
		t.Fatalf("heartbeat after end: %v", err)
	}
	if _, _, err := s.RunningDeployment(ctx, sv.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("job still served: %v", err)
	}
	if _, err := s.OpenAttempt(ctx, sv.ID, d.ID, t0); !errors.Is(err, store.ErrGone) {
		t.Fatal(err)
	}
	create(t, s, sv) // a new deployment may start
}

func testError(t *testing.T, s store.Store) {
	for i, tt := range []struct {
		code job.Code
		task string
	}{{job.ChecksumMismatch, store.TaskCustomerError}, {job.WriteFailed, store.TaskOVHError}, {"", store.TaskOVHError}} {
		sv := server(t, s, "acme", fmt.Sprintf("err%d", i))
		d, _ := create(t, s, sv)
		must(s.OpenAttempt(ctx, sv.ID, d.ID, t0))
		msg := "exact message " + string(tt.code)
		e := ev(1, job.StatusError, job.StepWrite, job.KindInfo, 0, 0)
		e.Code, e.Message = tt.code, msg
		ack := must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{e}}))
		if !ack.Done {
			t.Fatal(ack)
		}
		cur := must(s.Deployment(ctx, sv.ID, d.ID))
		tk := must(s.Task(ctx, sv.ID, d.TaskID))
		srv := must(s.ServerByName(ctx, sv.Name))
		if cur.Status != store.StatusError || cur.Message != msg || cur.Code != tt.code || tk.Status != tt.task || srv.BootID != store.BootRescue {
			t.Fatalf("%s: %+v %+v boot %d", tt.code, cur, tk, srv.BootID)
		}
	}
}

func testIdempotent(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	b := store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{
		ev(1, job.StatusDoing, job.StepPreflight, job.KindInfo, 0, 0),
		ev(2, job.StatusDoing, job.StepDownload, job.KindProgress, 10, 100),
	}}
	must(s.AppendEvents(ctx, b))
	ack := must(s.AppendEvents(ctx, b))
	if ack.Seq != 2 {
		t.Fatal(ack)
	}
	b.Events = append(b.Events, ev(3, job.StatusDoing, job.StepDownload, job.KindProgress, 20, 100))
	ack = must(s.AppendEvents(ctx, b))
	if ack.Seq != 3 {
		t.Fatal(ack)
	}
	h := must(s.History(ctx, d.ID, 0, 100))
	if len(h) != 4 {
		t.Fatalf("%d entries, want 4 (created + 3): %+v", len(h), h)
	}
	// heartbeat: refreshes last_seen only
	later := t0.Add(time.Minute)
	ack = must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: later}))
	if ack.Seq != 3 || ack.Done {
		t.Fatal(ack)
	}
	if cur := must(s.Deployment(ctx, sv.ID, d.ID)); !cur.LastSeen.Equal(later) {
		t.Fatalf("last seen %v", cur.LastSeen)
	}
}

func testStale(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	must(s.OpenAttempt(ctx, sv.ID, d.ID, t0))
	_, err := s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{ev(1, job.StatusDoing, job.StepPreflight, job.KindInfo, 0, 0)}})
	var se *store.StaleAttemptError
	if !errors.As(err, &se) || se.Current != 2 || !errors.Is(err, store.ErrStaleAttempt) {
		t.Fatalf("stale: %v", err)
	}
	other := server(t, s, "acme", "ns9")
	if _, err := s.AppendEvents(ctx, store.Append{ServerID: other.ID, DeploymentID: d.ID, Attempt: 2, Now: t0}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another server's deployment: %v", err)
	}
	if _, err := s.OpenAttempt(ctx, other.ID, d.ID, t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another server's attempt: %v", err)
	}
}

func testRestart(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{ev(1, job.StatusDoing, job.StepDownload, job.KindProgress, 5, 10)}}))
	if n := must(s.OpenAttempt(ctx, sv.ID, d.ID, t0)); n != 2 {
		t.Fatal(n)
	}
	cur := must(s.Deployment(ctx, sv.ID, d.ID))
	if cur.Attempt != 2 || cur.LastSeq != 0 || cur.Step != "" || cur.Message != job.Text(job.MsgRestarted, 2) {
		t.Fatalf("%+v", cur)
	}
	// seq starts over in the new attempt
	ack := must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 2, Now: t0, Events: []job.Event{ev(1, job.StatusDoing, job.StepPreflight, job.KindInfo, 0, 0)}}))
	if ack.Seq != 1 {
		t.Fatal(ack)
	}
	h := must(s.History(ctx, d.ID, 0, 100))
	var restarted bool
	for _, e := range h {
		if e.Code == job.MsgRestarted && e.Message == job.Text(job.MsgRestarted, 2) && e.Attempt == 2 {
			restarted = true
		}
	}
	if !restarted || len(h) != 4 {
		t.Fatalf("history %+v", h)
	}
	_, sealed, err := s.RunningDeployment(ctx, sv.ID)
	if err != nil || string(sealed) != "sealed" {
		t.Fatal(sealed, err)
	}
}

func testClear(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	ok(t, s.SetBoot(ctx, sv.ID, store.BootHarddisk))
	id := must(s.ClearDeployments(ctx, sv.ID, t0))
	if id != d.ID {
		t.Fatalf("cancelled %d want %d", id, d.ID)
	}
	if _, err := s.CurrentDeployment(ctx, sv.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	cur := must(s.Deployment(ctx, sv.ID, d.ID))
	tk := must(s.Task(ctx, sv.ID, d.TaskID))
	if cur.Status != store.StatusCancelled || !cur.Cleared || tk.Status != store.TaskCancelled {
		t.Fatalf("%+v %+v", cur, tk)
	}
	if srv := must(s.ServerByName(ctx, "ns1")); srv.BootID != store.BootRescue {
		t.Fatalf("boot %d", srv.BootID)
	}
	if _, err := s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0}); !errors.Is(err, store.ErrGone) {
		t.Fatalf("agent after delete: %v", err)
	}
	if _, err := s.ClearDeployments(ctx, sv.ID, t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second clear: %v", err)
	}
	if list := must(s.Deployments(ctx, sv.ID, 10)); len(list) != 1 || list[0].ID != d.ID {
		t.Fatalf("history lost: %+v", list)
	}
	// a finished deployment clears without cancelling
	d2, _ := create(t, s, sv)
	must(s.OpenAttempt(ctx, sv.ID, d2.ID, t0))
	must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d2.ID, Attempt: 1, Now: t0, Events: []job.Event{ev(1, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)}}))
	if id := must(s.ClearDeployments(ctx, sv.ID, t0)); id != 0 {
		t.Fatalf("cancelled %d", id)
	}
	if cur := must(s.Deployment(ctx, sv.ID, d2.ID)); cur.Status != store.StatusDone {
		t.Fatal(cur.Status)
	}
}

func testExpire(t *testing.T, s store.Store) {
	sv, d := start(t, s) // last seen t0
	waiting, _ := create(t, s, server(t, s, "acme", "ns2"))
	silent := 5 * time.Minute
	now := t0.Add(4 * time.Minute)
	if got := must(s.ExpireSilent(ctx, now, now.Add(-silent), time.Time{}, silent, 0)); len(got) != 0 {
		t.Fatalf("expired early: %+v", got)
	}
	// a heartbeat keeps it alive
	must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: now}))
	now = t0.Add(8 * time.Minute)
	if got := must(s.ExpireSilent(ctx, now, now.Add(-silent), time.Time{}, silent, 0)); len(got) != 0 {
		t.Fatalf("expired despite heartbeat: %+v", got)
	}
	now = t0.Add(10 * time.Minute)
	var wg sync.WaitGroup
	results := make([][]store.Expired, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.ExpireSilent(ctx, now, now.Add(-silent), time.Time{}, silent, 0)
			if err != nil {
				t.Error(err)
			}
			results[i] = r
		}()
	}
	wg.Wait()
	total := 0
	for _, r := range results {
		total += len(r)
	}
	if total != 1 {
		t.Fatalf("expired %d times: %+v", total, results)
	}
	cur := must(s.Deployment(ctx, sv.ID, d.ID))
	tk := must(s.Task(ctx, sv.ID, d.TaskID))
	if cur.Status != store.StatusError || cur.Code != job.AgentSilent || cur.Message != job.Text(job.AgentSilent, "5m0s") || tk.Status != store.TaskOVHError {
		t.Fatalf("%+v %+v", cur, tk)
	}
	if w := must(s.Deployment(ctx, waiting.ServerID, waiting.ID)); w.Status != store.StatusDoing {
		t.Fatalf("a deployment never picked up expired without a pickup timeout: %+v", w)
	}
	if _, err := s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: now}); !errors.Is(err, store.ErrGone) {
		t.Fatalf("late agent: %v", err)
	}
}

func testPickup(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	d, _ := create(t, s, sv)
	now := t0.Add(2 * time.Hour)
	got := must(s.ExpireSilent(ctx, now, now.Add(-5*time.Minute), now.Add(-time.Hour), 5*time.Minute, time.Hour))
	if len(got) != 1 || got[0].DeploymentID != d.ID {
		t.Fatalf("%+v", got)
	}
	cur := must(s.Deployment(ctx, sv.ID, d.ID))
	if cur.Code != job.APIPickupTimeout || cur.Status != store.StatusError {
		t.Fatalf("%+v", cur)
	}
	if got := must(s.ExpireSilent(ctx, now, now, now, 0, 0)); len(got) != 0 {
		t.Fatalf("expired twice: %+v", got)
	}
}

func testPaging(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	var evs []job.Event
	for i := int64(1); i <= 50; i++ {
		evs = append(evs, ev(i, job.StatusDoing, job.StepDownload, job.KindProgress, i, 100))
	}
	must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: evs}))
	var all []store.Entry
	after := int64(0)
	for {
		page := must(s.History(ctx, d.ID, after, 7))
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].N
	}
	if len(all) != 51 {
		t.Fatalf("%d entries", len(all))
	}
	for i, e := range all {
		if e.N != int64(i+1) {
			t.Fatalf("entry %d has N %d", i, e.N)
		}
		if i > 0 && (e.Seq != int64(i) || !e.Time.Equal(t0.Add(time.Duration(i)*time.Second)) || e.BytesDone != int64(i)) {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
}

func testNotFound(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	for name, err := range map[string]error{
		"customer":   second(s.CustomerByName(ctx, "x")),
		"server":     second(s.ServerByName(ctx, "x")),
		"current":    second(s.CurrentDeployment(ctx, sv.ID)),
		"deployment": second(s.Deployment(ctx, sv.ID, 1)),
		"task":       second(s.Task(ctx, sv.ID, 1)),
		"attempt":    second(s.OpenAttempt(ctx, sv.ID, 1, t0)),
		"events":     second(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: 1, Attempt: 1, Now: t0})),
		"clear":      second(s.ClearDeployments(ctx, sv.ID, t0)),
		"deploy":     third(s.CreateDeployment(ctx, store.NewDeployment{ServerID: 999, SealedJob: []byte("x"), Now: t0})),
	} {
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
}

func testSessions(t *testing.T, s store.Store) {
	c := must(s.CreateCustomer(ctx, "acme", t0))
	a := store.Session{IDHash: []byte("hash-a"), CustomerID: c.ID, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	ok(t, s.CreateSession(ctx, a))
	if err := s.CreateSession(ctx, a); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate session: %v", err)
	}
	got := must(s.SessionByHash(ctx, []byte("hash-a"), t0.Add(time.Minute)))
	if string(got.IDHash) != "hash-a" || got.CustomerID != c.ID || !got.CreatedAt.Equal(t0) || !got.ExpiresAt.Equal(a.ExpiresAt) {
		t.Fatalf("%+v", got)
	}
	if _, err := s.SessionByHash(ctx, []byte("hash-b"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown session: %v", err)
	}
	// expired: never returned, and removed by the next CreateSession
	if _, err := s.SessionByHash(ctx, []byte("hash-a"), a.ExpiresAt); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired session: %v", err)
	}
	b := store.Session{IDHash: []byte("hash-b"), CustomerID: c.ID, CreatedAt: t0.Add(2 * time.Hour), ExpiresAt: t0.Add(3 * time.Hour)}
	ok(t, s.CreateSession(ctx, b))
	if _, err := s.SessionByHash(ctx, []byte("hash-a"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired session kept: %v", err)
	}
	ok(t, s.DeleteSession(ctx, []byte("hash-b")))
	ok(t, s.DeleteSession(ctx, []byte("hash-b")))
	if _, err := s.SessionByHash(ctx, []byte("hash-b"), t0.Add(2*time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted session: %v", err)
	}
}

func second[T any](_ T, err error) error        { return err }
func third[A, B any](_ A, _ B, err error) error { return err }
