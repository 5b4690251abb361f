// Package metrics is byoi-api's Prometheus metrics (issue 28), served in
// Prometheus' text format on a listener of the operator's choosing
// (`--metrics-listen`, never the customer listener).
//
// Two kinds of series:
//
//   - per instance (counters and histograms of what this instance did:
//     requests, agent events, store writes, deployment durations, the image
//     cache, power actions): aggregate across instances with sum();
//   - fleet-wide, read from the database (byoi_fleet_*: servers, running
//     deployments, agents heartbeating, tasks by status): every instance
//     exports the same numbers, so aggregate with max() (or pick one
//     instance), never sum(); each carries byoi_fleet_read_ok.
//
// No label holds a secret, a URL or its query, a server or customer name:
// routes are the router's patterns ("/1.0/dedicated/server/{serviceName}"),
// and the other labels are small fixed sets (image type, step, result).
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configure New.
type Options struct {
	// HeartbeatWindow: a running deployment's agent heard within this long
	// counts as heartbeating (default 90 s: three agent heartbeats).
	HeartbeatWindow time.Duration
	// FleetEvery is how long a reading of the fleet's figures is reused
	// (default 10 s): a scrape costs at most one store read per period.
	FleetEvery time.Duration
	Logger     *slog.Logger
	Now        func() time.Time
}

// Metrics holds byoi-api's collectors.
type Metrics struct {
	opts Options
	reg  *prometheus.Registry

	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	events        *prometheus.CounterVec
	batches       *prometheus.CounterVec
	storeWrites   *prometheus.HistogramVec
	storeErrors   *prometheus.CounterVec
	deployments   *prometheus.HistogramVec
	steps         *prometheus.HistogramVec
	powerActions  *prometheus.CounterVec
	powerDuration *prometheus.HistogramVec

	endedMu sync.Mutex
	ended   map[int64]bool // deployments whose end was observed (a repeated final batch is not counted twice)
	endedQ  []int64
}

// New returns the metrics, registered with the Go runtime's and the
// process's collectors.
func New(opts Options) *Metrics {
	if opts.HeartbeatWindow <= 0 {
		opts.HeartbeatWindow = 90 * time.Second
	}
	if opts.FleetEvery <= 0 {
		opts.FleetEvery = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Metrics{opts: opts, reg: prometheus.NewRegistry(), ended: map[int64]bool{}}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "byoi_http_requests_total", Help: "HTTP requests served, by route pattern, method and status code.",
	}, []string{"route", "method", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "byoi_http_request_duration_seconds", Help: "Time to serve an HTTP request, by route pattern and method (an image answer lasts its whole transfer).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 120, 600},
	}, []string{"route", "method"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "byoi_agent_events_total", Help: "Agent events stored, by kind (info, progress, warning) and status (doing, done, error).",
	}, []string{"kind", "status"})
	m.batches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "byoi_agent_batches_total", Help: "Agent event batches, by outcome: stored, heartbeat (no event), refused (stale attempt, gone, invalid, store error).",
	}, []string{"outcome"})
	m.storeWrites = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "byoi_store_write_duration_seconds", Help: "Time of a store write as the API waits for it (group commit and flush included), by operation.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"op"})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "byoi_store_write_errors_total", Help: "Store writes that returned an error other than a refusal (not found, gone, stale), by operation.",
	}, []string{"op"})
	m.deployments = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "byoi_deployment_duration_seconds", Help: "Deployments ended by their agent's final event: time from the customer's request to the end, by image type and result (done, customerError, ovhError).",
		Buckets: []float64{30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200},
	}, []string{"image_type", "result"})
	m.steps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "byoi_deployment_step_duration_seconds", Help: "Duration of each step of a deployment's last attempt (agent's clock), by image type and step.",
		Buckets: []float64{.1, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600},
	}, []string{"image_type", "step"})
	m.powerActions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "byoi_power_actions_total", Help: "Power actions through servers' BMCs, by action and result.",
	}, []string{"action", "result"})
	m.powerDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "byoi_power_action_duration_seconds", Help: "Time of a power action through a server's BMC, by action.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"action"})
	m.reg.MustRegister(m.requests, m.latency, m.events, m.batches, m.storeWrites, m.storeErrors, m.deployments, m.steps,
		m.powerActions, m.powerDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry the metrics live in (tests, extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves /metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slogLogger{m.opts.Logger}}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "metrics are at /metrics", http.StatusNotFound)
	})
	return mux
}

type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Println(v ...any) { s.l.Warn("metrics", "err", v) }

// EventBatch records an agent's batch: its events by kind and status when
// stored, else its outcome.
func (m *Metrics) EventBatch(events []job.Event, err error) {
	switch {
	case err != nil:
		m.batches.WithLabelValues("refused").Inc()
	case len(events) == 0:
		m.batches.WithLabelValues("heartbeat").Inc()
	default:
		m.batches.WithLabelValues("stored").Inc()
		for _, e := range events {
			m.events.WithLabelValues(kindLabel(e.Kind), statusLabel(e.Status)).Inc()
		}
	}
}

