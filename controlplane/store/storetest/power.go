package storetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Power through the server's BMC (issue 25): the BMC record, power tasks
// claimed under a lease, their outcome in the deployment's history and
// OVH task, and the rescue deadline.

func testServerBMC(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	if _, err := s.ServerBMC(ctx, sv.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a new server has a BMC: %v", err)
	}
	if got := must(s.ServerByID(ctx, sv.ID)); got.Name != "ns1" || got.ID != sv.ID {
		t.Fatalf("by id: %+v", got)
	}
	if _, err := s.ServerByID(ctx, 999); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("by id: %v", err)
	}
	ok(t, s.SetServerBMC(ctx, store.ServerBMC{ServerID: sv.ID, Spec: "ipmi://admin@10.0.0.5:623", SealedPassword: []byte("sealed-1"), UpdatedAt: t0}))
	b := must(s.ServerBMC(ctx, sv.ID))
	if b.Spec != "ipmi://admin@10.0.0.5:623" || string(b.SealedPassword) != "sealed-1" || !b.UpdatedAt.Equal(t0) {
		t.Fatalf("%+v", b)
	}
	ok(t, s.SetServerBMC(ctx, store.ServerBMC{ServerID: sv.ID, Spec: "ipmi://root@bmc1:6230", SealedPassword: []byte("sealed-2"), UpdatedAt: t0.Add(time.Hour)}))
	if b := must(s.ServerBMC(ctx, sv.ID)); b.Spec != "ipmi://root@bmc1:6230" || string(b.SealedPassword) != "sealed-2" {
		t.Fatalf("replaced: %+v", b)
	}
	ok(t, s.SetServerBMC(ctx, store.ServerBMC{ServerID: sv.ID, Spec: "none", UpdatedAt: t0}))
	if _, err := s.ServerBMC(ctx, sv.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("none kept a BMC: %v", err)
	}
	if err := s.SetServerBMC(ctx, store.ServerBMC{ServerID: 999, Spec: "ipmi://a@b:623", SealedPassword: []byte("x")}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no server: %v", err)
	}
}

