package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// testFleet: FleetCounts counts servers, running deployments (waiting,
// active, heard since) and tasks by status; DeploymentJob gives the sealed
// job of a running or an ended deployment (issue 28's metrics).
func testFleet(t *testing.T, s store.Store) {
	f := must(s.FleetCounts(ctx, t0))
	if f.Servers != 0 || f.Waiting != 0 || f.Active != 0 || f.Heartbeating != 0 || len(f.Tasks) != 0 {
		t.Fatalf("empty database: %+v", f)
	}
	a := server(t, s, "acme", "ns1")
	b := server(t, s, "acme", "ns2")
	server(t, s, "other", "ns3")
	da, _ := create(t, s, a)
	db, _ := create(t, s, b)
	f = must(s.FleetCounts(ctx, t0))
	if f.Servers != 3 || f.Waiting != 2 || f.Active != 0 || f.Tasks[store.TaskInit] != 2 {
		t.Fatalf("two waiting: %+v", f)
	}
	must(s.OpenAttempt(ctx, a.ID, da.ID, t0))
	must(s.OpenAttempt(ctx, b.ID, db.ID, t0.Add(time.Second)))
	f = must(s.FleetCounts(ctx, t0.Add(time.Second)))
	if f.Waiting != 0 || f.Active != 2 || f.Heartbeating != 1 || f.Tasks[store.TaskDoing] != 2 {
		t.Fatalf("two active, one heard since t0+1s: %+v", f)
	}
	must(s.AppendEvents(ctx, store.Append{ServerID: a.ID, DeploymentID: da.ID, Attempt: 1, Now: t0, Events: []job.Event{
		ev(1, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)}}))
	f = must(s.FleetCounts(ctx, t0))
	if f.Active != 1 || f.Tasks[store.TaskDone] != 1 || f.Tasks[store.TaskDoing] != 1 {
		t.Fatalf("one done: %+v", f)
	}
	if got := must(s.DeploymentJob(ctx, a.ID, da.ID)); string(got) != "sealed" {
		t.Fatalf("the ended deployment's job: %q", got)
	}
	if _, err := s.DeploymentJob(ctx, b.ID, da.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another server's deployment: %v", err)
	}
}
