// Package load is byoi-load, the control plane's load tool: it plays N
// agents and M customers against one or more byoi-api instances, for a
// bounded time, and reports events/s, latency per
// endpoint, errors, the memory and CPU of the processes it is told about
// (and its own CPU: it runs on the same machine); at the end it compares
// every event an instance acknowledged with what the database holds.
//
// Servers, customers and their credentials are created directly in the
// database (--db, a SQLite file or a PostgreSQL URL; the same code as
// `byoi-api server add`): no admin endpoint is exposed over HTTP for it.
//
// cmd/byoi-load is its command line; bench/bench-api.sh runs it against
// byoi-api instances on SQLite or PostgreSQL.
//
//	byoi-load --db byoi.db --url http://127.0.0.1:8080 --agents 1000 --duration 60s --pid api=$(pidof byoi-api)
//	byoi-load --db postgres://... --key-file k --url http://127.0.0.1:8080,http://127.0.0.1:8081 --agents 10000 --duration 5m
//
// Each simulated server posts its inventory, then loops: asks for its job;
// when it has none, its customer posts one (signed as go-ovh does) and it
// asks again; it opens an attempt and sends one event every --interval
// through a whole deployment (preflight, download progress, verify, write
// progress, relocate, boot check, ConfigDrive, done), then starts over.
// Agents are spread over the base URLs; an agent whose instance stops
// answering (connection refused: killed) moves to the next URL and sends the
// same event again, as the real agent retries (events are idempotent).
// Customers poll GET bringYourOwnImage and install/status of their servers.
//
// `byoi-load cache ...` is another scenario: N agents of one customer
// deploy the same image through byoi-api's image cache (cache.go).
package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/open"
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
	jitter         float64
	pids           []namedPid
	report         time.Duration
	warmup         time.Duration
	cpuProfile     string
}

type namedPid struct {
	name string
	pid  int
}

// Run runs the load tool with its command-line arguments (cmd/byoi-load's
// flags), printing its progress lines and report on out. It returns an
// error for bad flags, a failed setup, or when the final check finds an
// acknowledged event missing or changed in the database.
func Run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "cache" {
		return runCacheScenario(ctx, args[1:], out) // issue 28 (cache.go)
	}
	c, err := parseFlags(args)
	if err != nil {
		return err
	}
	st, keys, err := open.Store(ctx, c.db, c.keyFile)
	if err != nil {
		return err
	}
	t0 := time.Now()
	l, err := provision(ctx, c, st, keys)
	// Closed during the run: its background work (the SQLite store's
	// checkpointer) is not the load generator's to pay for.
	st.Close()
	if err != nil {
		return err
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Fprintf(out, "provisioned %d servers for %d customers in %s (run %s); running %s against %s\n", c.agents, c.customers, time.Since(t0).Round(time.Millisecond), l.run, c.duration, strings.Join(c.urls, " "))
	if err := l.loadAndReport(ctx, out); err != nil {
		return err
	}
	if st, _, err = open.Store(ctx, c.db, c.keyFile); err != nil {
		return err
	}
	defer st.Close()
	return l.verify(ctx, out, st)
}

type customer struct {
	name    string
	cred    controlplane.Credential
	url     atomic.Int32 // index in urls
	delta   int64        // server time - local time, seconds
	servers []*agentSim
}

type agentSim struct {
	name     string
	token    string
	auth     string // "Bearer " + token
	url      int    // index in urls (failover moves it)
	wire     *wire
	customer *customer
	// deployments this agent ran, for the final check: for each, the
	// attempt and the time of every event acknowledged, in seq order (the
	// events themselves are lifecycle()'s).
	runs []deployRun
}

type deployRun struct {
	n          int // progress events per step: the events are lifecycle(n)
	deployment int64
	attempt    int
	times      []int64 // Unix ms of acknowledged events 1, 2, ...
}

type load struct {
	c          config
	hosts      []string  // host:port of each base URL
	runEnd     time.Time // when the run ends
	run        string
	client     *http.Client
	customers  []*customer
	agents     []*agentSim
	lifecycles sync.Map // n → lifecycle(n)
	stats      stats
	events     atomic.Int64
	deploys    atomic.Int64
	failovers  atomic.Int64
}

