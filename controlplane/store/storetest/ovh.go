package storetest

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// testServerProps: the properties OVH's PUT sets are kept per server,
// replaced whole, and returned by every server read.
func testServerProps(t *testing.T, s store.Store) {
	a := server(t, s, "acme", "ns1")
	if a.Props != nil {
		t.Fatalf("a new server has props %q", a.Props)
	}
	ok(t, s.SetServerProps(ctx, a.ID, []byte(`{"monitoring":true}`)))
	ok(t, s.SetServerProps(ctx, a.ID, []byte(`{"monitoring":false,"state":"ok"}`)))
	if got := must(s.ServerByName(ctx, "ns1")); string(got.Props) != `{"monitoring":false,"state":"ok"}` {
		t.Fatalf("props %q", got.Props)
	}
	if list := must(s.ListServers(ctx, a.CustomerID)); len(list) != 1 || string(list[0].Props) != `{"monitoring":false,"state":"ok"}` {
		t.Fatalf("ListServers props %+v", list)
	}
	if err := s.SetServerProps(ctx, 999999, []byte(`{}`)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no such server: %v", err)
	}
}

// testTasks: a server's task list with OVH's filters, tasks of no
// deployment (a reboot request), and their end when the reboot is seen.
func testTasks(t *testing.T, s store.Store) {
	a := server(t, s, "acme", "ns1")
	b := server(t, s, "acme", "ns2")
	if got := must(s.Tasks(ctx, a.ID, "", "")); got == nil || len(got) != 0 {
		t.Fatalf("no tasks: %v", got)
	}
	_, reinstall := create(t, s, a)
	r1 := must(s.CreateTask(ctx, store.Task{ServerID: a.ID, DeploymentID: 42, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: t0.Add(time.Second)}))
	if r1.ID == 0 || r1.ID == reinstall.ID || r1.DeploymentID != 0 || r1.Status != store.TaskTodo || !r1.LastUpdate.Equal(r1.StartDate) {
		t.Fatalf("created %+v", r1)
	}
	if got := must(s.Task(ctx, a.ID, r1.ID)); got.Function != store.FunctionHardReboot || got.Status != store.TaskTodo || !got.StartDate.Equal(t0.Add(time.Second)) || !got.DoneDate.IsZero() {
		t.Fatalf("read back %+v", got)
	}
	if _, err := s.Task(ctx, b.ID, r1.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another server's task: %v", err)
	}
	// One open reboot task per server: a second is refused, naming the
	// first (OVH's TaskAlreadyExists); another server's is its own.
	var tr *store.TaskRunningError
	if _, err := s.CreateTask(ctx, store.Task{ServerID: a.ID, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: t0.Add(2 * time.Second)}); !errors.As(err, &tr) || tr.Task.ID != r1.ID || tr.Task.Status != store.TaskTodo || tr.Task.Function != store.FunctionHardReboot || tr.Server != "ns1" {
		t.Fatalf("a second open reboot task: %v (%+v)", err, tr)
	}
	rb := must(s.CreateTask(ctx, store.Task{ServerID: b.ID, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: t0}))
	for _, tt := range []struct {
		function, status string
		want             []int64
	}{
		{"", "", []int64{reinstall.ID, r1.ID}},
		{store.FunctionHardReboot, "", []int64{r1.ID}},
		{store.FunctionReinstall, "", []int64{reinstall.ID}},
		{"", store.TaskTodo, []int64{r1.ID}},
		{"", store.TaskInit, []int64{reinstall.ID}},
		{store.FunctionReinstall, store.TaskTodo, []int64{}},
		{"addVirtualMac", "", []int64{}},
	} {
		if got := must(s.Tasks(ctx, a.ID, tt.function, tt.status)); !slices.Equal(got, tt.want) {
			t.Errorf("Tasks(%q, %q) = %v, want %v", tt.function, tt.status, got, tt.want)
		}
	}
	// A reboot seen before the task started ends nothing; after, it ends
	// that server's open reboot tasks only, and only once.
	if n := must(s.FinishTasks(ctx, a.ID, store.FunctionHardReboot, t0)); n != 0 {
		t.Fatalf("a boot before the request ended %d tasks", n)
	}
	done := t0.Add(time.Minute)
	if n := must(s.FinishTasks(ctx, a.ID, store.FunctionHardReboot, done)); n != 1 {
		t.Fatalf("ended %d tasks, want 1", n)
	}
	if n := must(s.FinishTasks(ctx, a.ID, store.FunctionHardReboot, done.Add(time.Second))); n != 0 {
		t.Fatalf("ended %d tasks again", n)
	}
	if got := must(s.Task(ctx, a.ID, r1.ID)); got.Status != store.TaskDone || !got.DoneDate.Equal(done) || !got.LastUpdate.Equal(done) {
		t.Fatalf("ended task %+v", got)
	}
	if got := must(s.Task(ctx, a.ID, reinstall.ID)); got.Status != store.TaskInit {
		t.Fatalf("the reinstall task moved: %+v", got)
	}
	if got := must(s.Task(ctx, b.ID, rb.ID)); got.Status != store.TaskTodo {
		t.Fatalf("another server's reboot task moved: %+v", got)
	}
	// The deployment's life still drives its own task alone.
	d := must(s.CurrentDeployment(ctx, a.ID))
	must(s.OpenAttempt(ctx, a.ID, d.ID, t0))
	must(s.AppendEvents(ctx, store.Append{ServerID: a.ID, DeploymentID: d.ID, Attempt: 1, Now: done,
		Events: []job.Event{ev(1, job.StatusDone, job.StepFinish, job.KindInfo, 0, 0)}}))
	if got := must(s.Tasks(ctx, a.ID, "", store.TaskDone)); !slices.Equal(got, []int64{reinstall.ID, r1.ID}) {
		t.Fatalf("done tasks %v", got)
	}
	// Once it ended, the next reboot request is a new task.
	if r2 := must(s.CreateTask(ctx, store.Task{ServerID: a.ID, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: done.Add(time.Second)})); r2.ID == r1.ID {
		t.Fatalf("the new reboot task is the old one: %+v", r2)
	}
	if _, err := s.CreateTask(ctx, store.Task{ServerID: 999999, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: t0}); err == nil {
		t.Fatal("a task of no server was created")
	}
}

