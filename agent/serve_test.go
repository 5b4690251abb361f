package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/blockdev/blockdevtest"
	"github.com/byoi/byoi/job"
)

// fakePlane is a control plane for the agent's tests: it serves one job
// and stores events, and can refuse event posts for a while.
type fakePlane struct {
	t   *testing.T
	job []byte

	mu          sync.Mutex
	served      bool
	attempts    int
	events      []job.Event
	heartbeats  int
	refuseUntil time.Time // answer 503 to event posts until then
	refused     int
	maxBatch    int
	token       string
	bootedURL   string // the assignment's (issue 25)
	logs        []agentapi.LogTails
	boots       []agentapi.BootInfo // the boot information posted before the reboot
}

func (f *fakePlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		http.Error(w, `{"class":"Client::Unauthorized","message":"bad token"}`, http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == agentapi.InventoryPath("s1"):
		var inv agentapi.Inventory
		if err := json.NewDecoder(r.Body).Decode(&inv); err != nil || inv.Validate() != nil {
			http.Error(w, "bad inventory", 400)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == agentapi.JobPath("s1"):
		if f.served {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		json.NewEncoder(w).Encode(agentapi.Assignment{DeploymentID: 7, Job: f.job, BootedURL: f.bootedURL})
	case r.URL.Path == agentapi.LogsPath("s1", 7):
		var l agentapi.LogTails
		if err := json.NewDecoder(r.Body).Decode(&l); err != nil || l.Validate() != nil {
			http.Error(w, "bad logs", 400)
			return
		}
		f.logs = append(f.logs, l)
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == agentapi.BootPath("s1"):
		// Without this the agent retries its post 5 times (15 s) and
		// reboots anyway.
		var b agentapi.BootInfo
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil || b.Validate() != nil {
			http.Error(w, "bad boot information", 400)
			return
		}
		f.boots = append(f.boots, b)
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == agentapi.AttemptsPath("s1", 7):
		f.attempts++
		json.NewEncoder(w).Encode(agentapi.Attempt{Attempt: f.attempts})
	case r.URL.Path == agentapi.EventsPath("s1", 7):
		if time.Now().Before(f.refuseUntil) {
			f.refused++
			http.Error(w, `{"class":"Server::Unavailable","message":"busy"}`, http.StatusServiceUnavailable)
			return
		}
		var b agentapi.EventBatch
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil || b.Validate() != nil {
			f.t.Errorf("bad batch: %v %v", err, b.Validate())
			http.Error(w, "bad batch", 400)
			return
		}
		if len(b.Events) == 0 {
			f.heartbeats++
		}
		f.maxBatch = max(f.maxBatch, len(b.Events))
		var last int64
		if n := len(f.events); n > 0 {
			last = f.events[n-1].Seq
		}
		for _, e := range b.Events {
			if e.Seq > last { // idempotent by seq
				f.events = append(f.events, e)
				last = e.Seq
				if e.Final() {
					f.served = true
				}
			}
		}
		json.NewEncoder(w).Encode(agentapi.Ack{Seq: last, Done: f.served})
	default:
		http.NotFound(w, r)
	}
}

func (f *fakePlane) final() (job.Event, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.events); n > 0 && f.events[n-1].Final() {
		return f.events[n-1], true
	}
	return job.Event{}, false
}

// planeRebooter checks, when the agent reboots, that the control plane
// already stored the final "done".
type planeRebooter struct {
	f      *fakePlane
	called int
	ok     bool
}

func (p *planeRebooter) Reboot(context.Context) error {
	p.called++
	e, ok := p.f.final()
	p.ok = ok && e.Status == job.StatusDone
	return nil
}

// TestServeReportsAndRebootsAfterAck: the agent posts its inventory,
// runs the job, reports every step, and reboots once, after the control
// plane stored "done". The control plane refuses event posts for the
// first seconds: the deployment goes on (the writer never waits on the
// network), the queue stays bounded, and everything arrives afterwards;
// heartbeats go out while nothing else does.
func TestServeReportsAndRebootsAfterAck(t *testing.T) {
	img := testImage(t, 24*mib, 512)
	// The fake machine booted by BIOS (no firmware/efi): the image needs
	// boot code in its MBR, or the image checks refuse it.
	copy(img, []byte{0xfa, 0xcd, 0x18})
	url := serve(t, img, "")
	body, _ := json.Marshal(map[string]any{"URL": url, "type": "raw", "checkSum": sumHex(sha256.New(), img), "checkSumType": "sha256"})
	f := &fakePlane{t: t, job: body, token: "tok-123", refuseUntil: time.Now().Add(1500 * time.Millisecond)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c, err := NewClient(srv.URL, "s1", "tok-123", ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rb := &planeRebooter{f: f}
	m := testMachine(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = Serve(ctx, AgentConfig{
		Client: c, Once: true, ReportInterval: 50 * time.Millisecond, Heartbeat: 100 * time.Millisecond, MaxWait: time.Second,
		Env: Env{Machine: m, Target: oldSystemDisk(t, 32*mib), Rebooter: rb},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rb.called != 1 || !rb.ok {
		t.Errorf("reboot called %d times, after the final done was stored: %v", rb.called, rb.ok)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refused == 0 {
		t.Error("the control plane never refused: the test did not test the queue")
	}
	if len(f.boots) != 1 || f.boots[0].DeploymentID != 7 {
		t.Errorf("boot information posted before the reboot: %+v, want one for deployment 7", f.boots)
	}
	steps := map[job.Step]bool{}
	for _, e := range f.events {
		steps[e.Step] = true
	}
	for _, s := range []job.Step{job.StepPreflight, job.StepDownload, job.StepVerify, job.StepWrite, job.StepRelocate, job.StepFinish} {
		if !steps[s] {
			t.Errorf("step %s never reported", s)
		}
	}
	if f.maxBatch > agentapi.MaxBatchEvents {
		t.Errorf("a batch of %d events", f.maxBatch)
	}
}

// TestServeHeartbeats: while a step runs long (a slow download), the
// reporter sends heartbeats.
func TestServeHeartbeats(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	// The fake machine booted by BIOS (no firmware/efi): the image needs
	// boot code in its MBR, or the image checks refuse it.
	copy(img, []byte{0xfa, 0xcd, 0x18})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", itoa(int64(len(img))))
		for off := 0; off < len(img); off += 1 << 20 {
			if _, err := w.Write(img[off : off+1<<20]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer slow.Close()
	body, _ := json.Marshal(map[string]any{"URL": slow.URL, "type": "raw"})
	f := &fakePlane{t: t, job: body, token: "tok"}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c, _ := NewClient(srv.URL, "s1", "tok", ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Progress events every 10 s at most: between them only heartbeats.
	err := Serve(ctx, AgentConfig{
		Client: c, Once: true, ReportInterval: 10 * time.Second, Heartbeat: 200 * time.Millisecond, MaxWait: time.Second,
		Env: Env{Machine: testMachine(t), Target: oldSystemDisk(t, 32*mib), ProgressInterval: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.heartbeats < 3 {
		t.Errorf("%d heartbeats during a 1.6 s download", f.heartbeats)
	}
}

// TestServeTokenRefused: a refused token ends the agent with a clear error
// (retrying cannot fix it), and the token is not in it.
func TestServeTokenRefused(t *testing.T) {
	f := &fakePlane{t: t, token: "right"}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c, _ := NewClient(srv.URL, "s1", "WRONG-SECRET-TOKEN", ClientOptions{})
	err := Serve(context.Background(), AgentConfig{Client: c, Env: Env{Machine: testMachine(t)}, MaxWait: time.Second})
	if err == nil || !strings.Contains(err.Error(), "refused the agent token") || strings.Contains(err.Error(), "WRONG-SECRET") {
		t.Errorf("err %v", err)
	}
}

// testMachine is a fake machine with one virtio disk, so the inventory is
// the same everywhere.
func testMachine(t *testing.T) Machine {
	t.Helper()
	r := blockdevtest.Virtio(map[string]int64{"vda": 64 * mib}).Build(t, true)
	return blockdev.System{SysRoot: r.Sys, ProcRoot: r.Proc, DevRoot: r.Dev}
}