func provision(ctx context.Context, c config, st store.Store, keys *controlplane.Keyring) (*load, error) {
	admin := &controlplane.Admin{Store: st, Keys: keys}
	l := &load{c: c, run: strconv.FormatInt(time.Now().Unix()%1000000, 36), client: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			// One keep-alive connection per agent at most, never closed
			// for want of idle room.
			MaxIdleConns: 0, MaxIdleConnsPerHost: 25000, IdleConnTimeout: time.Minute,
			DialContext:       (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			ForceAttemptHTTP2: false,
		},
	}}
	for _, u := range c.urls {
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "http" || pu.Host == "" || (pu.Path != "" && pu.Path != "/") {
			return nil, fmt.Errorf("--url %q: want http://host:port", u)
		}
		l.hosts = append(l.hosts, pu.Host)
	}
	for i := 0; i < c.customers; i++ {
		cu := &customer{name: fmt.Sprintf("load-%s-c%d", l.run, i)}
		cu.url.Store(int32(i % len(c.urls)))
		l.customers = append(l.customers, cu)
	}
	for i := 0; i < c.agents; i++ {
		cu := l.customers[i%len(l.customers)]
		a := &agentSim{name: fmt.Sprintf("load-%s-s%d", l.run, i), url: i % len(c.urls), customer: cu}
		cu.servers = append(cu.servers, a)
		l.agents = append(l.agents, a)
	}
	// Concurrently: the store groups the writes (one commit for many).
	parallel := func(n int, fn func(i int) error) error {
		var wg sync.WaitGroup
		var first atomic.Value
		next := atomic.Int64{}
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= n || first.Load() != nil {
						return
					}
					if err := fn(i); err != nil {
						first.CompareAndSwap(nil, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if err, _ := first.Load().(error); err != nil {
			return err
		}
		return ctx.Err()
	}
	if err := parallel(len(l.customers), func(i int) error {
		cu := l.customers[i]
		if err := admin.AddCustomer(ctx, cu.name); err != nil {
			return err
		}
		var err error
		cu.cred, err = admin.AddCredential(ctx, cu.name)
		return err
	}); err != nil {
		return nil, err
	}
	if err := parallel(len(l.agents), func(i int) error {
		a := l.agents[i]
		var err error
		a.token, err = admin.AddServer(ctx, a.name, a.customer.name, "")
		a.auth = "Bearer " + a.token
		return err
	}); err != nil {
		return nil, err
	}
	return l, nil
}

// stats records latencies (µs) and errors per endpoint, for requests
// started during the warm-up and after it apart.
type stats struct {
	mu       sync.Mutex
	steadyAt time.Time // zero: still provisioning
	ep       map[string]*epStats
	warm     map[string]*epStats
	window   []int32 // agent events since the last progress line (µs)
}

type epStats struct {
	lat    []int32
	errors int
	last   string
}

func (s *stats) add(ep string, start time.Time, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep == nil {
		s.ep, s.warm = map[string]*epStats{}, map[string]*epStats{}
	}
	m := s.ep
	if start.Before(s.steadyAt) {
		m = s.warm
	}
	e := m[ep]
	if e == nil {
		e = &epStats{lat: make([]int32, 0, 1024)}
		m[ep] = e
	}
	e.lat = append(e.lat, int32(min(d.Microseconds(), 1<<31-1)))
	if ep == "agent events" {
		s.window = append(s.window, int32(min(d.Microseconds(), 1<<31-1)))
	}
	if err != nil {
		e.errors++
		e.last = err.Error()
	}
}

// windowP99 is the p99 of the agent events since the last call.
func (s *stats) windowP99() time.Duration {
	s.mu.Lock()
	w := s.window
	s.window = make([]int32, 0, len(w))
	s.mu.Unlock()
	if len(w) == 0 {
		return 0
	}
	slices.Sort(w)
	return time.Duration(w[len(w)*99/100]) * time.Microsecond
}

func (s *stats) errorsTotal() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.ep {
		n += e.errors
	}
	for _, e := range s.warm {
		n += e.errors
	}
	return n
}

// errTransport marks a request that got no HTTP answer.
var errTransport = errors.New("no answer")