func testPowerClaim(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	if _, err := s.ClaimPowerTask(ctx, "a", t0, time.Minute); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim of nothing: %v", err)
	}
	if _, err := s.CreatePowerTask(ctx, store.PowerTask{ServerID: 999, CreatedAt: t0}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("task of no server: %v", err)
	}
	p1 := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, CreatedAt: t0}))
	p2 := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, CreatedAt: t0.Add(time.Second)}))
	if p1.Status != store.PowerTodo || p1.Action != store.PowerReboot || p2.ID <= p1.ID {
		t.Fatalf("%+v %+v", p1, p2)
	}
	c := must(s.ClaimPowerTask(ctx, "a", t0, time.Minute))
	if c.ID != p1.ID || c.Status != store.PowerDoing || c.Owner != "a" || c.Claims != 1 || !c.LeaseUntil.Equal(t0.Add(time.Minute)) || !c.StartedAt.Equal(t0) {
		t.Fatalf("first claim %+v", c)
	}
	if c := must(s.ClaimPowerTask(ctx, "b", t0, time.Minute)); c.ID != p2.ID {
		t.Fatalf("second claim took %+v", c)
	}
	if _, err := s.ClaimPowerTask(ctx, "c", t0.Add(30*time.Second), time.Minute); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a held task was claimed again: %v", err)
	}
	ok(t, s.RenewPowerTask(ctx, p1.ID, "a", t0.Add(2*time.Minute)))
	if err := s.RenewPowerTask(ctx, p1.ID, "b", t0.Add(2*time.Minute)); !errors.Is(err, store.ErrGone) {
		t.Fatalf("renewal by another owner: %v", err)
	}
	// b dies: its lease ends, c takes p2 over; b's late words are refused.
	c2 := must(s.ClaimPowerTask(ctx, "c", t0.Add(90*time.Second), time.Minute))
	if c2.ID != p2.ID || c2.Owner != "c" || c2.Claims != 2 || !c2.StartedAt.Equal(t0) {
		t.Fatalf("take-over %+v", c2)
	}
	if err := s.RenewPowerTask(ctx, p2.ID, "b", t0.Add(3*time.Minute)); !errors.Is(err, store.ErrGone) {
		t.Fatalf("dead owner renewed: %v", err)
	}
	done := store.PowerResult{Status: store.PowerDone, Code: job.MsgPowerRebooted, Message: "rebooted", Now: t0.Add(2 * time.Minute)}
	if err := s.FinishPowerTask(ctx, p2.ID, "b", done); !errors.Is(err, store.ErrGone) {
		t.Fatalf("dead owner finished: %v", err)
	}
	ok(t, s.FinishPowerTask(ctx, p2.ID, "c", done))
	ok(t, s.FinishPowerTask(ctx, p1.ID, "a", store.PowerResult{Status: store.PowerError, Code: job.PowerCredentials, Message: "refused", Now: t0.Add(2 * time.Minute)}))
	if err := s.FinishPowerTask(ctx, p1.ID, "a", done); !errors.Is(err, store.ErrGone) {
		t.Fatalf("finished twice: %v", err)
	}
	if err := s.FinishPowerTask(ctx, 999, "a", done); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no task: %v", err)
	}
	g1, g2 := must(s.PowerTask(ctx, p1.ID)), must(s.PowerTask(ctx, p2.ID))
	if g1.Status != store.PowerError || g1.Code != job.PowerCredentials || g1.Message != "refused" || g1.EndedAt.IsZero() ||
		g2.Status != store.PowerDone || g2.Code != job.MsgPowerRebooted || !g2.EndedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("%+v %+v", g1, g2)
	}
	list := must(s.PowerTasks(ctx, sv.ID, 10))
	if len(list) != 2 || list[0].ID != p2.ID || list[1].ID != p1.ID {
		t.Fatalf("list %+v", list)
	}
	if _, err := s.PowerTask(ctx, 999); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := s.ClaimPowerTask(ctx, "a", t0.Add(time.Hour), time.Minute); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ended tasks claimed: %v", err)
	}
}

// testPowerAbandoned: a task whose instances die while acting is given up
// after MaxPowerClaims claims, with its message in the deployment.
func testPowerAbandoned(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	d, tk := create(t, s, sv)
	p := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, DeploymentID: d.ID, CreatedAt: t0}))
	now := t0
	for i := 1; i <= store.MaxPowerClaims; i++ {
		c := must(s.ClaimPowerTask(ctx, "dies", now, time.Minute))
		if c.ID != p.ID || c.Claims != i {
			t.Fatalf("claim %d: %+v", i, c)
		}
		now = now.Add(2 * time.Minute)
	}
	if _, err := s.ClaimPowerTask(ctx, "next", now, time.Minute); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claimed a fourth time: %v", err)
	}
	g := must(s.PowerTask(ctx, p.ID))
	cur := must(s.CurrentDeployment(ctx, sv.ID))
	task := must(s.Task(ctx, sv.ID, tk.ID))
	want := job.Text(job.MsgPowerAbandoned, store.MaxPowerClaims)
	if g.Status != store.PowerError || g.Code != job.MsgPowerAbandoned || cur.Status != store.StatusError || cur.Code != job.MsgPowerAbandoned || cur.Message != want || task.Status != store.TaskOVHError {
		t.Fatalf("%+v %+v %+v", g, cur, task)
	}
}

