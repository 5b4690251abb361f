package controlplane_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/metrics"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const cacheHeaderSecret = "ORIGIN-HEADER-s3cret"

// imageOrigin serves data at /img.raw to requests with the job's header,
// counting requests and bytes; /hang never answers.
func imageOrigin(t *testing.T, data []byte) (*httptest.Server, *atomic.Int64, *atomic.Int64) {
	var reqs, sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		if r.URL.Path == "/hang" {
			<-r.Context().Done()
			return
		}
		if r.Header.Get("X-Token") != cacheHeaderSecret {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(&countingRW{w, &sent}, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv, &reqs, &sent
}

type countingRW struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingRW) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func cacheJob(url, sum string) map[string]any {
	b := map[string]any{"URL": url, "type": "raw",
		"httpHeader": []map[string]string{{"key": "X-Token", "value": cacheHeaderSecret}}}
	if sum != "" {
		b["checkSum"], b["checkSumType"] = sum, "sha256"
	}
	return b
}

// getImage reads the agent's image path with its token.
func (a *agent) getImage(path, rng string) (int, http.Header, []byte) {
	a.e.t.Helper()
	req, _ := http.NewRequest("GET", a.e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestImageCacheRoute: through the real HTTP server: the assignment names
// the image path when the job has a checksum; the agent reads its image
// there (whole, and by range) with its token, the origin sends it once; a
// job without checksum is not cached (404, CacheNotServed); an origin that
// has not answered yet makes the cache answer 503 with Retry-After
// (CacheBusy); other tokens are refused. Then /metrics is scraped, parsed
// with Prometheus' parser and checked, and `promtool check metrics` judges
// it.
func TestImageCacheRoute(t *testing.T) {
	data := make([]byte, 6<<20+123)
	r := rand.NewChaCha8([32]byte{9})
	r.Read(data)
	s := sha256.Sum256(data)
	sum := hex.EncodeToString(s[:])
	origin, reqs, sent := imageOrigin(t, data)
	m := metrics.New(metrics.Options{FleetEvery: time.Nanosecond})
	var cache *imagecache.Cache
	e := newEnv(t, cfg(func(cfg *controlplane.Config) {
		if cfg.Store == nil {
			return // newEnv's first pass reads only the env's settings
		}
		var err error
		cache, err = imagecache.Open(imagecache.Config{Dir: t.TempDir(), Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, QueueWait: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cache.Close() })
		m.WatchFleet(cfg.Store)
		m.WatchCache(cache)
		cfg.Store, cfg.ImageCache, cfg.Metrics = m.Store(cfg.Store), cache, m
	}))
	e.secret(cacheHeaderSecret)
	cu := e.customer("acme")
	ns1, ns2, ns3 := e.server("ns1", "acme"), e.server("ns2", "acme"), e.server("ns3", "acme")
	cv := &coverage{t: t, seen: map[job.Code]string{}}

	if err := cu.signed.Post(path("ns1", "/bringYourOwnImage"), cacheJob(origin.URL+"/img.raw?sig=QUERY-SECRET", sum), nil); err != nil {
		t.Fatal(err)
	}
	e.secret("QUERY-SECRET")
	as := ns1.pickUp()
	if as.ImagePath != agentapi.ImagePath("ns1", as.DeploymentID) {
		t.Fatalf("assignment's image path %q", as.ImagePath)
	}
	st, h, b := ns1.getImage(as.ImagePath, "")
	if st != 200 || !bytes.Equal(b, data) || h.Get("ETag") == "" {
		t.Fatalf("image: %d, %d bytes", st, len(b))
	}
	// The first reader may get its last byte before the fill records
	// its end (the checksum verified, the entry complete): wait for it, so
	// that the second request is a hit, not a join.
	for deadline := time.Now().Add(10 * time.Second); cache.Stats().FillsOK.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the cache's fill did not end within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, _, b = ns1.getImage(as.ImagePath, "bytes=1000-")
	if st != 206 || !bytes.Equal(b, data[1000:]) {
		t.Fatalf("range: %d, %d bytes", st, len(b))
	}
	if reqs.Load() != 1 || sent.Load() != int64(len(data)) {
		t.Errorf("origin: %d requests, %d bytes", reqs.Load(), sent.Load())
	}
	// Other agents' tokens: another server's path, no token.
	st2, ae := ns2.do("GET", as.ImagePath, nil, nil)
	cvOK := st2 == 403 && ae.Message == job.Text(job.APIAgentNotAllowed, "ns1")
	if !cvOK {
		t.Errorf("another server's token: %d %+v", st2, ae)
	}
	// The agent's events, to the end.
	ns1.mustSend(ns1.event(job.StatusDoing, job.StepPreflight, job.KindInfo, "", "preflight", 0, 0))
	ns1.mustSend(ns1.event(job.StatusDoing, job.StepDownload, job.KindProgress, "", "download", 1<<20, int64(len(data))))
	ns1.mustSend()
	ns1.mustSend(ns1.event(job.StatusDoing, job.StepWrite, job.KindProgress, "", "write", 1<<20, int64(len(data))))
	ns1.mustSend(ns1.event(job.StatusDone, job.StepFinish, job.KindInfo, job.MsgDone, "done", 0, 0))
	if st, _, _ := ns1.getImage(as.ImagePath, ""); st != 410 {
		t.Errorf("the image of an ended deployment: %d, want 410", st)
	}

	// No checksum: not through the cache.
	if err := cu.signed.Post(path("ns2", "/bringYourOwnImage"), cacheJob(origin.URL+"/img.raw", ""), nil); err != nil {
		t.Fatal(err)
	}
	as2 := ns2.pickUp()
	if as2.ImagePath != "" {
		t.Errorf("a job without checksum got image path %q", as2.ImagePath)
	}
	st, ae = ns2.do("GET", agentapi.ImagePath("ns2", as2.DeploymentID), nil, nil)
	cv.refusal("image of a job without checksum", st, ae.Class, ae.Message, 404, "Client::NotFound", job.CacheNotServed)

	// An origin that does not answer: busy.
	if err := cu.signed.Post(path("ns3", "/bringYourOwnImage"), cacheJob(origin.URL+"/hang", strings.Repeat("ab", 32)), nil); err != nil {
		t.Fatal(err)
	}
	as3 := ns3.pickUp()
	req, _ := http.NewRequest("GET", e.url+as3.ImagePath, nil)
	req.Header.Set("Authorization", "Bearer "+ns3.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body agentapi.Error
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	cv.refusal("image whose origin has not answered", resp.StatusCode, body.Class, body.Message, 503, "Server::ServiceUnavailable", job.CacheBusy, 5)
	if resp.Header.Get("Retry-After") != "5" {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	for c := range map[job.Code]bool{job.CacheNotServed: true, job.CacheBusy: true} {
		if _, ok := cv.seen[c]; !ok {
			t.Errorf("%s not triggered", c)
		}
	}

	// The metrics, as Prometheus reads them.
	mf := scrape(t, m, e)
	want := func(name string, labels map[string]string, ok func(float64) bool, what string) {
		t.Helper()
		v, found := value(mf, name, labels)
		if !found || !ok(v) {
			t.Errorf("%s%v = %v (found %v), want %s", name, labels, v, found, what)
		}
	}
	eq := func(w float64) func(float64) bool { return func(v float64) bool { return v == w } }
	atLeast := func(w float64) func(float64) bool { return func(v float64) bool { return v >= w } }
	route := "GET " + agentapi.Prefix + "/servers/{server}/deployments/{id}/image"
	want("byoi_http_requests_total", map[string]string{"route": route, "code": "200"}, eq(1), "1")
	want("byoi_http_requests_total", map[string]string{"route": route, "code": "206"}, eq(1), "1")
	want("byoi_http_requests_total", map[string]string{"route": route, "code": "503"}, eq(1), "1")
	want("byoi_http_requests_total", map[string]string{"route": "/agent/v1/servers/{server}/deployments/{id}/events", "code": "200"}, eq(5), "5")
	want("byoi_http_request_duration_seconds_count", map[string]string{"route": "/agent/v1/servers/{server}/job"}, eq(3), "3")
	want("byoi_image_cache_requests_total", map[string]string{"outcome": "miss"}, eq(2), "2 (ns1's, ns3's)")
	want("byoi_image_cache_requests_total", map[string]string{"outcome": "hit"}, eq(1), "1")
	want("byoi_image_cache_requests_total", map[string]string{"outcome": "busy"}, eq(1), "1")
	want("byoi_image_cache_origin_bytes_total", nil, eq(float64(len(data))), "the image's size")
	want("byoi_image_cache_served_bytes_total", nil, eq(float64(2*len(data)-1000)), "the bytes sent")
	want("byoi_image_cache_fills_total", map[string]string{"result": "ok"}, eq(1), "1")
	want("byoi_agent_events_total", map[string]string{"kind": "progress", "status": "doing"}, eq(2), "2")
	want("byoi_agent_events_total", map[string]string{"kind": "info", "status": "done"}, eq(1), "1")
	want("byoi_agent_batches_total", map[string]string{"outcome": "heartbeat"}, eq(1), "1")
	want("byoi_agent_batches_total", map[string]string{"outcome": "stored"}, eq(4), "4")
	want("byoi_store_write_duration_seconds_count", map[string]string{"op": "append_events"}, eq(5), "5")
	want("byoi_store_write_duration_seconds_count", map[string]string{"op": "create_deployment"}, eq(3), "3")
	want("byoi_fleet_servers", nil, eq(3), "3")
	want("byoi_fleet_tasks", map[string]string{"status": "done"}, eq(1), "1")
	want("byoi_fleet_deployments_running", map[string]string{"phase": "active"}, eq(2), "2")
	want("byoi_fleet_agents_heartbeating", nil, eq(2), "2")
	want("byoi_fleet_read_ok", nil, eq(1), "1")
	want("go_goroutines", nil, atLeast(1), "some")
	// The deployment's duration and steps are observed off the request.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mf = scrape(t, m, e)
		if v, _ := value(mf, "byoi_deployment_duration_seconds_count", map[string]string{"image_type": "raw", "result": "done"}); v == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	want("byoi_deployment_duration_seconds_count", map[string]string{"image_type": "raw", "result": "done"}, eq(1), "1")
	for _, step := range []string{"preflight", "download", "write"} {
		want("byoi_deployment_step_duration_seconds_count", map[string]string{"image_type": "raw", "step": step}, eq(1), "1")
	}
	// No label names a server, a customer, a URL or a secret.
	for _, f := range mf {
		for _, mm := range f.Metric {
			for _, l := range mm.Label {
				for _, bad := range []string{"ns1", "ns2", "acme", "127.0.0.1", "img.raw", "QUERY-SECRET", cacheHeaderSecret, ns1.token} {
					if strings.Contains(l.GetValue(), bad) {
						t.Errorf("%s has label %s=%q", f.GetName(), l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
}

// scrape reads /metrics over HTTP, checks it with promtool, and parses it
// with Prometheus' own text parser.
func scrape(t *testing.T, m *metrics.Metrics, e *env) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	promtool := testutil.RequireCommand(t, "promtool")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("expfmt: %v", err)
	}
	return mf
}

// value is the value of the series of family name whose labels include
// labels (a histogram's _count and _sum too).
func value(mf map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	base, suffix := name, ""
	for _, s := range []string{"_count", "_sum"} {
		if b, ok := strings.CutSuffix(name, s); ok && mf[name] == nil {
			base, suffix = b, s
		}
	}
	f := mf[base]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil && suffix == "_count":
			return float64(m.Histogram.GetSampleCount()), true
		case m.Histogram != nil && suffix == "_sum":
			return m.Histogram.GetSampleSum(), true
		}
	}
	return 0, false
}