// do sends one request and decodes a 2xx JSON answer into out; it returns
// the status. A request that got no answer returns an error wrapping
// errTransport.
func (l *load) do(ctx context.Context, ep string, req *http.Request, out any, okStatus ...int) (int, error) {
	req = req.WithContext(ctx)
	start := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			l.stats.add(ep, start, time.Since(start), err)
		}
		return 0, fmt.Errorf("%w: %w", errTransport, err)
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
		err = json.Unmarshal(body, out)
	}
	if ctx.Err() == nil || err == nil {
		l.stats.add(ep, start, d, err)
	}
	return resp.StatusCode, err
}

// wire is an agent's own HTTP/1.1 keep-alive connection. Agents speak
// HTTP by hand (one write, one buffered read, on the agent's goroutine):
// net/http's client costs two goroutines per connection and a few
// channel hand-offs per request, which on a 2-core machine shared with
// byoi-api would make the load generator the bottleneck.
type wire struct {
	c   net.Conn
	r   *bufio.Reader
	w   *bufio.Writer
	url int // the base URL it is connected to
	buf []byte
}

func (l *load) close(a *agentSim) {
	if a.wire != nil {
		a.wire.c.Close()
		a.wire = nil
	}
}

// agentDo sends one agent request on the agent's connection (dialed on
// first use, again after an error) and decodes a 2xx JSON answer into
// out; it returns the status. No answer: an error wrapping errTransport.
func (l *load) agentDo(ctx context.Context, a *agentSim, ep, method, path string, body []byte, out any) (int, error) {
	start := time.Now()
	st, err := l.agentRoundTrip(a, method, path, body, out)
	if errors.Is(err, errTransport) {
		l.close(a)
		if ctx.Err() != nil {
			return 0, err
		}
	}
	l.stats.add(ep, start, time.Since(start), err)
	return st, err
}

func (l *load) agentRoundTrip(a *agentSim, method, path string, body []byte, out any) (int, error) {
	if a.wire != nil && a.wire.url != a.url {
		l.close(a)
	}
	if a.wire == nil {
		c, err := net.DialTimeout("tcp", l.hosts[a.url], 5*time.Second)
		if err != nil {
			return 0, fmt.Errorf("%w: %w", errTransport, err)
		}
		a.wire = &wire{c: c, r: bufio.NewReaderSize(c, 2048), w: bufio.NewWriterSize(c, 2048), url: a.url}
	}
	w := a.wire
	// Never longer than the run (plus a grace): a request still waiting
	// then fails instead of holding the end of the run.
	dl := time.Now().Add(30 * time.Second)
	if end := l.runEnd.Add(2 * time.Second); end.Before(dl) {
		dl = end
	}
	w.c.SetDeadline(dl)
	w.w.WriteString(method)
	w.w.WriteByte(' ')
	w.w.WriteString(path)
	w.w.WriteString(" HTTP/1.1\r\nHost: ")
	w.w.WriteString(l.hosts[a.url])
	w.w.WriteString("\r\nAuthorization: ")
	w.w.WriteString(a.auth)
	if body != nil {
		w.w.WriteString("\r\nContent-Type: application/json\r\nContent-Length: ")
		w.w.WriteString(strconv.Itoa(len(body)))
	} else if method == "POST" {
		w.w.WriteString("\r\nContent-Length: 0")
	}
	w.w.WriteString("\r\n\r\n")
	w.w.Write(body)
	if err := w.w.Flush(); err != nil {
		return 0, fmt.Errorf("%w: %w", errTransport, err)
	}
	resp, err := http.ReadResponse(w.r, nil)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errTransport, err)
	}
	w.buf = w.buf[:0]
	for {
		if len(w.buf) == cap(w.buf) {
			w.buf = append(w.buf, 0)[:len(w.buf)]
		}
		n, err := resp.Body.Read(w.buf[len(w.buf):cap(w.buf)])
		w.buf = w.buf[:len(w.buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("%w: %w", errTransport, err)
		}
	}
	resp.Body.Close()
	if resp.Close {
		l.close(a)
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(w.buf))
	}
	if out != nil && len(w.buf) > 0 {
		if err := json.Unmarshal(w.buf, out); err != nil {
			return resp.StatusCode, err
		}
	}
	return resp.StatusCode, nil
}

// signed builds a customer request signed as go-ovh does.
func (l *load) signed(cu *customer, method, path string, body []byte) *http.Request {
	url := l.c.urls[cu.url.Load()] + "/1.0" + path
	var r io.Reader = http.NoBody
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, r)
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

