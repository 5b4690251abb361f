package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// wired is a Metrics with every collector and one observation in each
// labelled family, so that every family shows in a scrape.
func wired(t *testing.T) *Metrics {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, err := imagecache.Open(imagecache.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := New(Options{})
	m.WatchFleet(st)
	m.WatchCache(c)
	ts := m.Store(st)
	ts.PutInventory(context.Background(), 1, []byte("{}"), time.Now())
	m.EventBatch([]job.Event{{Kind: job.KindProgress, Status: job.StatusDoing}}, nil)
	m.EventBatch(nil, nil)
	m.DeploymentEnded("qcow2", store.TaskDone, time.Minute, map[job.Step]time.Duration{job.StepDownload: time.Second})
	m.PowerAction("cycle", "ok", time.Second)
	h := m.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
	return m
}

// names are the metric names a scrape of m shows (histograms with their
// _bucket, _sum and _count).
func names(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range mfs {
		out[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[f.GetName()+s] = true
			}
		}
	}
	return out
}

// TestDocsAlertsAndDashboard: docs/prometheus-alerts.yml passes promtool's
// check and its unit tests (two instances exporting the same fleet figures
// alert once, with the fleet's number); every query of the Grafana
// dashboard (docs/grafana-byoi-api.json) is valid PromQL (promtool checks
// them as recording rules); and every byoi_ series either names exists.
func TestDocsAlertsAndDashboard(t *testing.T) {
	promtool := testutil.RequireCommand(t, "promtool")
	docs := filepath.Join("..", "..", "docs")
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(docs, "prometheus-alerts.yml")},
		{"test", "rules", filepath.Join(docs, "prometheus-alerts.test.yml")},
	} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(docs, "grafana-byoi-api.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) < 20 {
		t.Fatalf("the dashboard has %d queries", len(exprs))
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		e = strings.ReplaceAll(e, "$job", ".*")
		q, _ := json.Marshal(e)
		fmt.Fprintf(&rules, "      - record: dashboard:q%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	os.WriteFile(f, []byte(rules.String()), 0o600)
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("the dashboard's queries: %v\n%s", err, out)
	}
	alerts, _ := os.ReadFile(filepath.Join(docs, "prometheus-alerts.yml"))
	known := names(t, wired(t))
	seen := map[string]bool{}
	for _, n := range regexp.MustCompile(`\b(byoi_[a-z_]+|process_[a-z_]+)\b`).FindAllString(strings.Join(exprs, "\n")+string(alerts), -1) {
		if !strings.HasSuffix(n, "_") { // "byoi_fleet_*" in a comment
			seen[n] = true
		}
	}
	var missing []string
	for n := range seen {
		if !known[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard or the alerts use series byoi-api does not export: %v", missing)
	}
	// Every byoi family appears on the dashboard or in an alert.
	for n := range known {
		if strings.HasPrefix(n, "byoi_") && !seen[n] && !seen[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")+"_bucket"] && !strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") {
			if !strings.HasSuffix(n, "_bucket") && !seen[n+"_bucket"] {
				t.Errorf("%s is on neither the dashboard nor an alert", n)
			}
		}
	}
}

// TestStepDurations: from a history, the last attempt's steps, each from
// its first event to the next step's (the last to the final event).
func TestStepDurations(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	at := func(sec int, attempt int, step job.Step, src string) store.Entry {
		return store.Entry{Attempt: attempt, Source: src, Event: job.Event{Time: t0.Add(time.Duration(sec) * time.Second), Step: step}}
	}
	got := StepDurations([]store.Entry{
		at(0, 0, "", store.SourceControlPlane),
		at(1, 1, job.StepPreflight, store.SourceAgent), at(2, 1, job.StepDownload, store.SourceAgent),
		at(10, 2, job.StepPreflight, store.SourceAgent), at(12, 2, job.StepDownload, store.SourceAgent), at(40, 2, job.StepDownload, store.SourceAgent),
		at(42, 2, job.StepWrite, store.SourceAgent), at(45, 2, job.StepFinish, store.SourceAgent), at(46, 2, job.StepFinish, store.SourceAgent),
	}, 2)
	want := map[job.Step]time.Duration{job.StepPreflight: 2 * time.Second, job.StepDownload: 30 * time.Second, job.StepWrite: 3 * time.Second, job.StepFinish: time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestInstrument: the route pattern, not the path; the status; an answer
// cut before its header counts as "aborted"; the writer keeps Flush and
// ReadFrom.
func TestInstrument(t *testing.T) {
	m := New(Options{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /servers/{name}", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := w.(http.Flusher); !ok {
			t.Error("no Flusher")
		}
		w.WriteHeader(http.StatusTeapot)
	})
	mux.HandleFunc("POST /cut", func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) })
	srv := httptest.NewServer(m.Instrument(mux))
	defer srv.Close()
	for _, p := range []string{"/servers/ns1", "/servers/secret-name", "/nothing"} {
		if resp, err := http.Get(srv.URL + p); err == nil {
			resp.Body.Close()
		}
	}
	if resp, err := http.Post(srv.URL+"/cut", "text/plain", nil); err == nil { // a POST: the client does not retry it
		resp.Body.Close()
	}
	mfs, _ := m.Registry().Gather()
	var series []string
	for _, f := range mfs {
		if f.GetName() != "byoi_http_requests_total" {
			continue
		}
		for _, s := range f.Metric {
			var l []string
			for _, lp := range s.Label {
				l = append(l, lp.GetName()+"="+lp.GetValue())
			}
			series = append(series, fmt.Sprintf("%s %v", strings.Join(l, ","), s.Counter.GetValue()))
		}
	}
	sort.Strings(series)
	want := []string{"code=404,method=GET,route=unmatched 1", "code=418,method=GET,route=GET /servers/{name} 2", "code=aborted,method=POST,route=POST /cut 1"}
	if fmt.Sprint(series) != fmt.Sprint(want) {
		t.Errorf("series %v, want %v", series, want)
	}
}
