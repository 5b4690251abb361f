package load

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store/open"
	"github.com/byoi/byoi/job"
)

// The cache scenario (issue 28): `byoi-load cache ...`. N simulated agents
// of one customer deploy the same image, served by an origin inside
// byoi-load on 127.0.0.1 that counts requests and bytes, through one
// byoi-api: each agent asks for its job, reads the image from the path
// its assignment names (the control plane's image cache, with its agent
// token) or, when there is none or the cache sends it away (404), from the
// origin with the job's header, resuming with Range after a break, hashes
// every byte it got (SHA-256) and reports done or, on a mismatch, error.
// The report: the origin's requests and bytes, how many agents got exactly
// the image, the aggregate delivery rate, byoi-api's CPU and RSS (--pid).
//
//	byoi-load cache --db byoi.db --url http://127.0.0.1:8080 --agents 200 --image-size 1GiB --pid api=$(pidof byoi-api)

type cacheConfig struct {
	url         string
	db, keyFile string
	agents      int
	imageSize   int64
	duration    time.Duration
	pids        []namedPid
	seed        uint64
}

func parseCacheFlags(args []string) (cacheConfig, error) {
	fs := flag.NewFlagSet("byoi-load cache", flag.ContinueOnError)
	var c cacheConfig
	fs.StringVar(&c.url, "url", "http://127.0.0.1:8080", "the byoi-api base URL (one instance)")
	fs.StringVar(&c.db, "db", "byoi.db", "its database (SQLite file or postgres:// URL), to create the customer and servers")
	fs.StringVar(&c.keyFile, "key-file", "", "its key file (default: the SQLite path + .key)")
	fs.IntVar(&c.agents, "agents", 200, "simulated agents of one customer, at most 2000")
	size := fs.String("image-size", "1GiB", "the image's size (at most 8GiB; it is held in memory)")
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "bound of the run, at most 30m")
	pids := fs.String("pid", "", "processes to report memory and CPU of: name=pid,...")
	seed := fs.Uint64("seed", 1, "the image's bytes are a ChaCha8 stream of this seed")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.seed = *seed
	var err error
	if c.imageSize, err = parseBytes(*size); err != nil {
		return c, err
	}
	if c.agents < 1 || c.agents > 2000 || c.imageSize < 1<<20 || c.imageSize > 8<<30 || c.duration <= 0 || c.duration > 30*time.Minute {
		return c, errors.New("--agents 1..2000, --image-size 1MiB..8GiB, --duration up to 30m")
	}
	c.pids, err = parsePids(*pids)
	return c, err
}

func parseBytes(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		s string
		m int64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if v, ok := strings.CutSuffix(t, u.s); ok {
			t, mult = v, u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--image-size %q: want e.g. 1GiB", s)
	}
	return n * mult, nil
}

// cacheResult is what a cache run measured.
type cacheResult struct {
	Agents, OK, Mismatched, Failed, FellBack, ViaCache int
	OriginRequests, OriginBytes                        int64
	Delivered                                          int64 // bytes all agents received
	Elapsed                                            time.Duration
	PerAgent                                           []time.Duration
}

const cacheHeader = "load-origin-secret"

// runCacheScenario is `byoi-load cache`.
func runCacheScenario(ctx context.Context, args []string, out io.Writer) error {
	c, err := parseCacheFlags(args)
	if err != nil {
		return err
	}
	res, err := runCache(ctx, c, out)
	if err != nil {
		return err
	}
	if res.OK != res.Agents {
		return fmt.Errorf("%d of %d agents did not receive exactly the image (%d mismatched, %d failed)", res.Agents-res.OK, res.Agents, res.Mismatched, res.Failed)
	}
	return nil
}

// cacheOrigin serves the image (Range too), counting; the job's header is
// required.
type cacheOrigin struct {
	data  []byte
	reqs  atomic.Int64
	bytes atomic.Int64
}

