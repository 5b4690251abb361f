package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/byoi/byoi/job"
	"golang.org/x/term"
)

// renderer shows status events: JSON lines on stdout (--json), a progress
// bar on a terminal, or plain lines every few seconds otherwise.
type renderer struct {
	mu       sync.Mutex
	out, err io.Writer
	json     bool
	tty      bool
	step     job.Step
	last     time.Time
	start    time.Time
	lastDone int64
	barShown bool
}

func newRenderer(stdout, stderr io.Writer, jsonOut bool) *renderer {
	r := &renderer{out: stdout, err: stderr, json: jsonOut, start: time.Now()}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.tty = true
	}
	return r
}

// Event shows one event (it implements agent.Reporter). The agent's Sink
// already throttled progress; a plain (non-terminal) stderr gets a line per
// step every few seconds at most.
func (r *renderer) Event(e job.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.json {
		b, _ := json.Marshal(e)
		r.out.Write(append(b, '\n'))
		return
	}
	now := time.Now()
	if e.Step != r.step {
		r.endBar()
		r.step = e.Step
		r.start = now
		r.last, r.lastDone = time.Time{}, 0
		if e.Status == job.StatusDoing && e.Kind != job.KindWarning {
			fmt.Fprintf(r.err, "%s: %s\n", e.Step, e.Message)
		}
	}
	switch {
	case e.Status == job.StatusDone:
		r.endBar()
		fmt.Fprintln(r.err, "deployment done")
		return
	case e.Status == job.StatusError:
		r.endBar()
		fmt.Fprintln(r.err, "deployment failed: "+e.Message)
		return
	case e.Kind == job.KindWarning:
		r.endBar()
		fmt.Fprintln(r.err, "warning: "+e.Message)
		return
	case e.Kind != job.KindProgress:
		return
	}
	final := e.BytesTotal > 0 && e.BytesDone >= e.BytesTotal && e.BytesDone != r.lastDone
	if !r.tty && now.Sub(r.last) < plainInterval && !final {
		return
	}
	r.last, r.lastDone = now, e.BytesDone
	line := progressLine(e.BytesDone, e.BytesTotal, now.Sub(r.start))
	if r.tty {
		fmt.Fprintf(r.err, "\r\033[K%s", line)
		r.barShown = true
	} else {
		fmt.Fprintf(r.err, "%s: %s\n", e.Step, line)
	}
}

// plainInterval spaces the progress lines of a non-terminal stderr (a log
// file, a pipe).
const plainInterval = 5 * time.Second

func (r *renderer) endBar() {
	if r.barShown {
		fmt.Fprintln(r.err)
		r.barShown = false
	}
}

func (r *renderer) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endBar()
}

// progressLine renders "[#####-----]  42% 1.2 GiB / 2.9 GiB  310 MiB/s  ETA 6s".
func progressLine(done, total int64, elapsed time.Duration) string {
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	if total <= 0 {
		return fmt.Sprintf("%s  %s/s", humanBytes(done), humanBytes(int64(rate)))
	}
	frac := min(float64(done)/float64(total), 1)
	const width = 30
	n := int(frac * width)
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("[%s%s] %3.0f%% %s / %s  %s/s  ETA %s",
		strings.Repeat("#", n), strings.Repeat("-", width-n), frac*100,
		humanBytes(done), humanBytes(total), humanBytes(int64(rate)), eta)
}

func humanBytes(n int64) string { return job.HumanBytes(n) }
