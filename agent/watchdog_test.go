package agent

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/job"
)

// stallingServer answers with the headers of a 16 MiB image and then sends
// nothing until the test ends.
func stallingServer(t *testing.T) string {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(16*mib))
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv.URL + "/img"
}

// stalledRun deploys from a server that stalls forever, the download's own
// stall detection off: only the watchdog can end it.
func stalledRun(t *testing.T, limit time.Duration) (err error, events []job.Event, dump string, disk string, took time.Duration) {
	t.Helper()
	disk = crashcheck.OldSystem(t, 512, 32*mib)
	rec := &recorder{}
	var diag bytes.Buffer
	var mu sync.Mutex
	env := Env{
		Target: disk, Report: ReporterFunc(rec.report),
		Options: Options{Logger: rec.deployer().Logger,
			Fetch: fetch.Options{ConnectTimeout: 5 * time.Second, StallTimeout: time.Hour, SpeedLimit: -1, MaxRetries: -1}},
		NoProgressLimit: limit, Diagnostics: &lockedWriter{mu: &mu, w: &diag},
	}
	// Without the watchdog this would end at the minute, Interrupted.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err = Run(ctx, &job.Job{ImageURL: stallingServer(t), ImageType: "raw", DiskGroupID: 1}, env)
	took = time.Since(start)
	rec.mu.Lock()
	events = append(events, rec.events...)
	rec.mu.Unlock()
	mu.Lock()
	dump = diag.String()
	mu.Unlock()
	return err, events, dump, disk, took
}

// TestWatchdogStopsStalledDownload: a deployment that stops moving fails
// with NoProgress at its step, the final event says so, the dump shows
// where it waited, and the disk is as it was.
func TestWatchdogStopsStalledDownload(t *testing.T) {
	limit := 400 * time.Millisecond
	err, events, dump, disk, took := stalledRun(t, limit)
	before := crashcheck.OldSystem(t, 512, 32*mib) // the same old system, untouched
	if err == nil {
		t.Fatal("a stalled deployment succeeded")
	}
	if c, msg := job.Describe(err); c != job.NoProgress || msg != job.Text(job.NoProgress, limit, job.StepDownload) {
		t.Errorf("error %v: code %s %q", err, c, msg)
	}
	if s := FailedStep(err); s != job.StepDownload {
		t.Errorf("failed step %q, want download", s)
	}
	if took > 30*time.Second {
		t.Errorf("the watchdog took %v for a limit of %v", took, limit)
	}
	last := events[len(events)-1]
	if last.Status != job.StatusError || last.Code != job.NoProgress || last.Step != job.StepDownload {
		t.Errorf("final event %+v", last)
	}
	for _, want := range []string{"byoi watchdog: no progress for", "in step download", "github.com/byoi/byoi/imaging/fetch.", "byoi watchdog: end of the goroutine dump"} {
		if !strings.Contains(dump, want) {
			t.Errorf("the dump lacks %q:\n%s", want, dump)
		}
	}
	if strings.Contains(dump, "agent.writeStacks") || strings.Contains(dump, "+0x") {
		t.Errorf("the dump shows the watchdog itself or raw offsets:\n%s", dump)
	}
	got, _ := os.ReadFile(disk)
	want, _ := os.ReadFile(before)
	if !bytes.Equal(got, want) {
		t.Error("the disk changed though no image byte arrived")
	}
}

// stuckMachine's disk listing blocks until released, whatever the context
// says: a goroutine stuck in the kernel.
type stuckMachine struct{ release chan struct{} }

func (m stuckMachine) Disks(blockdev.ScanOptions) ([]blockdev.Disk, error) {
	<-m.release
	return nil, nil
}
func (m stuckMachine) InUseByPath(string) (string, error)             { return "", nil }
func (m stuckMachine) FindConfigDriveLabels(string) ([]string, error) { return nil, nil }

// TestWatchdogGivesUpOnStuckPipeline: a pipeline that ignores its
// cancellation is reported after the grace period all the same.
func TestWatchdogGivesUpOnStuckPipeline(t *testing.T) {
	m := stuckMachine{release: make(chan struct{})}
	defer close(m.release)
	rec := &recorder{}
	env := Env{Machine: m, Report: ReporterFunc(rec.report), NoProgressLimit: 200 * time.Millisecond, noProgressGraceForTest: 200 * time.Millisecond}
	start := time.Now()
	_, err := Run(context.Background(), &job.Job{ImageURL: "http://127.0.0.1:1/i", ImageType: "raw", DiskGroupID: 1}, env)
	if c, _ := job.Describe(err); c != job.NoProgress || FailedStep(err) != job.StepPreflight {
		t.Fatalf("err %v (code %s, step %q)", err, c, FailedStep(err))
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("reported after %v", d)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if n := len(rec.events); n == 0 || rec.events[n-1].Code != job.NoProgress {
		t.Errorf("events %+v", rec.events)
	}
}

// TestWatchdogKeepsMovingDeployment: a deployment whose events keep coming
// is not stopped, though the whole run lasts several times the limit (the
// image trickles in); the watchdog can also be turned off.
func TestWatchdogKeepsMovingDeployment(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	const chunks = 24
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		step := len(img) / chunks
		for i := 0; i < len(img); i += step {
			w.Write(img[i:min(i+step, len(img))])
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer srv.Close()
	limit := 500 * time.Millisecond
	for _, l := range []time.Duration{limit, -1} {
		rec := &recorder{}
		env := Env{Target: crashcheck.OldSystem(t, 512, 32*mib), Report: ReporterFunc(rec.report), Options: Options{Fetch: rec.deployer().Fetch}, NoProgressLimit: l}
		start := time.Now()
		if _, err := Run(context.Background(), &job.Job{ImageURL: srv.URL, ImageType: "raw", DiskGroupID: 1}, env); err != nil {
			t.Fatalf("limit %v: %v", l, err)
		}
		if d := time.Since(start); l > 0 && d < 3*l {
			t.Fatalf("the run took %v, not several times the limit %v: the test proves nothing", d, l)
		}
	}
}

func TestCompactStacks(t *testing.T) {
	dump := "goroutine 1 [running]:\n" +
		"main.main()\n\t/src/main.go:10 +0x1d\n\n" +
		"goroutine 7 [IO wait, 3 minutes]:\n" +
		"internal/poll.runtime_pollWait(0x7f, 0x72)\n\t/go/src/runtime/netpoll.go:351 +0x85\n" +
		"github.com/byoi/byoi/imaging.(*Stream).Read(0xc000123, {0xc000, 0x8000, 0x8000})\n\t/w/imaging/fetch.go:730 +0x2a\n" +
		"created by github.com/byoi/byoi/agent.Run in goroutine 1\n\t/w/agent/run.go:120 +0x99\n\n" +
		"goroutine 9 [running]:\n" +
		"github.com/byoi/byoi/agent.writeStacks(...)\n\t/w/agent/watchdog.go:100 +0x1\n"
	want := "goroutine 7 [IO wait, 3 minutes]:\n" +
		"  internal/poll.runtime_pollWait  /go/src/runtime/netpoll.go:351\n" +
		"  github.com/byoi/byoi/imaging.(*Stream).Read  /w/imaging/fetch.go:730\n" +
		"  created by github.com/byoi/byoi/agent.Run in goroutine 1  /w/agent/run.go:120\n"
	if got := compactStacks([]byte(dump)); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
