// Command byoi-load plays N agents and M customers against one or more
// byoi-api base URLs, for a bounded time, and reports events/s, latency
// per endpoint and errors; at the end it checks every event that was
// acknowledged against what the API serves back.
//
// Servers, customers and their credentials are created directly in the
// database (--db, the same code as `byoi-api server add`), which SQLite in
// WAL mode allows while byoi-api runs: no admin endpoint is exposed over
// HTTP for it.
//
//	byoi-load --db byoi.db --url http://127.0.0.1:8080 --agents 500 --customers 50 --duration 60s --pid $(pidof byoi-api)
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
	"github.com/byoi/byoi/job"
)

type config struct {
	urls           []string
	db, keyFile    string
	agents         int
	customers      int
	duration       time.Duration
	interval       time.Duration
	customerPause  time.Duration
	progressEvents int
	pid            int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "byoi-load:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("byoi-load", flag.ContinueOnError)
	var c config
	urls := fs.String("url", "http://127.0.0.1:8080", "byoi-api base URLs, comma-separated (agents and customers are spread over them)")
	fs.StringVar(&c.db, "db", "byoi.db", "the byoi-api database, to create the simulated servers and customers")
	fs.StringVar(&c.keyFile, "key-file", "", "its key file (default: the database path + .key)")
	fs.IntVar(&c.agents, "agents", 100, "simulated agents (servers), at most 20000")
	fs.IntVar(&c.customers, "customers", 10, "simulated customers, at most 2000")
	fs.DurationVar(&c.duration, "duration", 60*time.Second, "how long to run, at most 30m")
	fs.DurationVar(&c.interval, "interval", 2*time.Second, "time between two events of an agent")
	fs.DurationVar(&c.customerPause, "customer-pause", 500*time.Millisecond, "pause between two requests of a customer")
	fs.IntVar(&c.progressEvents, "progress-events", 8, "progress events per download and per write step")
	fs.IntVar(&c.pid, "pid", 0, "byoi-api's process id, to report its memory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.urls = strings.Split(*urls, ",")
	if c.agents < 1 || c.agents > 20000 || c.customers < 1 || c.customers > 2000 || c.duration <= 0 || c.duration > 30*time.Minute || c.interval < 10*time.Millisecond {
		return errors.New("--agents 1..20000, --customers 1..2000, --duration up to 30m, --interval at least 10ms")
	}
	if c.customers > c.agents {
		c.customers = c.agents
	}
	l, err := provision(ctx, c)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "provisioned %d servers for %d customers (run %s); running %s\n", c.agents, c.customers, l.run, c.duration)
	return l.loadAndReport(ctx, out)
}

type customer struct {
	name    string
	cred    controlplane.Credential
	base    string
	delta   int64 // server time - local time, seconds
	servers []*agentSim
}

type agentSim struct {
	name     string
	token    string
	base     string
	customer *customer
	// acked: every event acknowledged, by deployment, for the final check
	acked map[int64][]job.Event
	att   map[int64]int
}

type load struct {
	c         config
	run       string
	client    *http.Client
	customers []*customer
	agents    []*agentSim
	stats     stats
	events    atomic.Int64
	deploys   atomic.Int64
}

func provision(ctx context.Context, c config) (*load, error) {
	kf := c.keyFile
	if kf == "" {
		kf = c.db + ".key"
	}
	keys, err := controlplane.LoadOrCreateKey(kf)
	if err != nil {
		return nil, err
	}
	st, err := sqlitestore.Open(ctx, c.db)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	admin := &controlplane.Admin{Store: st, Keys: keys}
	l := &load{c: c, run: strconv.FormatInt(time.Now().Unix()%1000000, 36), client: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 0, MaxIdleConnsPerHost: 100000, IdleConnTimeout: time.Minute},
	}}
	for i := 0; i < c.customers; i++ {
		cu := &customer{name: fmt.Sprintf("load-%s-c%d", l.run, i), base: c.urls[i%len(c.urls)]}
		if err := admin.AddCustomer(ctx, cu.name); err != nil {
			return nil, err
		}
		if cu.cred, err = admin.AddCredential(ctx, cu.name); err != nil {
			return nil, err
		}
		l.customers = append(l.customers, cu)
	}
	for i := 0; i < c.agents; i++ {
		cu := l.customers[i%len(l.customers)]
		a := &agentSim{name: fmt.Sprintf("load-%s-s%d", l.run, i), base: c.urls[i%len(c.urls)], customer: cu, acked: map[int64][]job.Event{}, att: map[int64]int{}}
		if a.token, err = admin.AddServer(ctx, a.name, cu.name, ""); err != nil {
			return nil, err
		}
		cu.servers = append(cu.servers, a)
		l.agents = append(l.agents, a)
	}
	return l, nil
}

