package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// Instrument counts and times every request next serves, by the route
// pattern the router matched (r.Pattern after next ran: no server name, no
// query), the method and the status. The writer it hands down keeps
// ReadFrom (sendfile), Flush and Unwrap (http.ResponseController).
func (m *Metrics) Instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			code := "aborted" // a panic (an image answer cut on purpose)
			if sw.status != 0 {
				code = strconv.Itoa(sw.status)
			} else if rec := recover(); rec != nil {
				m.requests.WithLabelValues(route, method(r.Method), code).Inc()
				m.latency.WithLabelValues(route, method(r.Method)).Observe(time.Since(start).Seconds())
				panic(rec)
			} else {
				code = "200" // nothing written: net/http answers 200
			}
			m.requests.WithLabelValues(route, method(r.Method), code).Inc()
			m.latency.WithLabelValues(route, method(r.Method)).Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(sw, r)
	})
}

func method(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions:
		return m
	}
	return "other"
}

// statusWriter records the status of an answer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

// ReadFrom keeps the server's sendfile path for image answers.
func (s *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{s.ResponseWriter}, r)
}

func (s *statusWriter) Flush() {
	_ = http.NewResponseController(s.ResponseWriter).Flush()
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Store returns st with its writes timed (byoi_store_write_duration_seconds
// by operation): the latency the API waits for, group commit and flush
// included. Reads and methods added to the interface later pass through
// untimed.
func (m *Metrics) Store(st store.Store) store.Store { return &timedStore{Store: st, m: m} }

type timedStore struct {
	store.Store
	m *Metrics
}

func (t *timedStore) done(op string, start time.Time, err error) {
	t.m.storeWrites.WithLabelValues(op).Observe(time.Since(start).Seconds())
	var tr *store.TaskRunningError
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrGone) && !errors.Is(err, store.ErrStaleAttempt) &&
		!errors.Is(err, store.ErrExists) && !errors.As(err, &tr) && !errors.Is(err, context.Canceled) {
		t.m.storeErrors.WithLabelValues(op).Inc()
	}
}

func (t *timedStore) AppendEvents(ctx context.Context, a store.Append) (ack store.Ack, err error) {
	defer func(s time.Time) { t.done("append_events", s, err) }(time.Now())
	return t.Store.AppendEvents(ctx, a)
}

func (t *timedStore) OpenAttempt(ctx context.Context, serverID, deploymentID int64, now time.Time) (n int, err error) {
	defer func(s time.Time) { t.done("open_attempt", s, err) }(time.Now())
	return t.Store.OpenAttempt(ctx, serverID, deploymentID, now)
}

func (t *timedStore) CreateDeployment(ctx context.Context, d store.NewDeployment) (dep store.Deployment, tk store.Task, err error) {
	defer func(s time.Time) { t.done("create_deployment", s, err) }(time.Now())
	return t.Store.CreateDeployment(ctx, d)
}

func (t *timedStore) ClearDeployments(ctx context.Context, serverID int64, now time.Time) (id int64, err error) {
	defer func(s time.Time) { t.done("clear_deployments", s, err) }(time.Now())
	return t.Store.ClearDeployments(ctx, serverID, now)
}

func (t *timedStore) ExpireSilent(ctx context.Context, now, silentCutoff, pickupCutoff time.Time, silentFor, pickupFor time.Duration) (e []store.Expired, err error) {
	defer func(s time.Time) { t.done("expire_silent", s, err) }(time.Now())
	return t.Store.ExpireSilent(ctx, now, silentCutoff, pickupCutoff, silentFor, pickupFor)
}

func (t *timedStore) PutInventory(ctx context.Context, serverID int64, inventory []byte, now time.Time) (err error) {
	defer func(s time.Time) { t.done("put_inventory", s, err) }(time.Now())
	return t.Store.PutInventory(ctx, serverID, inventory, now)
}

func (t *timedStore) SetBoot(ctx context.Context, serverID, bootID int64) (err error) {
	defer func(s time.Time) { t.done("set_boot", s, err) }(time.Now())
	return t.Store.SetBoot(ctx, serverID, bootID)
}

func (t *timedStore) SetBootInfo(ctx context.Context, b store.BootInfo) (err error) {
	defer func(s time.Time) { t.done("set_boot_info", s, err) }(time.Now())
	return t.Store.SetBootInfo(ctx, b)
}

func (t *timedStore) SetAgentToken(ctx context.Context, serverID int64, h []byte) (err error) {
	defer func(s time.Time) { t.done("set_agent_token", s, err) }(time.Now())
	return t.Store.SetAgentToken(ctx, serverID, h)
}

func (t *timedStore) CreateSession(ctx context.Context, s store.Session) (err error) {
	defer func(st time.Time) { t.done("create_session", st, err) }(time.Now())
	return t.Store.CreateSession(ctx, s)
}