func (o *cacheOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.reqs.Add(1)
	if r.Header.Get("X-Load-Token") != cacheHeader || r.URL.Path != "/image.raw" {
		http.Error(w, "no", http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"load-image"`)
	http.ServeContent(countedWriter{w, &o.bytes}, r, "", time.Time{}, bytes.NewReader(o.data))
}

type countedWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countedWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func runCache(ctx context.Context, c cacheConfig, out io.Writer) (cacheResult, error) {
	var res cacheResult
	t0 := time.Now()
	data := make([]byte, c.imageSize)
	var key [32]byte
	key[0], key[1] = byte(c.seed), byte(c.seed>>8)
	rand.NewChaCha8(key).Read(data)
	s := sha256.Sum256(data)
	sum := hex.EncodeToString(s[:])
	origin := &cacheOrigin{data: data}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	osrv := &http.Server{Handler: origin, ReadHeaderTimeout: 10 * time.Second}
	go osrv.Serve(ln)
	defer osrv.Close()
	imageURL := "http://" + ln.Addr().String() + "/image.raw"

	st, keys, err := open.Store(ctx, c.db, c.keyFile)
	if err != nil {
		return res, err
	}
	admin := &controlplane.Admin{Store: st, Keys: keys}
	run := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	cu := &customer{name: "cache-" + run}
	if err := admin.AddCustomer(ctx, cu.name); err != nil {
		st.Close()
		return res, err
	}
	if cu.cred, err = admin.AddCredential(ctx, cu.name); err != nil {
		st.Close()
		return res, err
	}
	agents := make([]*agentSim, c.agents)
	for i := range agents {
		a := &agentSim{name: fmt.Sprintf("cache-%s-s%d", run, i), customer: cu}
		if a.token, err = admin.AddServer(ctx, a.name, cu.name, ""); err != nil {
			st.Close()
			return res, err
		}
		a.auth = "Bearer " + a.token
		agents[i] = a
	}
	st.Close()
	fmt.Fprintf(out, "cache scenario: %d agents of one customer, a %s image (sha256 %s…), set up in %s, origin %s\n",
		c.agents, job.HumanBytes(c.imageSize), sum[:16], time.Since(t0).Round(time.Millisecond), ln.Addr())

	pu, err := url.Parse(c.url)
	if err != nil || pu.Scheme != "http" || pu.Host == "" {
		return res, fmt.Errorf("--url %q: want http://host:port", c.url)
	}
	l := &load{c: config{urls: []string{c.url}}, hosts: []string{pu.Host}, runEnd: time.Now().Add(c.duration + 30*time.Second), client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}}}
	var ts int64
	req, _ := http.NewRequest("GET", c.url+"/1.0/auth/time", nil)
	if _, err := l.do(ctx, "auth/time", req, &ts); err != nil {
		return res, fmt.Errorf("auth/time on %s: %w", c.url, err)
	}
	cu.delta = ts - time.Now().Unix()
	body, _ := json.Marshal(map[string]any{"URL": imageURL, "type": "raw", "checkSum": sum, "checkSumType": "sha256",
		"httpHeader": []map[string]string{{"key": "X-Load-Token", "value": cacheHeader}}})
	for _, a := range agents {
		if _, err := l.do(ctx, "customer POST", l.signed(cu, "POST", "/dedicated/server/"+a.name+"/bringYourOwnImage", body), nil); err != nil {
			return res, fmt.Errorf("POST deployment: %w", err)
		}
	}

	procs := make([]*proc, len(c.pids))
	for i, p := range c.pids {
		procs[i] = newProc(p)
	}
	runCtx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	// The image streams: one client per agent (its own connection).
	dl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4096, DisableCompression: true, IdleConnTimeout: time.Minute,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext, ResponseHeaderTimeout: 60 * time.Second}}
	type agentRes struct {
		ok, mismatch, fellBack, viaCache bool
		got                              int64
		took                             time.Duration
		err                              error
	}
	results := make([]agentRes, len(agents))
	self0, mach0 := selfCPU(), machineCPU()
	begin := time.Now()
	var wg sync.WaitGroup
	stopSample := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopSample:
				return
			case <-tick.C:
				for _, p := range procs {
					p.sample()
				}
			}
		}
	}()
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			t := time.Now()
			var as agentapi.Assignment
			if _, err := l.agentDo(runCtx, a, "agent job", "GET", agentapi.JobPath(a.name), nil, &as); err != nil {
				r.err = err
				return
			}
			var at agentapi.Attempt
			if _, err := l.agentDo(runCtx, a, "agent attempts", "POST", agentapi.AttemptsPath(a.name, as.DeploymentID), nil, &at); err != nil {
				r.err = err
				return
			}
			h := sha256.New()
			r.viaCache = as.ImagePath != ""
			// Progress events while the image streams, as the real agent
			// sends them: they keep the deployment out of the agent-silence
			// timeout (5 minutes) on long transfers.
			var progress atomic.Int64
			seq := int64(0)
			beat := make(chan struct{})
			beatDone := make(chan struct{})
			go func() {
				defer close(beatDone)
				tick := time.NewTicker(cacheProgressEvery)
				defer tick.Stop()
				for {
					select {
					case <-beat:
						return
					case <-tick.C:
						seq++
						b, _ := json.Marshal(agentapi.EventBatch{Attempt: at.Attempt, Events: []job.Event{
							{Seq: seq, Time: time.Now(), Status: job.StatusDoing, Step: job.StepDownload, Kind: job.KindProgress, BytesDone: progress.Load(), BytesTotal: c.imageSize}}})
						l.agentDo(runCtx, a, "agent events", "POST", agentapi.EventsPath(a.name, as.DeploymentID), b, nil)
					}
				}
			}()
			r.got, r.fellBack, r.err = fetchImage(runCtx, dl, c.url, as.ImagePath, a.auth, imageURL, h, &progress)
			close(beat)
			<-beatDone
			r.took = time.Since(t)
			r.ok = r.err == nil && r.got == c.imageSize && hex.EncodeToString(h.Sum(nil)) == sum
			r.mismatch = r.err == nil && !r.ok
			final := job.Event{Seq: seq + 2, Time: time.Now(), Status: job.StatusDone, Step: job.StepFinish, Kind: job.KindInfo, Code: job.MsgDone, Message: job.Text(job.MsgDone)}
			if !r.ok {
				final.Status, final.Code, final.Message = job.StatusError, job.ChecksumMismatch, job.Text(job.ChecksumMismatch, "sha256", "?", sum)
			}
			b, _ := json.Marshal(agentapi.EventBatch{Attempt: at.Attempt, Events: []job.Event{
				{Seq: seq + 1, Time: time.Now(), Status: job.StatusDoing, Step: job.StepDownload, Kind: job.KindProgress, BytesDone: r.got, BytesTotal: c.imageSize},
				final}})
			l.agentDo(ctx, a, "agent events", "POST", agentapi.EventsPath(a.name, as.DeploymentID), b, nil)
		}()
	}
	wg.Wait()
	close(stopSample)
	res.Elapsed = time.Since(begin)
	dt := res.Elapsed.Seconds()
	res.Agents = len(agents)
	var lastErr error
	for _, r := range results {
		res.Delivered += r.got
		switch {
		case r.ok:
			res.OK++
		case r.mismatch:
			res.Mismatched++
		default:
			res.Failed++
			lastErr = r.err
		}
		if r.fellBack {
			res.FellBack++
		}
		if r.viaCache {
			res.ViaCache++
		}
		res.PerAgent = append(res.PerAgent, r.took)
	}
	sort.Slice(res.PerAgent, func(i, j int) bool { return res.PerAgent[i] < res.PerAgent[j] })
	res.OriginRequests, res.OriginBytes = origin.reqs.Load(), origin.bytes.Load()
	via := "through the image cache"
	if res.ViaCache == 0 {
		via = "from the origin directly (no image path in the assignments: byoi-api has no --image-cache)"
	}
	fmt.Fprintf(out, "agents: %d of %d received exactly the image (%d via the cache path, %d fell back to the origin, %d mismatched, %d failed)\n",
		res.OK, res.Agents, res.ViaCache, res.FellBack, res.Mismatched, res.Failed)
	if lastErr != nil {
		fmt.Fprintf(out, "    last error: %.200s\n", lastErr.Error())
	}
	fmt.Fprintf(out, "origin: %d requests, %s sent (%.2f× the image)\n", res.OriginRequests, job.HumanBytes(res.OriginBytes), float64(res.OriginBytes)/float64(c.imageSize))
	fmt.Fprintf(out, "delivery %s: %s in %s = %.2f GiB/s aggregate; per agent p50 %s, max %s\n", via, job.HumanBytes(res.Delivered),
		res.Elapsed.Round(10*time.Millisecond), float64(res.Delivered)/dt/(1<<30), res.PerAgent[len(res.PerAgent)/2].Round(10*time.Millisecond),
		res.PerAgent[len(res.PerAgent)-1].Round(10*time.Millisecond))
	line := fmt.Sprintf("CPU (of 2 cores = 200%%): machine %.0f%%, byoi-load (agents, hashing, origin) %.0f%%", 100*(machineCPU()-mach0)/dt, 100*(selfCPU()-self0)/dt)
	for _, p := range procs {
		line += fmt.Sprintf(", %s %.0f%%", p.name, 100*(p.cpuNow()-p.cpu0)/dt)
	}
	fmt.Fprintln(out, line)
	for _, p := range procs {
		fmt.Fprintf(out, "memory %s (pid %d): RSS at start %d MiB, peak sampled %d MiB, %s\n", p.name, p.pid, p.rss0>>20, p.peak>>20, procStatus(p.pid, "VmHWM"))
	}
	return res, nil
}

// fetchImage reads the image as the agent does: from the cache path first
// (503: wait and ask again; 404: the origin takes over at the byte
// reached), resuming with Range after a break; every byte goes to h once.
func fetchImage(ctx context.Context, cl *http.Client, base, cachePath, auth, originURL string, h hash.Hash, progress *atomic.Int64) (got int64, fellBack bool, err error) {
	useCache := cachePath != ""
	buf := make([]byte, 256<<10)
	failures := 0
	for failures < 20 {
		if err := ctx.Err(); err != nil {
			return got, fellBack, err
		}
		u := originURL
		if useCache {
			u = base + cachePath
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
		if useCache {
			req.Header.Set("Authorization", auth)
		} else {
			req.Header.Set("X-Load-Token", cacheHeader)
		}
		if got > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(got, 10)+"-")
		}
		resp, err := cl.Do(req)
		if err != nil {
			failures++
			time.Sleep(time.Second)
			continue
		}
		switch {
		case resp.StatusCode == http.StatusServiceUnavailable:
			resp.Body.Close()
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			time.Sleep(time.Duration(max(1, wait)) * time.Second)
			continue
		case resp.StatusCode == http.StatusNotFound && useCache:
			resp.Body.Close()
			useCache, fellBack = false, true
			continue
		case (resp.StatusCode == http.StatusOK && got == 0) || (resp.StatusCode == http.StatusPartialContent && got > 0):
		default:
			resp.Body.Close()
			return got, fellBack, fmt.Errorf("%s: HTTP %d at byte %d", redactHost(u), resp.StatusCode, got)
		}
		for {
			n, rerr := resp.Body.Read(buf)
			if n > 0 {
				h.Write(buf[:n])
				got += int64(n)
				progress.Store(got)
			}
			if rerr == io.EOF {
				resp.Body.Close()
				return got, fellBack, nil
			}
			if rerr != nil {
				resp.Body.Close()
				failures++
				break
			}
		}
	}
	return got, fellBack, errors.New("too many broken transfers")
}

// cacheProgressEvery is how often a simulated agent reports its download's
// progress (a variable for the tests).
var cacheProgressEvery = 20 * time.Second

func redactHost(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "?"
	}
	return p.Scheme + "://" + p.Host + p.Path
}
