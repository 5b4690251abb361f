package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/byoi/byoi/job"
)

// DefaultNoProgressLimit is how long a deployment may go without any event
// (progress, a step, a warning) or image byte arriving before the watchdog
// stops it. Every step that moves bytes reports progress several times a
// second (a slow download counts as it reads, before a whole pipeline
// buffer is full); the download's own limits (a 60 s stall, 8 retries,
// each retry a warning event) end a dead transfer before this; the final
// flush of a disk's write cache is the longest quiet step and takes
// seconds to a few minutes.
const DefaultNoProgressLimit = 10 * time.Minute

// defaultNoProgressGrace is how long the watchdog waits for the cancelled
// pipeline to return (its failure path wipes what it wrote) before it
// reports the failure without it: a goroutine stuck in the kernel cannot
// be stopped, and the customer must not wait for it.
const defaultNoProgressGrace = time.Minute

// maxStackDump bounds the goroutine dump of a stalled deployment.
const maxStackDump = 1 << 20

func (env *Env) noProgressLimit() time.Duration {
	if env.NoProgressLimit == 0 {
		return DefaultNoProgressLimit
	}
	return env.NoProgressLimit
}

func (env *Env) noProgressGrace() time.Duration {
	if env.noProgressGraceForTest > 0 {
		return env.noProgressGraceForTest
	}
	return defaultNoProgressGrace
}

// watched runs fn under the watchdog: when sink has seen no event for
// env's stall limit, fn's context is cancelled, the goroutines' stacks go
// to env.Diagnostics, and the error is NoProgress at the last step seen,
// whatever fn returns afterwards (or without it, after the grace period).
// A success that comes back is kept.
func watched[T any](ctx context.Context, env *Env, sink *Sink, fn func(context.Context) (T, error)) (T, error) {
	limit := env.noProgressLimit()
	if limit < 0 {
		return fn(ctx)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1) // the goroutine never blocks, even when abandoned
	go func() {
		v, err := fn(wctx)
		done <- result{v, err}
	}()
	tick := time.NewTicker(max(min(limit/8, 10*time.Second), time.Millisecond))
	defer tick.Stop()
	var stalled error
	var abandon <-chan time.Time
	log := env.logger()
	for {
		select {
		case r := <-done:
			if stalled != nil && r.err != nil {
				return r.v, stalled
			}
			return r.v, r.err
		case <-abandon:
			log.Error("the stalled deployment did not stop after its cancellation: reporting it anyway", "grace", env.noProgressGrace())
			var zero T
			return zero, stalled
		case <-tick.C:
			if stalled != nil {
				continue
			}
			at, step := sink.Activity()
			idle := time.Since(at)
			if idle < limit {
				continue
			}
			if step == "" {
				step = job.StepPreflight
			}
			stalled = &stepError{step, job.Errorf(job.NoProgress, limit, step)}
			log.Error("watchdog: no progress, stopping the deployment", "step", step, "idle", idle.Round(time.Second))
			if env.Diagnostics != nil {
				writeStacks(env.Diagnostics, step, idle)
			}
			cancel()
			abandon = time.After(env.noProgressGrace())
		}
	}
}

// writeStacks writes the goroutines that run byoi code, compactly: the
// header line and the function of each frame with its file and line,
// argument words left out. The dump starts and ends with a marker line.
func writeStacks(w io.Writer, step job.Step, idle time.Duration) {
	buf := make([]byte, maxStackDump)
	n := runtime.Stack(buf, true)
	fmt.Fprintf(w, "byoi watchdog: no progress for %s in step %s; goroutines running byoi code:\n", idle.Round(time.Second), step)
	io.WriteString(w, compactStacks(buf[:n]))
	fmt.Fprintln(w, "byoi watchdog: end of the goroutine dump")
}

// compactStacks keeps the goroutines of a runtime.Stack dump that have a
// frame in byoi's module (not the watchdog's own) and writes each frame on
// one line: "  function  file:line".
func compactStacks(dump []byte) string {
	var out strings.Builder
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("github.com/byoi/byoi/")) || bytes.Contains(g, []byte("agent.writeStacks")) {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(g))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var fn string
		for sc.Scan() {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "goroutine "):
				out.WriteString(l + "\n")
			case strings.HasPrefix(l, "\t"):
				file := strings.TrimSpace(l)
				if i := strings.LastIndex(file, " +0x"); i >= 0 {
					file = file[:i]
				}
				fmt.Fprintf(&out, "  %s  %s\n", fn, file)
				fn = ""
			default:
				fn = l
				if i := strings.LastIndexByte(fn, '('); i > 0 && strings.HasSuffix(fn, ")") {
					fn = fn[:i]
				}
			}
		}
	}
	return out.String()
}