// stats records latencies and errors per endpoint.
type stats struct {
	mu  sync.Mutex
	lat map[string][]time.Duration
	err map[string]int
	why map[string]string
}

func (s *stats) add(ep string, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lat == nil {
		s.lat, s.err, s.why = map[string][]time.Duration{}, map[string]int{}, map[string]string{}
	}
	s.lat[ep] = append(s.lat[ep], d)
	if err != nil {
		s.err[ep]++
		s.why[ep] = err.Error()
	}
}

// do sends one request and decodes a 2xx JSON answer into out; it
// returns the status.
func (l *load) do(ctx context.Context, ep string, req *http.Request, out any, okStatus ...int) (int, error) {
	req = req.WithContext(ctx)
	start := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			l.stats.add(ep, time.Since(start), err)
		}
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err == nil && resp.StatusCode >= 300 {
		err = fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		for _, s := range okStatus {
			if resp.StatusCode == s {
				err = nil
			}
		}
	}
	if err == nil && out != nil && resp.StatusCode < 300 && len(body) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber() // byte counts past 2^53 stay exact
		err = dec.Decode(out)
	}
	l.stats.add(ep, d, err)
	return resp.StatusCode, err
}

func (a *agentSim) req(method, path string, body any) *http.Request {
	var r io.Reader = http.NoBody
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, r)
	req.Header.Set("Authorization", "Bearer "+a.token)
	return req
}