// testFinishTasksFleet: two instances seeing the same reboot end each
// task once.
func testFinishTasksFleet(t *testing.T, s [2]store.Store) {
	a := server(t, s[0], "acme", "ns1")
	// Five reboot requests one after the other (one is open at a time),
	// each seen by ten racers on the two instances.
	total := 0
	for r := range 5 {
		start := t0.Add(time.Duration(r) * time.Minute)
		must(s[1].CreateTask(ctx, store.Task{ServerID: a.ID, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: start}))
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := s[i%2].FinishTasks(ctx, a.ID, store.FunctionHardReboot, start.Add(time.Second))
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				total += n
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	if total != 5 {
		t.Fatalf("%d tasks ended, want 5", total)
	}
}

// testRebootTaskFleet: ten reboot requests for one server at once, on two
// instances: one task is created, the other nine are refused naming it.
func testRebootTaskFleet(t *testing.T, s [2]store.Store) {
	a := server(t, s[0], "acme", "ns1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []int64
	var refused []int64
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk, err := s[i%2].CreateTask(ctx, store.Task{ServerID: a.ID, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: t0})
			var tr *store.TaskRunningError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				made = append(made, tk.ID)
			case errors.As(err, &tr):
				refused = append(refused, tr.Task.ID)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(made) != 1 || len(refused) != 9 {
		t.Fatalf("%d created, %d refused; want 1 and 9", len(made), len(refused))
	}
	for _, id := range refused {
		if id != made[0] {
			t.Fatalf("a refusal names task %d, the open one is %d", id, made[0])
		}
	}
}