// testPowerOutcome: a power task's outcome in its deployment's history; a
// failure before any agent came fails the deployment and its task with
// the power code; after an agent came it is only an entry.
func testPowerOutcome(t *testing.T, s store.Store) {
	sv := server(t, s, "acme", "ns1")
	d, tk := create(t, s, sv)
	p := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, DeploymentID: d.ID, CreatedAt: t0}))
	must(s.ClaimPowerTask(ctx, "a", t0, time.Minute))
	warn := job.Event{Status: job.StatusDoing, Kind: job.KindWarning, Code: job.WarnBootOverride, Message: job.Text(job.WarnBootOverride, "refused")}
	rebooted := job.Text(job.MsgPowerRebooted, "power-cycled", "ipmi://admin@10.0.0.5:623")
	ok(t, s.FinishPowerTask(ctx, p.ID, "a", store.PowerResult{Status: store.PowerDone, Code: job.MsgPowerRebooted, Message: rebooted, Warning: &warn, Now: t0.Add(time.Second)}))
	h := must(s.History(ctx, d.ID, 0, 10))
	if len(h) != 3 || h[1].Code != job.WarnBootOverride || h[1].Kind != job.KindWarning || h[2].Code != job.MsgPowerRebooted || h[2].Message != rebooted || h[2].Source != store.SourceControlPlane || h[2].N != 3 {
		t.Fatalf("history %+v", h)
	}
	if cur := must(s.CurrentDeployment(ctx, sv.ID)); cur.Status != store.StatusDoing {
		t.Fatalf("%+v", cur)
	}
	// The agent comes; a later failed power task is only told.
	must(s.OpenAttempt(ctx, sv.ID, d.ID, t0.Add(time.Minute)))
	p2 := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, DeploymentID: d.ID, CreatedAt: t0}))
	must(s.ClaimPowerTask(ctx, "a", t0, time.Minute))
	ok(t, s.FinishPowerTask(ctx, p2.ID, "a", store.PowerResult{Status: store.PowerError, Code: job.PowerNoAnswer, Message: "silent", Now: t0.Add(2 * time.Minute)}))
	if cur := must(s.CurrentDeployment(ctx, sv.ID)); cur.Status != store.StatusDoing {
		t.Fatalf("a running deployment failed by a power task: %+v", cur)
	}
	h = must(s.History(ctx, d.ID, 0, 10))
	if last := h[len(h)-1]; last.Code != job.PowerNoAnswer || last.Kind != job.KindWarning || last.Attempt != 1 {
		t.Fatalf("last entry %+v", last)
	}

	// A second server: the BMC refuses byoi's login before any agent.
	sv2 := server(t, s, "acme", "ns2")
	d2, tk2 := create(t, s, sv2)
	p3 := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv2.ID, DeploymentID: d2.ID, CreatedAt: t0}))
	must(s.ClaimPowerTask(ctx, "a", t0, time.Minute))
	msg := job.Text(job.PowerCredentials, "power status")
	ok(t, s.FinishPowerTask(ctx, p3.ID, "a", store.PowerResult{Status: store.PowerError, Code: job.PowerCredentials, Message: msg, Now: t0.Add(time.Second)}))
	cur := must(s.CurrentDeployment(ctx, sv2.ID))
	task := must(s.Task(ctx, sv2.ID, tk2.ID))
	if cur.Status != store.StatusError || cur.Code != job.PowerCredentials || cur.Message != msg || cur.EndedAt.IsZero() || task.Status != store.TaskOVHError || task.DoneDate.IsZero() {
		t.Fatalf("%+v %+v", cur, task)
	}
	if _, _, err := s.RunningDeployment(ctx, sv2.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed deployment still served: %v", err)
	}
	_ = tk
	// A task whose deployment was cancelled meanwhile ends quietly.
	sv3 := server(t, s, "acme", "ns3")
	d3, _ := create(t, s, sv3)
	p4 := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv3.ID, DeploymentID: d3.ID, CreatedAt: t0}))
	must(s.ClaimPowerTask(ctx, "a", t0, time.Minute))
	must(s.ClearDeployments(ctx, sv3.ID, t0))
	ok(t, s.FinishPowerTask(ctx, p4.ID, "a", store.PowerResult{Status: store.PowerDone, Code: job.MsgPowerRebooted, Message: "x", Now: t0.Add(time.Second)}))
	if g := must(s.PowerTask(ctx, p4.ID)); g.Status != store.PowerDone {
		t.Fatalf("%+v", g)
	}
}