// lifecycle is the events of one deployment, as a real agent sends them
// (Seq and Time are set when sent).
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

// lifecycleOf is lifecycle(n), shared.
func (l *load) lifecycleOf(n int) []job.Event {
	if v, ok := l.lifecycles.Load(n); ok {
		return v.([]job.Event)
	}
	v, _ := l.lifecycles.LoadOrStore(n, lifecycle(n))
	return v.([]job.Event)
}

// progressN is a deployment's progress events per step.
func (l *load) progressN() int {
	j := l.c.jitter * (2*rand.Float64() - 1)
	return max(1, int(float64(l.c.progressEvents)*(1+j)+0.5))
}

// failover moves an agent to the next base URL after a request got no
// answer (its instance is gone).
func (l *load) failover(ctx context.Context, a *agentSim, err error) {
	if errors.Is(err, errTransport) && len(l.c.urls) > 1 && ctx.Err() == nil {
		a.url = (a.url + 1) % len(l.c.urls)
		l.failovers.Add(1)
	}
}

func (l *load) agent(ctx context.Context, a *agentSim, start time.Duration) {
	select {
	case <-time.After(start):
	case <-ctx.Done():
		return
	}
	defer l.close(a)
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
	inv, _ := json.Marshal(agentapi.Inventory{BootMode: agentapi.BootModeUEFI, AgentVersion: "byoi-load", DiskGroups: []agentapi.DiskGroup{{DiskGroupID: 1, Description: "1 X Disk NVME 960 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 960}, DiskType: "NVME", NumberOfDisks: 1}}})
	for {
		_, err := l.agentDo(ctx, a, "agent inventory", "POST", agentapi.InventoryPath(a.name), inv, nil)
		if err == nil {
			break
		}
		l.failover(ctx, a, err)
		if !wait() {
			return
		}
	}
	jobPath := agentapi.JobPath(a.name)
	var ebuf bytes.Buffer
	for ctx.Err() == nil {
		var as agentapi.Assignment
		st, err := l.agentDo(ctx, a, "agent job", "GET", jobPath, nil, &as)
		if err == nil && st == http.StatusNoContent {
			// Nothing to do: the server's customer posts a deployment
			// (409 when one already runs), and the agent asks again.
			if _, err := l.do(ctx, "customer POST bringYourOwnImage", l.signed(a.customer, "POST", "/dedicated/server/"+a.name+"/bringYourOwnImage", jobBody), nil, http.StatusConflict); err == nil {
				l.deploys.Add(1)
			}
			st, err = l.agentDo(ctx, a, "agent job", "GET", jobPath, nil, &as)
		}
		if err != nil || st != http.StatusOK {
			l.failover(ctx, a, err)
			if !wait() {
				return
			}
			continue
		}
		var at agentapi.Attempt
		if _, err := l.agentDo(ctx, a, "agent attempt", "POST", agentapi.AttemptsPath(a.name, as.DeploymentID), nil, &at); err != nil {
			l.failover(ctx, a, err)
			if !wait() {
				return
			}
			continue
		}
		n := l.progressN()
		evs := l.lifecycleOf(n)
		r := deployRun{n: n, deployment: as.DeploymentID, attempt: at.Attempt, times: make([]int64, 0, len(evs))}
		evPath := agentapi.EventsPath(a.name, as.DeploymentID)
		for i := 0; i < len(evs); {
			if !wait() {
				break
			}
			e := evs[i]
			e.Seq, e.Time = int64(i+1), time.UnixMilli(time.Now().UnixMilli())
			ebuf.Reset()
			json.NewEncoder(&ebuf).Encode(agentapi.EventBatch{Attempt: at.Attempt, Events: []job.Event{e}})
			var ack agentapi.Ack
			st, err := l.agentDo(ctx, a, "agent events", "POST", evPath, ebuf.Bytes(), &ack)
			if err != nil {
				if st == http.StatusGone || st == http.StatusConflict {
					break
				}
				l.failover(ctx, a, err)
				continue // the same event again, at the next tick
			}
			if ack.Seq >= e.Seq {
				r.times = append(r.times, e.Time.UnixMilli())
				l.events.Add(1)
				i++
			}
		}
		a.runs = append(a.runs, r)
	}
}

func (l *load) customerLoop(ctx context.Context, cu *customer, start time.Duration) {
	select {
	case <-time.After(start):
	case <-ctx.Done():
		return
	}
	for i := 0; ctx.Err() == nil; i++ {
		a := cu.servers[(i/2)%len(cu.servers)]
		var err error
		if i%2 == 0 {
			_, err = l.do(ctx, "customer GET bringYourOwnImage", l.signed(cu, "GET", "/dedicated/server/"+a.name+"/bringYourOwnImage", nil), nil, http.StatusNotFound)
		} else {
			_, err = l.do(ctx, "customer GET install/status", l.signed(cu, "GET", "/dedicated/server/"+a.name+"/install/status", nil), nil, http.StatusNotFound)
		}
		if errors.Is(err, errTransport) && len(l.c.urls) > 1 && ctx.Err() == nil {
			cu.url.Store((cu.url.Load() + 1) % int32(len(l.c.urls)))
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
		req, _ := http.NewRequest("GET", l.c.urls[cu.url.Load()]+"/1.0/auth/time", nil)
		if _, err := l.do(ctx, "auth/time", req, &ts); err != nil {
			return fmt.Errorf("auth/time on %s: %w", l.c.urls[cu.url.Load()], err)
		}
		cu.delta = ts - time.Now().Unix()
	}
	procs := make([]*proc, len(l.c.pids))
	for i, p := range l.c.pids {
		procs[i] = newProc(p)
	}
	self0, mach0 := selfCPU(), machineCPU()
	l.runEnd = time.Now().Add(l.c.duration)
	runCtx, cancel := context.WithDeadline(ctx, l.runEnd)
	defer cancel()
	var wg sync.WaitGroup
	begin := time.Now()
	l.stats.mu.Lock()
	l.stats.steadyAt = begin.Add(l.c.warmup)
	l.stats.mu.Unlock()
	// What the run reached after the warm-up: the counters at its end.
	var mark struct {
		set           bool
		t             time.Time
		events        int64
		self, machine float64
		procs         []float64
	}
	for _, a := range l.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.agent(runCtx, a, time.Duration(rand.Int64N(int64(l.c.interval))))
		}()
	}
	for _, cu := range l.customers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.customerLoop(runCtx, cu, time.Duration(rand.Int64N(int64(l.c.customerPause))))
		}()
	}
	stopSample := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		lastEv, lastT, lastSelf, lastMach := int64(0), begin, self0, mach0
		var lastCPU []float64
		for _, p := range procs {
			lastCPU = append(lastCPU, p.cpu0)
		}
		for n := 1; ; n++ {
			select {
			case <-stopSample:
				return
			case <-tick.C:
			}
			for _, p := range procs {
				p.sample()
			}
			if !mark.set && time.Since(begin) >= l.c.warmup {
				mark.set, mark.t, mark.events, mark.self, mark.machine = true, time.Now(), l.events.Load(), selfCPU(), machineCPU()
				for _, p := range procs {
					mark.procs = append(mark.procs, p.cpuNow())
				}
			}
			if l.c.report <= 0 || time.Duration(n)*time.Second%l.c.report != 0 {
				continue
			}
			now, ev, self, mach := time.Now(), l.events.Load(), selfCPU(), machineCPU()
			dt := now.Sub(lastT).Seconds()
			line := fmt.Sprintf("t=%4.0fs events/s %6.0f p99 %s errors %d failovers %d machine-cpu %3.0f%% load-cpu %3.0f%%", now.Sub(begin).Seconds(), float64(ev-lastEv)/dt, l.stats.windowP99().Round(time.Millisecond), l.stats.errorsTotal(), l.failovers.Load(), 100*(mach-lastMach)/dt, 100*(self-lastSelf)/dt)
			for i, p := range procs {
				c := p.cpuNow()
				line += fmt.Sprintf(" %s-cpu %3.0f%% %s-rss %dMiB", p.name, 100*(c-lastCPU[i])/dt, p.name, p.rss>>20)
				lastCPU[i] = c
			}
			fmt.Fprintln(out, line)
			lastEv, lastT, lastSelf, lastMach = ev, now, self, mach
		}
	}()
	wg.Wait()
	close(stopSample)
	<-sampled
	end := time.Now()
	elapsed := end.Sub(begin)
	fmt.Fprintf(out, "\n%d agents, %d customers, %s, %d base URL(s), an event every %s per agent (offered %.0f events/s)\n", len(l.agents), len(l.customers), elapsed.Round(time.Millisecond), len(l.c.urls), l.c.interval, float64(len(l.agents))/l.c.interval.Seconds())
	fmt.Fprintf(out, "events acknowledged: %d (%.0f events/s over the whole run), deployments posted: %d, failovers: %d\n", l.events.Load(), float64(l.events.Load())/elapsed.Seconds(), l.deploys.Load(), l.failovers.Load())
	cpuLine := func(from time.Time, self, mach float64, pc []float64) string {
		dt := end.Sub(from).Seconds()
		line := fmt.Sprintf("CPU (of 2 cores = 200%%): machine %.0f%%, byoi-load %.0f%%", 100*(machineCPU()-mach)/dt, 100*(selfCPU()-self)/dt)
		for i, p := range procs {
			line += fmt.Sprintf(", %s %.0f%%", p.name, 100*(p.cpuNow()-pc[i])/dt)
		}
		return line
	}
	var pc0 []float64
	for _, p := range procs {
		pc0 = append(pc0, p.cpu0)
	}
	if mark.set {
		fmt.Fprintf(out, "\nafter the %s warm-up (%s): %.0f events/s acknowledged\n", l.c.warmup, end.Sub(mark.t).Round(time.Second), float64(l.events.Load()-mark.events)/end.Sub(mark.t).Seconds())
		l.report(out, l.stats.ep)
		fmt.Fprintln(out, cpuLine(mark.t, mark.self, mark.machine, mark.procs))
		fmt.Fprintf(out, "\nduring the warm-up (registration, first POSTs and attempts of every server at once):\n")
		l.report(out, l.stats.warm)
	} else {
		l.report(out, l.stats.warm)
	}
	fmt.Fprintln(out, "whole run: "+cpuLine(begin, self0, mach0, pc0))
	for _, p := range procs {
		fmt.Fprintf(out, "memory %s (pid %d): RSS at start %d MiB, peak sampled %d MiB, %s\n", p.name, p.pid, p.rss0>>20, p.peak>>20, procStatus(p.pid, "VmHWM"))
	}
	return nil
}

