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

	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// halfServer serves the first half of data, then holds the connection open
// (the rest never comes) until the client goes away; sent is closed once
// the half went out.
func halfServer(t *testing.T, data []byte) (url string, sent <-chan struct{}) {
	t.Helper()
	half := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		once.Do(func() { close(half) })
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/img", half
}

// TestInterruptedDuringDownload: SIGTERM or Ctrl-C (the context Run gets is
// cancelled) while the image downloads ends with an error that says the
// deployment was interrupted, and in which step — in the final event the
// control plane gets and in the error the CLI prints — never as a download
// error ("Could not download image located : URL. context canceled", what
// the download's own error said before). Raw, qcow2 (streamed, or staged:
// the disk keeps its old system) and OVA all download in their download
// step.
func TestInterruptedDuringDownload(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	q, err := testimage.Qcow2(img, 16)
	if err != nil {
		t.Fatal(err)
	}
	ova, err := testimage.OVA(img, testimage.VMware)
	if err != nil {
		t.Fatal(err)
	}
	const want = "the deployment was interrupted during its download step"
	for _, c := range []struct {
		typ  string
		data []byte
	}{{"raw", img}, {"qcow2", q}, {"qcow2-staged", q}, {"ova", ova}} {
		t.Run(c.typ, func(t *testing.T) {
			staged := c.typ == "qcow2-staged"
			typ := strings.TrimSuffix(c.typ, "-staged")
			disk := crashcheck.OldSystem(t, 512, 32*mib)
			before, err := os.ReadFile(disk)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec := &recorder{}
			env := Env{Target: disk, Report: ReporterFunc(rec.report),
				Options: Options{Fetch: rec.deployer().Fetch, Logger: rec.deployer().Logger, Qcow2Staging: staged}}
			url, sent := halfServer(t, c.data)
			go func() {
				// The signal arrives mid-download: half the image came
				// (and was written, for raw and OVA), the rest is awaited.
				<-sent
				time.Sleep(300 * time.Millisecond)
				cancel()
			}()
			_, err = Run(ctx, &job.Job{ImageURL: url, ImageType: typ, DiskGroupID: 1}, env)
			if err == nil {
				t.Fatal("an interrupted deployment succeeded")
			}
			if code, msg := job.Describe(err); code != job.InterruptedStep || msg != want {
				t.Errorf("error %s %q, want InterruptedStep %q", code, msg, want)
			}
			if msg := Message(err); msg != want {
				t.Errorf("Message %q, want %q", msg, want)
			}
			rec.mu.Lock()
			last := rec.events[len(rec.events)-1]
			rec.mu.Unlock()
			if last.Status != job.StatusError || last.Step != job.StepDownload || last.Code != job.InterruptedStep || last.Message != want {
				t.Errorf("final event %+v", last)
			}
			if strings.Contains(last.Message, "Could not download") || strings.Contains(last.Message, "context canceled") {
				t.Errorf("final event reads as a download error: %q", last.Message)
			}
			after, err := os.ReadFile(disk)
			if err != nil {
				t.Fatal(err)
			}
			// Staged in memory, nothing was written before the download
			// ended: the old system is intact. Streamed, the disk is left
			// without a partition table.
			if staged && !bytes.Equal(before, after) {
				t.Error("the disk changed")
			}
			if !staged && !bytes.Equal(before, after) {
				testutil.AssertNoTable(t, disk)
			}
		})
	}
}
