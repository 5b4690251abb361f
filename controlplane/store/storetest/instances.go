package storetest

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// RunInstances runs the cases about several byoi-api instances on one
// database: newPair returns two stores, opened separately (two pools, two
// writers: as two processes would) on the same new empty database. Every
// rule must be the database's, so both instances see one truth.
func RunInstances(t *testing.T, newPair func(t *testing.T) (a, b store.Store)) {
	for _, c := range instanceCases {
		t.Run(c.name, func(t *testing.T) {
			a, b := newPair(t)
			t.Cleanup(func() { a.Close(); b.Close() })
			defer func() {
				if r := recover(); r != nil {
					if f, ok := r.(failure); ok {
						t.Fatalf("unexpected error: %v", f.err)
					}
					panic(r)
				}
			}()
			c.fn(t, [2]store.Store{a, b})
		})
	}
}

var instanceCases = []struct {
	name string
	fn   func(t *testing.T, s [2]store.Store)
}{
	{"RaceCreate", testRaceCreate},
	{"IDsUnique", testIDsUnique},
	{"ExpireOnceFleetWide", testExpireFleet},
	{"AgentAnyInstance", testAgentAnyInstance},
	{"MixedLifecycle", testMixedLifecycle},
	{"PowerClaimFleet", testPowerClaimFleet},
	{"FinishTasksOnce", testFinishTasksFleet}, // issue 24
	{"RebootTaskOnce", testRebootTaskFleet},
}

// testRaceCreate: 50 POSTs for one server, spread over both instances,
// racing: exactly one accepted, 49 told which task runs.
func testRaceCreate(t *testing.T, s [2]store.Store) {
	sv := server(t, s[0], "acme", "ns1")
	var wg sync.WaitGroup
	var accepted, refused atomic.Int32
	start := make(chan struct{})
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, _, err := s[i%2].CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeReinstall, SealedJob: []byte("x"), Now: t0})
			var tr *store.TaskRunningError
			switch {
			case err == nil:
				accepted.Add(1)
			case errors.As(err, &tr) && tr.Server == "ns1" && tr.Task.ID > 0:
				refused.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if accepted.Load() != 1 || refused.Load() != 49 {
		t.Fatalf("accepted %d refused %d, want 1 and 49", accepted.Load(), refused.Load())
	}
	if list := must(s[1].Deployments(ctx, sv.ID, 100)); len(list) != 1 || list[0].Status != store.StatusDoing {
		t.Fatalf("deployments %+v", list)
	}
}

// testIDsUnique: deployments created at once on both instances get
// distinct task and deployment ids.
func testIDsUnique(t *testing.T, s [2]store.Store) {
	const n = 40
	var svs []store.Server
	for i := range n {
		svs = append(svs, server(t, s[i%2], "acme", fmt.Sprintf("ns%d", i)))
	}
	var mu sync.Mutex
	tasks, depls := map[int64]bool{}, map[int64]bool{}
	var wg sync.WaitGroup
	for i, sv := range svs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, tk, err := s[i%2].CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeLegacy, SealedJob: []byte("x"), Now: t0})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if tasks[tk.ID] || depls[d.ID] {
				t.Errorf("id reused: task %d deployment %d", tk.ID, d.ID)
			}
			tasks[tk.ID], depls[d.ID] = true, true
		}()
	}
	wg.Wait()
	if len(tasks) != n || len(depls) != n {
		t.Fatalf("%d tasks, %d deployments, want %d", len(tasks), len(depls), n)
	}
}

// testExpireFleetWide: both instances sweep at once, again and again;
// every silent deployment is failed exactly once, with one history entry.
func testExpireFleet(t *testing.T, s [2]store.Store) {
	const n = 20
	var ds []store.Deployment
	for i := range n {
		sv := server(t, s[0], "acme", fmt.Sprintf("ns%d", i))
		d, _ := create(t, s[i%2], sv)
		must(s[(i+1)%2].OpenAttempt(ctx, sv.ID, d.ID, t0))
		ds = append(ds, d)
	}
	alive := server(t, s[0], "acme", "alive")
	da, _ := create(t, s[0], alive)
	must(s[1].OpenAttempt(ctx, alive.ID, da.ID, t0))
	silent := 5 * time.Minute
	now := t0.Add(10 * time.Minute)
	must(s[0].AppendEvents(ctx, store.Append{ServerID: alive.ID, DeploymentID: da.ID, Attempt: 1, Now: now}))
	var total atomic.Int32
	seen := sync.Map{}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s[i%2].ExpireSilent(ctx, now, now.Add(-silent), time.Time{}, silent, 0)
			if err != nil {
				t.Error(err)
			}
			for _, e := range got {
				total.Add(1)
				if _, dup := seen.LoadOrStore(e.DeploymentID, true); dup {
					t.Errorf("deployment %d failed twice", e.DeploymentID)
				}
			}
		}()
	}
	wg.Wait()
	if total.Load() != n {
		t.Fatalf("failed %d deployments, want %d", total.Load(), n)
	}
	for _, d := range ds {
		silentEntries := 0
		for _, e := range must(s[1].History(ctx, d.ID, 0, 100)) {
			if e.Code == job.AgentSilent {
				silentEntries++
			}
		}
		if silentEntries != 1 {
			t.Errorf("deployment %d has %d silence entries", d.ID, silentEntries)
		}
	}
	if cur := must(s[1].Deployment(ctx, alive.ID, da.ID)); cur.Status != store.StatusDoing {
		t.Fatalf("a deployment with a fresh heartbeat expired: %+v", cur)
	}
}