func kindLabel(k job.Kind) string {
	switch k {
	case job.KindInfo, job.KindProgress, job.KindWarning:
		return string(k)
	}
	return "other"
}

func statusLabel(s job.Status) string {
	switch s {
	case job.StatusDoing, job.StatusDone, job.StatusError:
		return string(s)
	}
	return "other"
}

// ImageType is the image-type label of a job's type ("unknown" for
// anything else).
func ImageType(t string) string {
	switch t {
	case job.ImageTypeRaw, job.ImageTypeQcow2, job.ImageTypeOVA:
		return t
	}
	return "unknown"
}

// FirstEnd reports whether deployment id's end is observed for the first
// time by this instance (a repeated final batch is acknowledged again).
func (m *Metrics) FirstEnd(id int64) bool {
	m.endedMu.Lock()
	defer m.endedMu.Unlock()
	if m.ended[id] {
		return false
	}
	m.ended[id] = true
	m.endedQ = append(m.endedQ, id)
	if len(m.endedQ) > 8192 {
		delete(m.ended, m.endedQ[0])
		m.endedQ = m.endedQ[1:]
	}
	return true
}

// DeploymentEnded records a deployment ended by its agent: its duration
// and result, and the duration of each step of its last attempt.
func (m *Metrics) DeploymentEnded(imageType, result string, d time.Duration, steps map[job.Step]time.Duration) {
	it := ImageType(imageType)
	switch result {
	case store.TaskDone, store.TaskCustomerError, store.TaskOVHError:
	default:
		result = "other"
	}
	m.deployments.WithLabelValues(it, result).Observe(d.Seconds())
	for st, sd := range steps {
		if !knownStep(st) {
			st = "other"
		}
		m.steps.WithLabelValues(it, string(st)).Observe(sd.Seconds())
	}
}

func knownStep(s job.Step) bool {
	for _, k := range job.Steps {
		if k == s {
			return true
		}
	}
	return false
}

// StepDurations computes, from a deployment's history, the duration of
// each step of the given attempt: from a step's first event to the next
// step's first event (the last step ends with the final event).
func StepDurations(entries []store.Entry, attempt int) map[job.Step]time.Duration {
	out := map[job.Step]time.Duration{}
	var cur job.Step
	var since, last time.Time
	for _, e := range entries {
		if e.Source != store.SourceAgent || e.Attempt != attempt || e.Step == "" || e.Time.IsZero() {
			continue
		}
		if e.Step != cur {
			if cur != "" && e.Time.After(since) {
				out[cur] += e.Time.Sub(since)
			}
			cur, since = e.Step, e.Time
		}
		last = e.Time
	}
	if cur != "" && last.After(since) {
		out[cur] += last.Sub(since)
	}
	return out
}

// PowerAction records a power action through a server's BMC: the seam for
// the power round (issue 25). action: "on", "off", "cycle", "status",
// "bootdev"; result: "ok" or a failure class ("no_answer", "credentials",
// "timeout", "unsupported", "failed").
func (m *Metrics) PowerAction(action, result string, d time.Duration) {
	m.powerActions.WithLabelValues(action, result).Inc()
	m.powerDuration.WithLabelValues(action).Observe(d.Seconds())
}

// WatchFleet exports the fleet's figures read from st (byoi_fleet_*), at
// most one read per FleetEvery.
func (m *Metrics) WatchFleet(st store.Store) {
	m.reg.MustRegister(&fleetCollector{m: m, st: st})
}

// WatchCache exports the image cache's counters and usage.
func (m *Metrics) WatchCache(c *imagecache.Cache) {
	m.reg.MustRegister(&cacheCollector{c: c})
}

// fleetCollector reads the store's FleetCounts.
type fleetCollector struct {
	m  *Metrics
	st store.Store

	mu   sync.Mutex
	at   time.Time
	last store.FleetCounts
	ok   bool
}

var (
	fleetServers = prometheus.NewDesc("byoi_fleet_servers", "Servers in the database (fleet-wide: the same on every instance; aggregate with max).", nil, nil)
	fleetRunning = prometheus.NewDesc("byoi_fleet_deployments_running", "Running deployments, by phase: waiting (no agent picked it up yet) or active (fleet-wide; aggregate with max).", []string{"phase"}, nil)
	fleetHeard   = prometheus.NewDesc("byoi_fleet_agents_heartbeating", "Running deployments whose agent was heard within the heartbeat window (fleet-wide; aggregate with max).", nil, nil)
	fleetSilent  = prometheus.NewDesc("byoi_fleet_agents_silent", "Running deployments with an agent that was not heard within the heartbeat window (fleet-wide; aggregate with max).", nil, nil)
	fleetTasks   = prometheus.NewDesc("byoi_fleet_tasks", "Deployment tasks by status, since the database began (fleet-wide, monotonic for the final statuses; aggregate with max).", []string{"status"}, nil)
	fleetReadOK  = prometheus.NewDesc("byoi_fleet_read_ok", "1 when the last reading of the fleet's figures from the database succeeded.", nil, nil)
)

