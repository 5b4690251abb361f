package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/job"
)

// Why a reporter goroutine: the disk writer must never wait on the network
// (a control plane that is slow, restarting or unreachable must not slow
// the deployment), and heartbeats must go out while one step runs for
// minutes (ironic's agents timed out under heavy I/O because they
// heartbeat from the writer). Event only appends to a bounded queue; its
// own goroutine posts batches, coalescing progress when it falls behind.

// HTTPReporter sends a deployment's events to the control plane. It
// implements FinalReporter: Final returns once the control plane stored the
// final event.
type HTTPReporter struct {
	c          *Client
	deployment int64
	attempt    int
	log        *slog.Logger
	// Interval is how often queued events are posted (default 2 s); a
	// step change is posted at once.
	interval time.Duration
	// heartbeat is how often an empty batch goes out when nothing else
	// did (default 30 s).
	heartbeat time.Duration
	onGone    func(error)

	mu      sync.Mutex
	queue   []job.Event // not yet acknowledged, in seq order
	acked   int64       // highest seq the control plane stored
	kick    chan struct{}
	gone    error // ErrGone / ErrStale once seen: nothing more is sent
	stopped chan struct{}
	stop    context.CancelFunc
}

// ReporterOptions tune NewHTTPReporter.
type ReporterOptions struct {
	Interval  time.Duration
	Heartbeat time.Duration
	Logger    *slog.Logger
	// OnGone is called (once, from the reporter's goroutine) when the
	// control plane says the deployment is gone or superseded: the caller
	// cancels the deployment.
	OnGone func(error)
}

// maxQueue bounds the queue: beyond it, progress events are coalesced.
const maxQueue = agentapi.MaxBatchEvents

// NewHTTPReporter starts reporting attempt of deployment through c. Close
// stops it.
func NewHTTPReporter(c *Client, deployment int64, attempt int, opts ReporterOptions) *HTTPReporter {
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &HTTPReporter{
		c: c, deployment: deployment, attempt: attempt, log: opts.Logger,
		interval: opts.Interval, heartbeat: opts.Heartbeat, onGone: opts.OnGone,
		kick: make(chan struct{}, 1), stopped: make(chan struct{}), stop: cancel,
	}
	go r.run(ctx)
	return r
}

// Event queues e; it never blocks on the network.
func (r *HTTPReporter) Event(e job.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone != nil {
		return
	}
	stepChange := len(r.queue) == 0 || r.queue[len(r.queue)-1].Step != e.Step
	if e.Kind == job.KindProgress && len(r.queue) > 0 {
		// Coalesce: a newer progress of the same step replaces the
		// queued one (its bytes are the news; seq gaps are fine).
		if last := &r.queue[len(r.queue)-1]; last.Kind == job.KindProgress && last.Step == e.Step {
			*last = e
			return
		}
	}
	r.queue = append(r.queue, e)
	if len(r.queue) > maxQueue {
		r.dropOneProgress()
	}
	if stepChange || e.Kind == job.KindWarning || e.Final() {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// dropOneProgress removes the oldest progress event when the queue is over
// its bound (the control plane has been unreachable for a long time). If
// there is none, the oldest non-final event goes: the queue stays bounded.
func (r *HTTPReporter) dropOneProgress() {
	for i, e := range r.queue {
		if e.Kind == job.KindProgress {
			r.queue = append(r.queue[:i], r.queue[i+1:]...)
			return
		}
	}
	for i, e := range r.queue {
		if !e.Final() {
			r.queue = append(r.queue[:i], r.queue[i+1:]...)
			return
		}
	}
}

// Final queues the final event and waits until the control plane stored
// it (retrying with backoff), or ctx ends.
func (r *HTTPReporter) Final(ctx context.Context, e job.Event) error {
	r.Event(e)
	for {
		r.mu.Lock()
		acked, gone := r.acked, r.gone
		r.mu.Unlock()
		if acked >= e.Seq {
			return nil
		}
		if gone != nil {
			return gone
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.stopped:
			r.mu.Lock()
			acked, gone = r.acked, r.gone
			r.mu.Unlock()
			if acked >= e.Seq {
				return nil
			}
			if gone != nil {
				return gone
			}
			return errors.New("reporter stopped before the final status was stored")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops the reporter's goroutine (queued events not yet sent are
// dropped: call Final first).
func (r *HTTPReporter) Close() {
	r.stop()
	<-r.stopped
}

// run posts batches: at once after a step change, a warning or the final
// event, else every interval while events wait, and a heartbeat when
// nothing was sent for a while. Failures back off (up to 30 s) and keep
// the queue.
func (r *HTTPReporter) run(ctx context.Context) {
	defer close(r.stopped)
	backoff := time.Duration(0)
	lastSent := time.Now()
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	for {
		wait := r.heartbeat - time.Since(lastSent)
		if backoff > 0 {
			wait = backoff
		}
		hb := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			hb.Stop()
			return
		case <-r.kick:
		case <-tick.C:
		case <-hb.C:
		}
		hb.Stop()
		r.mu.Lock()
		n := min(len(r.queue), agentapi.MaxBatchEvents)
		batch := append([]job.Event(nil), r.queue[:n]...)
		r.mu.Unlock()
		if len(batch) == 0 && time.Since(lastSent) < r.heartbeat {
			continue
		}
		// A final event must be the last of its batch (agentapi).
		for i, e := range batch {
			if e.Final() {
				batch = batch[:i+1]
				break
			}
		}
		ack, err := r.c.PostEvents(ctx, r.deployment, agentapi.EventBatch{Attempt: r.attempt, Events: batch})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrGone) || errors.Is(err, ErrStale) {
				r.mu.Lock()
				r.gone = err
				r.queue = nil
				r.mu.Unlock()
				r.log.Warn("control plane ended this deployment", "error", err.Error())
				if r.onGone != nil {
					r.onGone(err)
				}
				return
			}
			backoff = min(max(2*backoff, time.Second), 30*time.Second)
			r.log.Warn("could not report to the control plane, retrying", "error", err.Error(), "queued", len(batch), "retry_in", backoff)
			continue
		}
		backoff = 0
		lastSent = time.Now()
		r.mu.Lock()
		if ack.Seq > r.acked {
			r.acked = ack.Seq
		}
		drop := 0
		for drop < len(r.queue) && r.queue[drop].Seq <= r.acked {
			drop++
		}
		r.queue = r.queue[drop:]
		more := len(r.queue) > 0 && (len(batch) == agentapi.MaxBatchEvents || r.queue[0].Final())
		r.mu.Unlock()
		if more {
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
	}
}