// testAgentAnyInstance: an agent's batches go to either instance; the
// history is one gapless sequence, acknowledged seqs increase, a retry on
// the other instance stores nothing twice, and the end is seen by both.
func testAgentAnyInstance(t *testing.T, s [2]store.Store) {
	sv := server(t, s[0], "acme", "ns1")
	d, _ := create(t, s[0], sv)
	must(s[1].OpenAttempt(ctx, sv.ID, d.ID, t0))
	for i := int64(1); i <= 30; i++ {
		b := store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: 1, Now: t0, Events: []job.Event{ev(i, job.StatusDoing, job.StepDownload, job.KindProgress, i, 100)}}
		if i == 30 {
			b.Events[0] = ev(i, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)
		}
		ack := must(s[i%2].AppendEvents(ctx, b))
		if ack.Seq != i || ack.Done != (i == 30) {
			t.Fatalf("event %d: ack %+v", i, ack)
		}
		if i%5 == 0 { // the answer was lost: the agent retries on the other instance
			if again := must(s[(i+1)%2].AppendEvents(ctx, b)); again.Seq != i {
				t.Fatalf("retry %d: %+v", i, again)
			}
		}
	}
	h := must(s[0].History(ctx, d.ID, 0, 100))
	if len(h) != 31 {
		t.Fatalf("%d entries, want 31", len(h))
	}
	for i, e := range h {
		if e.N != int64(i+1) || (i > 0 && e.Seq != int64(i)) {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
	for _, st := range s {
		if cur := must(st.Deployment(ctx, sv.ID, d.ID)); cur.Status != store.StatusDone {
			t.Fatalf("%+v", cur)
		}
	}
}

// testMixedLifecycle: many servers at once, their agents' batches spread
// over both instances, final events, a second attempt, customers
// cancelling and posting again: no error but the API's own refusals (no
// deadlock between instances), and every acknowledged event stored.
func testMixedLifecycle(t *testing.T, s [2]store.Store) {
	const servers, events = 16, 12
	var wg sync.WaitGroup
	for i := range servers {
		sv := server(t, s[0], "acme", fmt.Sprintf("ns%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				d, _, err := s[(i+round)%2].CreateDeployment(ctx, store.NewDeployment{ServerID: sv.ID, Shape: job.ShapeLegacy, SealedJob: []byte("x"), Now: t0})
				if err != nil {
					t.Error(err)
					return
				}
				att, err := s[(i+round+1)%2].OpenAttempt(ctx, sv.ID, d.ID, t0)
				if err != nil {
					t.Error(err)
					return
				}
				acked := int64(0)
				for k := int64(1); k <= events; k++ {
					e := ev(k, job.StatusDoing, job.StepWrite, job.KindProgress, k, events)
					if k == events {
						e = ev(k, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)
					}
					ack, err := s[int(k)%2].AppendEvents(ctx, store.Append{ServerID: sv.ID, DeploymentID: d.ID, Attempt: att, Now: t0, Events: []job.Event{e}})
					if errors.Is(err, store.ErrGone) {
						break // cancelled by the customer below
					}
					if err != nil {
						t.Error(err)
						return
					}
					acked = ack.Seq
					if round == 1 && k == events/2 {
						// the customer cancels: the deployment ends, the agent is told
						if _, err := s[(i+1)%2].ClearDeployments(ctx, sv.ID, t0); err != nil {
							t.Error(err)
							return
						}
					}
				}
				h, err := s[i%2].History(ctx, d.ID, 0, 100)
				if err != nil {
					t.Error(err)
					return
				}
				stored := 0
				for _, e := range h {
					if e.Source == store.SourceAgent {
						stored++
					}
				}
				if int64(stored) != acked {
					t.Errorf("server %d round %d: %d acknowledged, %d stored", i, round, acked, stored)
				}
			}
		}()
	}
	wg.Wait()
}
