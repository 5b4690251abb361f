package load

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store/open"
	"github.com/byoi/byoi/job"
)

func TestParseFlagsDefaultsAndPids(t *testing.T) {
	c, err := parseFlags([]string{"--agents", "100", "--pid", "api1=12,34,postgres=56", "--url", "http://127.0.0.1:1,http://127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	if c.customers != 5 {
		t.Errorf("customers = %d, want one per 20 servers (5)", c.customers)
	}
	want := []namedPid{{"api1", 12}, {"byoi-api", 34}, {"postgres", 56}}
	if len(c.pids) != len(want) {
		t.Fatalf("pids = %v, want %v", c.pids, want)
	}
	for i := range want {
		if c.pids[i] != want[i] {
			t.Errorf("pid %d = %v, want %v", i, c.pids[i], want[i])
		}
	}
	if len(c.urls) != 2 || c.urls[1] != "http://127.0.0.1:2" {
		t.Errorf("urls = %v", c.urls)
	}
	c, err = parseFlags([]string{"--agents", "3", "--customers", "10"})
	if err != nil || c.customers != 3 {
		t.Errorf("more customers than agents: %d, %v; want as many customers as agents", c.customers, err)
	}
}

func TestParseFlagsRefusesUnboundedRuns(t *testing.T) {
	for _, args := range [][]string{
		{"--agents", "0"}, {"--agents", "20001"}, {"--customers", "2001", "--agents", "20000"},
		{"--duration", "31m"}, {"--duration", "0s"}, {"--interval", "1ms"},
		{"--progress-events", "0"}, {"--progress-events", "101"}, {"--progress-jitter", "1"},
		{"--pid", "api=x"}, {"--no-such-flag"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
}

// The simulated deployments send what a real agent sends: every batch of
// one deployment's events passes the control plane's own validation.
func TestLifecycleIsAValidDeployment(t *testing.T) {
	for _, n := range []int{1, 2, 20, 100} {
		evs := lifecycle(n)
		if len(evs) != 2*n+6 {
			t.Errorf("lifecycle(%d): %d events, want %d", n, len(evs), 2*n+6)
		}
		b := agentapi.EventBatch{Attempt: 1}
		for i, e := range evs {
			e.Seq, e.Time = int64(i+1), time.Unix(1700000000, 0)
			b.Events = append(b.Events, e)
		}
		if err := b.Validate(); err != nil {
			t.Errorf("lifecycle(%d): %v", n, err)
		}
		last := evs[len(evs)-1]
		if !last.Final() || last.Status != job.StatusDone {
			t.Errorf("lifecycle(%d) ends with %+v, want the final done event", n, last)
		}
		if d := evs[n]; d.Step != job.StepDownload || d.BytesDone > d.BytesTotal || d.BytesTotal-d.BytesDone >= d.BytesTotal/int64(n) {
			t.Errorf("lifecycle(%d): the download's last progress is %d of %d", n, d.BytesDone, d.BytesTotal)
		}
	}
}

func TestStatsPercentilesAndErrors(t *testing.T) {
	var s stats
	start := time.Now()
	for i := 1; i <= 100; i++ {
		s.add("agent events", start, time.Duration(i)*time.Millisecond, nil)
	}
	s.add("agent job", start, time.Millisecond, errTransport)
	if got := s.windowP99(); got != 100*time.Millisecond {
		t.Errorf("windowP99 = %s, want 100ms (the 99th of 100)", got)
	}
	if got := s.windowP99(); got != 0 {
		t.Errorf("windowP99 of an empty window = %s", got)
	}
	if s.errorsTotal() != 1 {
		t.Errorf("errorsTotal = %d", s.errorsTotal())
	}
	var out bytes.Buffer
	(&load{}).report(&out, s.ep)
	for _, want := range []string{"agent events", "100", "last error: no answer"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestProcReadings(t *testing.T) {
	if f := statFields(os.Getpid()); len(f) < 15 {
		t.Fatalf("statFields(self) = %q", f)
	}
	if rssBytes(os.Getpid()) <= 0 {
		t.Error("rssBytes(self) <= 0")
	}
	if machineCPU() <= 0 || selfCPU() < 0 || treeCPU(os.Getpid()) < 0 {
		t.Error("CPU readings")
	}
	p := newProc(namedPid{"gone", 1 << 30})
	if p.cpuNow() != 0 || rssBytes(1<<30) != 0 || procStatus(1<<30, "VmHWM") != "" {
		t.Error("a process that does not exist reads as something")
	}
}

// A short run against a real control plane (in process, SQLite, on
// 127.0.0.1): agents go through whole deployments, customers poll, and the
// final check finds every acknowledged event in the database; a changed
// record of what was acknowledged is found too.
func TestRunAgainstAControlPlane(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "byoi.db")
	st, keys, err := open.Store(ctx, db, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := controlplane.New(controlplane.Config{Store: st, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()

	var out bytes.Buffer
	args := []string{"--db", db, "--url", ts.URL, "--agents", "4", "--customers", "2", "--duration", "3s",
		"--interval", "20ms", "--customer-pause", "50ms", "--progress-events", "2", "--warmup", "1s", "--report-every", "1s",
		"--pid", "self=" + strconv.Itoa(os.Getpid())}
	if err := Run(ctx, args, &out); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	m := regexp.MustCompile(`verification against the database: (\d+) acknowledged events of (\d+) deployments checked in \S+: 0 missing, 0 different`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no clean verification line:\n%s", out.String())
	}
	if n, _ := strconv.Atoi(m[1]); n < 10 {
		t.Errorf("only %d events acknowledged in 3 s at 20 ms per event:\n%s", n, out.String())
	}
	// The first progress line is due at 1 s; on a starved machine it comes at 2 s.
	if !regexp.MustCompile(`t= +\d+s events/s`).MatchString(out.String()) {
		t.Errorf("report lacks a progress line:\n%s", out.String())
	}
	for _, want := range []string{"agent events", "customer GET bringYourOwnImage", "memory self (pid"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}

	// The check itself: a record that disagrees with the database fails.
	c, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	l, err := provision(ctx, c, st, keys)
	if err != nil {
		t.Fatal(err)
	}
	c.duration = time.Second
	l.c = c
	out.Reset()
	if err := l.loadAndReport(ctx, &out); err != nil {
		t.Fatal(err)
	}
	if err := l.verify(ctx, &out, st); err != nil {
		t.Fatalf("verify before tampering: %v", err)
	}
	tampered := false
	for _, a := range l.agents {
		for i := range a.runs {
			if len(a.runs[i].times) > 0 && !tampered {
				a.runs[i].times[0]++
				tampered = true
			}
		}
	}
	if !tampered {
		t.Fatal("no acknowledged event to tamper with")
	}
	if err := l.verify(ctx, &out, st); err == nil || !strings.Contains(err.Error(), "lost or changed") {
		t.Errorf("verify after tampering: %v, want lost or changed", err)
	}
}