func (l *load) report(out io.Writer, m map[string]*epStats) {
	l.stats.mu.Lock()
	defer l.stats.mu.Unlock()
	var eps []string
	for ep := range m {
		eps = append(eps, ep)
	}
	sort.Strings(eps)
	fmt.Fprintf(out, "%-34s %9s %7s %9s %9s %9s\n", "endpoint", "requests", "errors", "p50", "p99", "max")
	us := func(v int32) string {
		return (time.Duration(v) * time.Microsecond).Round(10 * time.Microsecond).String()
	}
	for _, ep := range eps {
		e := m[ep]
		d := e.lat
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		q := func(p float64) int32 { return d[min(len(d)-1, int(float64(len(d))*p))] }
		fmt.Fprintf(out, "%-34s %9d %7d %9s %9s %9s\n", ep, len(d), e.errors, us(q(0.50)), us(q(0.99)), us(d[len(d)-1]))
		if e.errors > 0 {
			fmt.Fprintf(out, "    last error: %.200s\n", e.last)
		}
	}
}

// verify compares every acknowledged event with what the database holds
// (read through the store, not through an instance: one may have been
// killed): each must be there, in its deployment and attempt, unchanged.
func (l *load) verify(ctx context.Context, out io.Writer, st store.Store) error {
	type item struct {
		a *agentSim
		r deployRun
	}
	items := make(chan item, 1024)
	var checked, missing, differ, deployments atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range items {
				deployments.Add(1)
				stored := map[int64]store.Entry{}
				after := int64(0)
				for {
					page, err := st.History(ctx, it.r.deployment, after, 1000)
					if err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					if len(page) == 0 {
						break
					}
					for _, e := range page {
						if e.Source == store.SourceAgent && e.Attempt == it.r.attempt {
							stored[e.Seq] = e
						}
					}
					after = page[len(page)-1].N
				}
				evs := l.lifecycleOf(it.r.n)
				for i, ms := range it.r.times {
					checked.Add(1)
					want := evs[i]
					s, ok := stored[int64(i+1)]
					switch {
					case !ok:
						missing.Add(1)
					case s.Step != want.Step || s.Status != want.Status || s.Kind != want.Kind || s.Code != want.Code || s.BytesDone != want.BytesDone || s.BytesTotal != want.BytesTotal || s.Message != want.Message || s.Time.UnixMilli() != ms:
						differ.Add(1)
					}
				}
			}
		}()
	}
	start := time.Now()
	for _, a := range l.agents {
		for _, r := range a.runs {
			if len(r.times) > 0 {
				items <- item{a, r}
			}
		}
	}
	close(items)
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	fmt.Fprintf(out, "verification against the database: %d acknowledged events of %d deployments checked in %s: %d missing, %d different\n",
		checked.Load(), deployments.Load(), time.Since(start).Round(time.Millisecond), missing.Load(), differ.Load())
	if checked.Load() != l.events.Load() {
		return fmt.Errorf("%d events acknowledged but %d checked", l.events.Load(), checked.Load())
	}
	if missing.Load()+differ.Load() > 0 {
		return errors.New("acknowledged events were lost or changed")
	}
	return nil
}