// testRescueDeadline: a deployment no agent picked up within the limit
// after a power task ended done is failed once; one picked up, one whose
// power task is recent or failed, and one with no power task are not.
func testRescueDeadline(t *testing.T, s store.Store) {
	mk := func(name string, status string, end time.Time) (store.Server, store.Deployment) {
		sv := server(t, s, "acme", name)
		d, _ := create(t, s, sv)
		if status != "" {
			p := must(s.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, DeploymentID: d.ID, CreatedAt: t0}))
			must(s.ClaimPowerTask(ctx, "a", t0, time.Minute))
			ok(t, s.FinishPowerTask(ctx, p.ID, "a", store.PowerResult{Status: status, Code: job.MsgPowerRebooted, Message: "x", Now: end}))
		}
		return sv, d
	}
	limit := 10 * time.Minute
	now := t0.Add(time.Hour)
	late, dl := mk("late", store.PowerDone, now.Add(-11*time.Minute))
	recent, _ := mk("recent", store.PowerDone, now.Add(-9*time.Minute))
	came, dc := mk("came", store.PowerDone, now.Add(-20*time.Minute))
	must(s.OpenAttempt(ctx, came.ID, dc.ID, now.Add(-15*time.Minute)))
	none, _ := mk("none", "", time.Time{})
	exp := must(s.ExpireRescue(ctx, now, now.Add(-limit), limit))
	if len(exp) != 1 || exp[0].DeploymentID != dl.ID || exp[0].ServerID != late.ID {
		t.Fatalf("expired %+v", exp)
	}
	if again := must(s.ExpireRescue(ctx, now, now.Add(-limit), limit)); len(again) != 0 {
		t.Fatalf("expired twice: %+v", again)
	}
	cur := must(s.CurrentDeployment(ctx, late.ID))
	want := job.Text(job.MsgRescueTimeout, "10m0s")
	if cur.Status != store.StatusError || cur.Code != job.MsgRescueTimeout || cur.Message != want {
		t.Fatalf("%+v", cur)
	}
	if tk := must(s.Task(ctx, late.ID, cur.TaskID)); tk.Status != store.TaskOVHError {
		t.Fatalf("task %+v", tk)
	}
	for _, sv := range []store.Server{recent, came, none} {
		if d := must(s.CurrentDeployment(ctx, sv.ID)); d.Status != store.StatusDoing {
			t.Errorf("%s: %+v", sv.Name, d)
		}
	}
}

// testPowerClaimFleet: instances claiming at once never hold one task
// together.
func testPowerClaimFleet(t *testing.T, s [2]store.Store) {
	sv := server(t, s[0], "acme", "ns1")
	const n = 20
	for range n {
		must(s[0].CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, CreatedAt: t0}))
	}
	var mu sync.Mutex
	seen := map[int64]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := string(rune('a' + w))
			for {
				c, err := s[w%2].ClaimPowerTask(ctx, owner, t0, time.Hour)
				if errors.Is(err, store.ErrNotFound) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if o, dup := seen[c.ID]; dup {
					errs <- errors.New("task claimed by " + o + " and " + owner)
				}
				seen[c.ID] = owner
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != n {
		t.Fatalf("claimed %d of %d", len(seen), n)
	}
}

