package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/job"
)

// Reporter receives the events of a deployment once the Sink numbered and
// throttled them: the terminal renderer, the --json printer, the control
// plane reporter. Event is called from the pipeline's goroutines, one call
// at a time, and must not block: a reporter that talks to a network queues.
type Reporter interface {
	Event(job.Event)
}

// FinalReporter is a Reporter whose final event must be acknowledged before
// the machine reboots: Final blocks until the event is stored (the control
// plane answered) or ctx ends. Run reboots only after Final returned nil.
type FinalReporter interface {
	Reporter
	Final(ctx context.Context, e job.Event) error
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(job.Event)

// Event calls f(e).
func (f ReporterFunc) Event(e job.Event) { f(e) }

// DefaultProgressInterval is how often a step's progress passes the Sink.
const DefaultProgressInterval = 250 * time.Millisecond

// Sink numbers the events of one deployment, stamps their time and
// throttles progress: at most one progress event per interval per step
// (and the one that completes a step), while step changes, warnings and
// the final event always pass. It is the one throttle in byoi: the
// terminal, --json and the control plane all see what it lets through.
type Sink struct {
	out      Reporter
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	seq  int64
	last map[job.Step]time.Time
	// step: the last event's step, for Run's watchdog.
	step job.Step
	// ended: the final event was stamped; later events are dropped, so
	// none can take a higher seq and reach the reporter before it (a
	// goroutine of an abandoned pipeline, see watched).
	ended bool
	// seen is when the last event came in (sent or throttled) or Touch
	// was called, in UnixNano: lock-free, Touch runs on every read of the
	// download.
	seen atomic.Int64
}

// NewSink returns a sink feeding out (nil: events are dropped) with the
// given progress interval (<= 0: DefaultProgressInterval).
func NewSink(out Reporter, interval time.Duration) *Sink {
	if interval <= 0 {
		interval = DefaultProgressInterval
	}
	s := &Sink{out: out, interval: interval, now: time.Now, last: map[job.Step]time.Time{}}
	s.Touch()
	return s
}

// Touch records activity that is not an event (image bytes arriving).
func (s *Sink) Touch() { s.seen.Store(time.Now().UnixNano()) }

// Activity returns when the last event came in, sent or throttled, or
// Touch was called (at first: when the sink was made), and the last
// event's step ("" before any).
func (s *Sink) Activity() (time.Time, job.Step) {
	s.mu.Lock()
	step := s.step
	s.mu.Unlock()
	return time.Unix(0, s.seen.Load()), step
}

// Emit passes e on unless it is a progress event that comes too soon after
// the previous one of its step. It returns the event as sent (with Seq and
// Time) and whether it was sent.
func (s *Sink) Emit(e job.Event) (job.Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return e, false
	}
	now := s.now()
	s.Touch()
	if e.Step != "" {
		s.step = e.Step
	}
	if e.Kind == "" {
		e.Kind = job.KindInfo
	}
	if e.Status == "" {
		e.Status = job.StatusDoing
	}
	if e.Kind == job.KindProgress {
		complete := e.BytesTotal > 0 && e.BytesDone >= e.BytesTotal
		if t, ok := s.last[e.Step]; ok && now.Sub(t) < s.interval && !complete {
			return e, false
		}
	}
	if e.Kind == job.KindProgress {
		s.last[e.Step] = now
	}
	s.seq++
	e.Seq, e.Time = s.seq, now.UTC()
	s.ended = e.Final()
	if s.out != nil {
		s.out.Event(e)
	}
	return e, true
}

// Seq is the number of events sent so far.
func (s *Sink) Seq() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// stamp numbers a final event like Emit does, without sending it: Run
// hands it to the reporter's Final. It is the sink's last event: Emit
// drops what comes after it.
func (s *Sink) stamp(e job.Event) job.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	s.seq++
	e.Seq, e.Time = s.seq, s.now().UTC()
	return e
}

// logAttrsErr is a log attribute for an error that is safe to log: the
// lower packages never put secrets in errors, and this (with causeAttr) is
// the only form in which errors reach the log.
func logAttrsErr(err error) slog.Attr { return slog.String("error", fmt.Sprint(err)) }

// causeAttr is the library's own text of a step's error, for the operator:
// the customer's text (logAttrsErr) may leave its details out. Empty when
// both are the same.
func causeAttr(err error) slog.Attr {
	var se *stepError
	if errors.As(err, &se) {
		if c := se.err.Error(); c != err.Error() {
			return slog.String("cause", c)
		}
	}
	return slog.Attr{}
}