// parseFlags reads and checks byoi-load's flags.
func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("byoi-load", flag.ContinueOnError)
	var c config
	urls := fs.String("url", "http://127.0.0.1:8080", "byoi-api base URLs, comma-separated (agents and customers are spread over them)")
	fs.StringVar(&c.db, "db", "byoi.db", "the byoi-api database (SQLite file or postgres:// URL), to create the simulated servers and to verify")
	fs.StringVar(&c.keyFile, "key-file", "", "its key file (default: the SQLite path + .key)")
	fs.IntVar(&c.agents, "agents", 100, "simulated agents (servers), at most 20000")
	fs.IntVar(&c.customers, "customers", 0, "simulated customers polling, at most 2000 (default: one per 20 servers)")
	fs.DurationVar(&c.duration, "duration", 60*time.Second, "how long to run, at most 30m")
	fs.DurationVar(&c.interval, "interval", 2*time.Second, "time between two events of an agent")
	fs.DurationVar(&c.customerPause, "customer-pause", time.Second, "pause between two requests of a customer")
	fs.IntVar(&c.progressEvents, "progress-events", 20, "progress events in the download and in the write step")
	fs.Float64Var(&c.jitter, "progress-jitter", 0.5, "each deployment's progress events vary by up to this fraction (images differ in size), so that deployments started together do not all end together again")
	pids := fs.String("pid", "", "processes to report memory and CPU of: name=pid,... (a bare pid is named byoi-api); CPU counts the process's children too")
	fs.DurationVar(&c.report, "report-every", 10*time.Second, "interval of the progress lines")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write byoi-load's own CPU profile of the run to this file")
	fs.DurationVar(&c.warmup, "warmup", 30*time.Second, "the first part of the run, reported apart: every agent registers, its customer posts and the deployments start at once")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.urls = strings.Split(*urls, ",")
	if c.customers == 0 {
		c.customers = max(1, c.agents/20)
	}
	if c.agents < 1 || c.agents > 20000 || c.customers < 1 || c.customers > 2000 || c.duration <= 0 || c.duration > 30*time.Minute || c.interval < 10*time.Millisecond || c.progressEvents < 1 || c.progressEvents > 100 || c.jitter < 0 || c.jitter >= 1 {
		return c, errors.New("--agents 1..20000, --customers 1..2000, --duration up to 30m, --interval at least 10ms, --progress-events 1..100, --progress-jitter 0..<1")
	}
	if c.customers > c.agents {
		c.customers = c.agents
	}
	var err error
	c.pids, err = parsePids(*pids)
	return c, err
}

// parsePids parses --pid: NAME=PID or PID (named byoi-api), comma-separated.
func parsePids(list string) ([]namedPid, error) {
	var out []namedPid
	for _, p := range strings.Split(list, ",") {
		if p == "" {
			continue
		}
		name, v, ok := strings.Cut(p, "=")
		if !ok {
			name, v = "byoi-api", p
		}
		pid, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("--pid %q: %w", p, err)
		}
		out = append(out, namedPid{name, pid})
	}
	return out, nil
}