// testBootWatch: the "booted" watch: a token per deployment (replaced by
// a later fetch), used once, only after done; a silent system warned of
// once; an unwatched deployment has no watch.
func testBootWatch(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	if _, err := s.BootWatch(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("watched before: %v", err)
	}
	if err := s.WatchBoot(ctx, 999, []byte("h0"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no deployment: %v", err)
	}
	ok(t, s.WatchBoot(ctx, d.ID, []byte("h1"), t0))
	ok(t, s.WatchBoot(ctx, d.ID, []byte("h2"), t0)) // the job fetched again
	if _, err := s.MarkBooted(ctx, []byte("h2"), t0); !errors.Is(err, store.ErrGone) {
		t.Fatalf("booted before done: %v", err)
	}
	done := t0.Add(time.Minute)
	must(s.AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: done, Events: []job.Event{ev(1, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)}}))
	if _, err := s.MarkBooted(ctx, []byte("h1"), done); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the replaced token worked: %v", err)
	}
	at := done.Add(90 * time.Second)
	w := must(s.MarkBooted(ctx, []byte("h2"), at))
	if w.DeploymentID != d.ID || !w.BootedAt.Equal(at) {
		t.Fatalf("%+v", w)
	}
	if _, err := s.MarkBooted(ctx, []byte("h2"), at); !errors.Is(err, store.ErrGone) {
		t.Fatalf("used twice: %v", err)
	}
	h := must(s.History(ctx, d.ID, 0, 100))
	last := h[len(h)-1]
	if last.Code != job.MsgBooted || last.Message != job.Text(job.MsgBooted, "1m30s") || last.Status != job.StatusDone {
		t.Fatalf("history %+v", last)
	}
	if cur := must(s.CurrentDeployment(ctx, sv.ID)); cur.Status != store.StatusDone {
		t.Fatalf("status changed: %+v", cur)
	}
	if g := must(s.BootWatch(ctx, d.ID)); !g.BootedAt.Equal(at) || g.DoneAt.IsZero() {
		t.Fatalf("%+v", g)
	}

	// A second server whose new system never calls.
	sv2 := server(t, s, "acme", "ns2")
	d2, _ := create(t, s, sv2)
	must(s.OpenAttempt(ctx, sv2.ID, d2.ID, t0))
	ok(t, s.WatchBoot(ctx, d2.ID, []byte("h3"), t0))
	must(s.AppendEvents(ctx, store.Append{ServerID: sv2.ID, DeploymentID: d2.ID, Attempt: 1, Now: done, Events: []job.Event{ev(1, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)}}))
	limit := 15 * time.Minute
	if n := must(s.ExpireBootWatch(ctx, done.Add(14*time.Minute), done.Add(-time.Minute), limit)); n != 0 {
		t.Fatalf("warned early: %d", n)
	}
	now := done.Add(16 * time.Minute)
	if n := must(s.ExpireBootWatch(ctx, now, now.Add(-limit), limit)); n != 1 {
		t.Fatalf("warned %d", n)
	}
	if n := must(s.ExpireBootWatch(ctx, now, now.Add(-limit), limit)); n != 0 {
		t.Fatalf("warned twice: %d", n)
	}
	h = must(s.History(ctx, d2.ID, 0, 100))
	if last := h[len(h)-1]; last.Code != job.MsgNoSignOfLife || last.Kind != job.KindWarning || last.Message != job.Text(job.MsgNoSignOfLife, "15m0s") {
		t.Fatalf("%+v", last)
	}
	if g := must(s.BootWatch(ctx, d2.ID)); g.WarnedAt.IsZero() || !g.BootedAt.IsZero() {
		t.Fatalf("%+v", g)
	}
	// It calls late: still booted.
	must(s.MarkBooted(ctx, []byte("h3"), now.Add(time.Minute)))
}

func testDeploymentLogs(t *testing.T, s store.Store) {
	sv, d := start(t, s)
	other := server(t, s, "acme", "ns2")
	if _, err := s.DeploymentLogs(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("logs before: %v", err)
	}
	l := store.DeploymentLogs{DeploymentID: d.ID, Attempt: 1, Kernel: "[    1.0] kernel line\n", Agent: "level=ERROR msg=boom\n", ReceivedAt: t0}
	if err := s.PutDeploymentLogs(ctx, other.ID, l); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another server's deployment: %v", err)
	}
	ok(t, s.PutDeploymentLogs(ctx, sv.ID, l))
	l.Attempt, l.Agent = 2, "second\n"
	ok(t, s.PutDeploymentLogs(ctx, sv.ID, l))
	g := must(s.DeploymentLogs(ctx, d.ID))
	if g.Attempt != 2 || g.Agent != "second\n" || g.Kernel != l.Kernel || !g.ReceivedAt.Equal(t0) {
		t.Fatalf("%+v", g)
	}
}