// signed builds a customer request signed as go-ovh does.
func (cu *customer) signed(method, path string, body []byte) *http.Request {
	url := cu.base + "/1.0" + path
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	ts := time.Now().Unix() + cu.delta
	req.Header.Set("X-Ovh-Application", cu.cred.ApplicationKey)
	req.Header.Set("X-Ovh-Consumer", cu.cred.ConsumerKey)
	req.Header.Set("X-Ovh-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("X-Ovh-Signature", controlplane.Sign(cu.cred.ApplicationSecret, cu.cred.ConsumerKey, method, url, body, ts))
	if body != nil {
		req.Header.Set("Content-Type", "application/json;charset=utf-8")
	}
	return req
}

var jobBody = []byte(`{"URL":"https://images.example.com/debian-12.qcow2","type":"qcow2","checkSum":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","checkSumType":"sha256","configdrive":{"enable":true,"hostname":"web1"}}`)

// lifecycle is the events of one deployment, as a real agent sends them.
func lifecycle(n int) []job.Event {
	const total = 3 << 30
	evs := []job.Event{{Status: job.StatusDoing, Step: job.StepPreflight, Kind: job.KindInfo, Code: job.MsgPreflight, Message: job.Text(job.MsgPreflight)}}
	for i := 1; i <= n; i++ {
		evs = append(evs, job.Event{Status: job.StatusDoing, Step: job.StepDownload, Kind: job.KindProgress, BytesDone: int64(total / n * i), BytesTotal: total})
	}
	evs = append(evs, job.Event{Status: job.StatusDoing, Step: job.StepVerify, Kind: job.KindInfo})
	for i := 1; i <= n; i++ {
		evs = append(evs, job.Event{Status: job.StatusDoing, Step: job.StepWrite, Kind: job.KindProgress, BytesDone: int64(total / n * i), BytesTotal: total})
	}
	for _, s := range []job.Step{job.StepRelocate, job.StepBootCheck, job.StepConfigDrive} {
		evs = append(evs, job.Event{Status: job.StatusDoing, Step: s, Kind: job.KindInfo})
	}
	return append(evs, job.Event{Status: job.StatusDone, Step: job.StepFinish, Kind: job.KindInfo, Code: job.MsgDone, Message: job.Text(job.MsgDone)})
}

func (l *load) agent(ctx context.Context, a *agentSim, start time.Duration) {
	select {
	case <-time.After(start):
	case <-ctx.Done():
		return
	}
	inv := agentapi.Inventory{BootMode: agentapi.BootModeUEFI, AgentVersion: "byoi-load", DiskGroups: []agentapi.DiskGroup{{DiskGroupID: 1, Description: "1 X Disk NVME 960 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 960}, DiskType: "NVME", NumberOfDisks: 1}}}
	l.do(ctx, "agent inventory", a.req("POST", agentapi.InventoryPath(a.name), inv), nil)
	tick := time.NewTicker(l.c.interval)
	defer tick.Stop()
	wait := func() bool {
		select {
		case <-tick.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		var as agentapi.Assignment
		st, err := l.do(ctx, "agent job", a.req("GET", agentapi.JobPath(a.name), nil), &as)
		if err != nil {
			if !wait() {
				return
			}
			continue
		}
		if st == http.StatusNoContent {
			// nothing to do: the server's customer posts a deployment
			l.do(ctx, "customer POST bringYourOwnImage", a.customer.signed("POST", "/dedicated/server/"+a.name+"/bringYourOwnImage", jobBody), nil, http.StatusConflict)
			l.deploys.Add(1)
			if !wait() {
				return
			}
			continue
		}
		var at agentapi.Attempt
		if _, err := l.do(ctx, "agent attempt", a.req("POST", agentapi.AttemptsPath(a.name, as.DeploymentID), nil), &at); err != nil {
			if !wait() {
				return
			}
			continue
		}
		a.att[as.DeploymentID] = at.Attempt
		evs := lifecycle(l.c.progressEvents)
		for i := 0; i < len(evs) && ctx.Err() == nil; {
			if !wait() {
				return
			}
			e := evs[i]
			e.Seq, e.Time = int64(i+1), time.Now()
			var ack agentapi.Ack
			st, err := l.do(ctx, "agent events", a.req("POST", agentapi.EventsPath(a.name, as.DeploymentID), agentapi.EventBatch{Attempt: at.Attempt, Events: []job.Event{e}}), &ack)
			if err != nil {
				if st == http.StatusGone || st == http.StatusConflict {
					break
				}
				continue // retry the same event
			}
			if ack.Seq == e.Seq {
				a.acked[as.DeploymentID] = append(a.acked[as.DeploymentID], e)
				l.events.Add(1)
				i++
			}
		}
	}
}

func (l *load) customerLoop(ctx context.Context, cu *customer) {
	for i := 0; ctx.Err() == nil; i++ {
		a := cu.servers[i%len(cu.servers)]
		if i%2 == 0 {
			l.do(ctx, "customer GET bringYourOwnImage", cu.signed("GET", "/dedicated/server/"+a.name+"/bringYourOwnImage", nil), nil, http.StatusNotFound)
		} else {
			l.do(ctx, "customer GET install/status", cu.signed("GET", "/dedicated/server/"+a.name+"/install/status", nil), nil, http.StatusNotFound)
		}
		select {
		case <-time.After(l.c.customerPause):
		case <-ctx.Done():
		}
	}
}

func (l *load) loadAndReport(ctx context.Context, out io.Writer) error {
	for _, cu := range l.customers {
		var ts int64
		req, _ := http.NewRequest("GET", cu.base+"/1.0/auth/time", nil)
		if _, err := l.do(ctx, "auth/time", req, &ts); err != nil {
			return fmt.Errorf("auth/time on %s: %w", cu.base, err)
		}
		cu.delta = ts - time.Now().Unix()
	}
	rss0 := readRSS(l.c.pid)
	runCtx, cancel := context.WithTimeout(ctx, l.c.duration)
	defer cancel()
	var wg sync.WaitGroup
	begin := time.Now()
	for _, a := range l.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.agent(runCtx, a, time.Duration(rand.Int64N(int64(l.c.interval))))
		}()
	}
	for _, cu := range l.customers {
		wg.Add(1)
		go func() { defer wg.Done(); l.customerLoop(runCtx, cu) }()
	}
	var peak string
	stopSample := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopSample:
				return
			case <-time.After(time.Second):
				if r := readRSS(l.c.pid); r != "" {
					peak = r
				}
			}
		}
	}()
	wg.Wait()
	close(stopSample)
	elapsed := time.Since(begin)
	fmt.Fprintf(out, "\n%d agents, %d customers, %s, %d base URL(s)\n", len(l.agents), len(l.customers), elapsed.Round(time.Millisecond), len(l.c.urls))
	fmt.Fprintf(out, "events acknowledged: %d (%.0f events/s), deployments posted: %d\n", l.events.Load(), float64(l.events.Load())/elapsed.Seconds(), l.deploys.Load())
	l.report(out)
	if l.c.pid != 0 {
		fmt.Fprintf(out, "byoi-api memory (pid %d): before %s; at the end %s; %s\n", l.c.pid, rss0, peak, readHWM(l.c.pid))
	}
	return l.verify(ctx, out)
}

