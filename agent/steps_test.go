package agent

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/job"
)

// trickle serves data in 8 pieces over about 400 ms, with its length.
func trickle(t *testing.T, data []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		piece := (len(data) + 7) / 8
		for off := 0; off < len(data); off += piece {
			w.Write(data[off:min(off+piece, len(data))])
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// stepLog finds the logged end ("done") or failure of a step and its
// duration.
func stepLog(t *testing.T, log, what string, step job.Step) []time.Duration {
	t.Helper()
	re := regexp.MustCompile(`msg="step ` + what + `" step=` + string(step) + ` .*elapsed=(\S+)`)
	var out []time.Duration
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("elapsed %q: %v", m[1], err)
		}
		out = append(out, d)
	}
	return out
}

// TestStepTracker: one tracker starts, ends and fails every step. Each
// step starts once (one start event), qcow2's download included; the
// download step ends when the image's last byte arrived, not with the
// response headers; and a failure is logged once, at the step it
// happened in.
func TestStepTracker(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	q, err := testimage.Qcow2(img, 16)
	if err != nil {
		t.Fatal(err)
	}
	o, err := testimage.OVA(img, testimage.VMware)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		typ  string
		data []byte
	}{{"raw", img}, {"qcow2", q}, {"ova", o}} {
		t.Run(tc.typ, func(t *testing.T) {
			rec := &recorder{}
			j := &job.Job{ImageURL: trickle(t, tc.data), ImageType: tc.typ, DiskGroupID: 1,
				Checksum: sumHex(sha256.New(), tc.data), ChecksumType: "sha256"}
			if _, err := rec.run(t, j, oldSystemDisk(t, 32*mib)); err != nil {
				t.Fatal(err)
			}
			starts := map[job.Step]int{}
			var order []job.Step
			for _, e := range rec.events {
				if e.Kind == job.KindInfo && e.Status != job.StatusDone && e.Status != job.StatusError {
					starts[e.Step]++
					order = append(order, e.Step)
				}
			}
			for _, s := range []job.Step{job.StepPreflight, job.StepDownload, job.StepVerify, job.StepWrite, job.StepRelocate, job.StepBootCheck, job.StepFinish} {
				if starts[s] != 1 {
					t.Errorf("step %s started %d times: %v", s, starts[s], order)
				}
			}
			rec.mu.Lock()
			log := rec.log.String()
			rec.mu.Unlock()
			done := stepLog(t, log, "done", job.StepDownload)
			if len(done) != 1 || done[0] < 300*time.Millisecond {
				t.Errorf("the download step ended %v after it started, want once, after the last byte (about 400 ms)", done)
			}
			if strings.Contains(log, "step failed") {
				t.Errorf("a step failed:\n%s", log)
			}
		})
	}
	t.Run("failure", func(t *testing.T) {
		rec := &recorder{}
		j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1,
			Checksum: sumHex(sha256.New(), []byte("other")), ChecksumType: "sha256"}
		_, err := rec.run(t, j, oldSystemDisk(t, 32*mib))
		if FailedStep(err) != job.StepVerify {
			t.Fatalf("failed at %q: %v", FailedStep(err), err)
		}
		rec.mu.Lock()
		log := rec.log.String()
		rec.mu.Unlock()
		if n := strings.Count(log, `msg="step failed"`); n != 1 || len(stepLog(t, log, "failed", job.StepVerify)) != 1 {
			t.Errorf("%d failures logged, want one at verify:\n%s", n, log)
		}
	})
}
