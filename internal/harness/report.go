package harness

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Log prints a check's progress (stderr, with the seconds since its start)
// and its report lines (stdout), from any goroutine.
type Log struct {
	Prefix string // "pxe-check", "boot-check"
	Out    io.Writer
	Err    io.Writer
	mu     sync.Mutex
	start  time.Time
}

// NewLog is a Log on stdout and stderr.
func NewLog(prefix string) *Log {
	return &Log{Prefix: prefix, Out: os.Stdout, Err: os.Stderr, start: time.Now()}
}

// Info prints a progress line on stderr.
func (l *Log) Info(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.Err, "[%s %5.0fs] %s\n", l.Prefix, time.Since(l.start).Seconds(), fmt.Sprintf(format, a...))
}

// Say prints a report line on stdout.
func (l *Log) Say(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.Out, format+"\n", a...)
}

// Since is the time since the Log was made.
func (l *Log) Since() time.Duration { return time.Since(l.start) }

// Case is the report of one machine or case: PASS, FAIL, SKIP, TIME and
// evidence lines, kept in order (printed together at the end, so that
// cases run in parallel do not interleave), each also shown at once as
// progress.
type Case struct {
	Name    string
	log     *Log
	mu      sync.Mutex
	lines   []string
	failed  []string // names of the failed checks
	details []string // what helps to see why, printed last
}

// NewCase is a report for the case name.
func (l *Log) NewCase(name string) *Case { return &Case{Name: name, log: l} }

func (c *Case) add(l string) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	c.mu.Unlock()
	c.log.Info("%s", l)
}

// Pass records a check that passed.
func (c *Case) Pass(check, format string, a ...any) {
	c.add(fmt.Sprintf("PASS [%s] %s: %s", c.Name, check, fmt.Sprintf(format, a...)))
}

// Fail records a check that failed.
func (c *Case) Fail(check, format string, a ...any) {
	c.mu.Lock()
	c.failed = append(c.failed, check)
	c.mu.Unlock()
	c.add(fmt.Sprintf("FAIL [%s] %s: %s", c.Name, check, fmt.Sprintf(format, a...)))
}

// Check records a check that passed when ok, failed otherwise.
func (c *Case) Check(check string, ok bool, format string, a ...any) bool {
	if ok {
		c.Pass(check, format, a...)
	} else {
		c.Fail(check, format, a...)
	}
	return ok
}

// Skip records a check that could not be decided.
func (c *Case) Skip(check, format string, a ...any) {
	c.add(fmt.Sprintf("SKIP [%s] %s: %s", c.Name, check, fmt.Sprintf(format, a...)))
}

// Time records a duration.
func (c *Case) Time(what string, d time.Duration) {
	c.add(fmt.Sprintf("TIME [%s] %s: %.0f s", c.Name, what, d.Seconds()))
}

// Evidence records an indented line under the last check.
func (c *Case) Evidence(format string, a ...any) { c.add("    " + fmt.Sprintf(format, a...)) }

// Detail records what helps to see why a check failed (printed last).
func (c *Case) Detail(s string) {
	c.mu.Lock()
	c.details = append(c.details, s)
	c.mu.Unlock()
}

// Failed is the names of the checks that failed.
func (c *Case) Failed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.failed...)
}

// Print writes the case's lines to the Log's report.
func (c *Case) Print() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		c.log.Say("%s", l)
	}
}

// PrintDetails writes what helps to see why checks failed, if any.
func (c *Case) PrintDetails() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.details) == 0 {
		return
	}
	c.log.Say("== why [%s] failed", c.Name)
	for _, d := range c.details {
		c.log.Say("%s", strings.TrimRight(d, "\n"))
	}
}