func (l *load) report(out io.Writer) {
	l.stats.mu.Lock()
	defer l.stats.mu.Unlock()
	var eps []string
	for ep := range l.stats.lat {
		eps = append(eps, ep)
	}
	sort.Strings(eps)
	fmt.Fprintf(out, "%-34s %8s %7s %9s %9s %9s\n", "endpoint", "requests", "errors", "p50", "p99", "max")
	for _, ep := range eps {
		d := l.stats.lat[ep]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		q := func(p float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*p))] }
		fmt.Fprintf(out, "%-34s %8d %7d %9s %9s %9s\n", ep, len(d), l.stats.err[ep], q(0.50).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), d[len(d)-1].Round(10*time.Microsecond))
		if l.stats.err[ep] > 0 {
			fmt.Fprintf(out, "    last error: %.200s\n", l.stats.why[ep])
		}
	}
}

// verify reads every deployment's history back through the customer API
// and checks each acknowledged event is there, unchanged.
func (l *load) verify(ctx context.Context, out io.Writer) error {
	checked, missing, differ := 0, 0, 0
	for _, a := range l.agents {
		for depl, evs := range a.acked {
			stored := map[int64]map[string]any{}
			after := "0"
			for {
				var page struct {
					Next   json.Number
					Events []map[string]any
				}
				path := fmt.Sprintf("/dedicated/server/%s/bringYourOwnImage/events?deployment=%d&after=%s&limit=1000", a.name, depl, after)
				if _, err := l.do(ctx, "verify events", a.customer.signed("GET", path, nil), &page); err != nil {
					return fmt.Errorf("verify %s: %w", a.name, err)
				}
				if len(page.Events) == 0 {
					break
				}
				for _, e := range page.Events {
					if e["source"] == "agent" && fmt.Sprint(e["attempt"]) == strconv.Itoa(a.att[depl]) {
						seq, _ := strconv.ParseInt(fmt.Sprint(e["seq"]), 10, 64)
						stored[seq] = e
					}
				}
				after = page.Next.String()
			}
			for _, e := range evs {
				checked++
				s, ok := stored[e.Seq]
				switch {
				case !ok:
					missing++
				case s["step"] != string(e.Step) || s["status"] != string(e.Status) || fmt.Sprint(s["bytesDone"]) != strconv.FormatInt(e.BytesDone, 10) || s["message"] != e.Message:
					differ++
				}
			}
		}
	}
	fmt.Fprintf(out, "verification: %d acknowledged events checked against the API: %d missing, %d different\n", checked, missing, differ)
	if missing+differ > 0 {
		return errors.New("acknowledged events were lost or changed")
	}
	return nil
}

func procStatus(pid int, key string) string {
	if pid == 0 {
		return ""
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key+":") {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	return ""
}

func readRSS(pid int) string { return procStatus(pid, "VmRSS") }
func readHWM(pid int) string { return procStatus(pid, "VmHWM") }