func (f *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fleetServers, fleetRunning, fleetHeard, fleetSilent, fleetTasks, fleetReadOK} {
		ch <- d
	}
}

var taskStatuses = []string{store.TaskInit, store.TaskDoing, store.TaskDone, store.TaskCustomerError, store.TaskOVHError, store.TaskCancelled}

func (f *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	f.mu.Lock()
	now := f.m.opts.Now()
	if f.at.IsZero() || now.Sub(f.at) >= f.m.opts.FleetEvery {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := f.st.FleetCounts(ctx, now.Add(-f.m.opts.HeartbeatWindow))
		cancel()
		f.at = now
		if err != nil {
			f.ok = false
			f.m.opts.Logger.Warn("metrics: reading the fleet's figures failed", "err", err)
		} else {
			f.last, f.ok = c, true
		}
	}
	c, ok := f.last, f.ok
	f.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(fleetReadOK, prometheus.GaugeValue, b2f(ok))
	if c.Tasks == nil {
		return // never read
	}
	ch <- prometheus.MustNewConstMetric(fleetServers, prometheus.GaugeValue, float64(c.Servers))
	ch <- prometheus.MustNewConstMetric(fleetRunning, prometheus.GaugeValue, float64(c.Waiting), "waiting")
	ch <- prometheus.MustNewConstMetric(fleetRunning, prometheus.GaugeValue, float64(c.Active), "active")
	ch <- prometheus.MustNewConstMetric(fleetHeard, prometheus.GaugeValue, float64(c.Heartbeating))
	ch <- prometheus.MustNewConstMetric(fleetSilent, prometheus.GaugeValue, float64(c.Active-c.Heartbeating))
	for _, s := range taskStatuses {
		ch <- prometheus.MustNewConstMetric(fleetTasks, prometheus.GaugeValue, float64(c.Tasks[s]), s)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// cacheCollector reads imagecache's Stats.
type cacheCollector struct{ c *imagecache.Cache }

var (
	cacheRequests = prometheus.NewDesc("byoi_image_cache_requests_total", "Agents' image requests, by outcome: hit (a verified entry), join (followed a download in progress), miss (started or resumed a download), busy (503: no byte yet), not_cached (sent to the origin).", []string{"outcome"}, nil)
	cacheServed   = prometheus.NewDesc("byoi_image_cache_served_bytes_total", "Image bytes the cache sent to agents.", nil, nil)
	cacheOrigin   = prometheus.NewDesc("byoi_image_cache_origin_bytes_total", "Image bytes the cache received from origins.", nil, nil)
	cacheOReqs    = prometheus.NewDesc("byoi_image_cache_origin_requests_total", "Requests the cache sent to origins (resumes included).", nil, nil)
	cacheFills    = prometheus.NewDesc("byoi_image_cache_fills_total", "Cache downloads ended, by result: ok, checksum (mismatch: dropped), full (budget or disk), error (the origin failed, an address refused, no size).", []string{"result"}, nil)
	cacheEvicted  = prometheus.NewDesc("byoi_image_cache_evictions_total", "Entries evicted (least recently used) to make room.", nil, nil)
	cacheEntries  = prometheus.NewDesc("byoi_image_cache_entries", "Entries in the cache (complete, partial or being downloaded).", nil, nil)
	cacheBytes    = prometheus.NewDesc("byoi_image_cache_bytes", "Bytes the entries take from the budget (a download in progress counts its whole size).", nil, nil)
	cacheBudget   = prometheus.NewDesc("byoi_image_cache_budget_bytes", "The cache's budget (--image-cache-size).", nil, nil)
)

func (cc *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cacheRequests, cacheServed, cacheOrigin, cacheOReqs, cacheFills, cacheEvicted, cacheEntries, cacheBytes, cacheBudget} {
		ch <- d
	}
}

func (cc *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := cc.c.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(cacheRequests, s.Hits.Load(), "hit")
	counter(cacheRequests, s.Joins.Load(), "join")
	counter(cacheRequests, s.Misses.Load(), "miss")
	counter(cacheRequests, s.Busy.Load(), "busy")
	counter(cacheRequests, s.NotCached.Load(), "not_cached")
	counter(cacheServed, s.BytesServed.Load())
	counter(cacheOrigin, s.OriginBytes.Load())
	counter(cacheOReqs, s.OriginReqs.Load())
	counter(cacheFills, s.FillsOK.Load(), "ok")
	counter(cacheFills, s.Mismatches.Load(), "checksum")
	counter(cacheFills, s.Full.Load(), "full")
	counter(cacheFills, s.FillsFailed.Load(), "error")
	counter(cacheEvicted, s.Evictions.Load())
	n, b := cc.c.Usage()
	ch <- prometheus.MustNewConstMetric(cacheEntries, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(cacheBytes, prometheus.GaugeValue, float64(b))
	ch <- prometheus.MustNewConstMetric(cacheBudget, prometheus.GaugeValue, float64(cc.c.MaxBytes()))
}
