package imagecache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/job"
)

// origin is a test origin: it serves one or more images, counts requests
// and bytes, checks a header, and can be slowed or broken.
type origin struct {
	srv      *httptest.Server
	mu       sync.Mutex
	images   map[string][]byte
	reqs     atomic.Int64
	ranges   atomic.Int64 // requests with a Range
	bytes    atomic.Int64
	delay    time.Duration // per 64 KiB
	noRange  bool
	stopAt   int64 // cut the connection after this many bytes of a 200 (0: never)
	token    string
	userSeen atomic.Value
}

func newOrigin(t *testing.T) *origin {
	o := &origin{images: map[string][]byte{}, token: "s3cr3t-header-value"}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.reqs.Add(1)
		if r.Header.Get("X-Token") != o.token {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		o.userSeen.Store(r.Header.Get("User-Agent"))
		o.mu.Lock()
		data, ok := o.images[r.URL.Path]
		delay, noRange, stopAt := o.delay, o.noRange, o.stopAt
		o.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Range") != "" {
			o.ranges.Add(1)
		}
		if noRange {
			r.Header.Del("Range")
		}
		var rd io.ReadSeeker = bytes.NewReader(data)
		if delay > 0 || stopAt > 0 {
			rd = &slow{r: bytes.NewReader(data), delay: delay, stopAt: stopAt}
		}
		cw := &countW{ResponseWriter: w, n: &o.bytes}
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(cw, r, "", time.Time{}, rd)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) add(path string, data []byte) (url, sum string) {
	o.mu.Lock()
	o.images[path] = data
	o.mu.Unlock()
	s := sha256.Sum256(data)
	return o.srv.URL + path + "?X-Amz-Signature=presigned-query-secret", hex.EncodeToString(s[:])
}

type countW struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countW) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

type slow struct {
	r      *bytes.Reader
	delay  time.Duration
	stopAt int64
	sent   int64
}

func (s *slow) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	// stopAt is a position in the file: every answer breaks there.
	pos, _ := s.r.Seek(0, io.SeekCurrent)
	if s.stopAt > 0 && pos >= s.stopAt {
		return 0, errors.New("cut")
	}
	if s.stopAt > 0 && pos+int64(len(p)) > s.stopAt {
		p = p[:s.stopAt-pos]
	}
	time.Sleep(s.delay)
	n, err := s.r.Read(p)
	s.sent += int64(n)
	return n, err
}

func (s *slow) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed+1))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

func openCache(t *testing.T, dir string, mod func(*Config)) *Cache {
	t.Helper()
	cfg := Config{Dir: dir, Allow: loopback, QueueWait: 5 * time.Second, RetryBase: 10 * time.Millisecond, StallTimeout: 10 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// front serves the cache as byoi-api does: 404 for "not cached", 503 with
// Retry-After for "busy". The image is given by the test per request
// (query "img").
func front(t *testing.T, c *Cache, imgs map[string]Image) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		img := imgs[r.URL.Query().Get("img")]
		err := c.Serve(w, r, img)
		var be *BusyError
		switch {
		case errors.Is(err, ErrNotCached):
			http.Error(w, "not cached", http.StatusNotFound)
		case errors.As(err, &be):
			w.Header().Set("Retry-After", strconv.Itoa(int(be.RetryAfter.Seconds())))
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// fetch gets the image (from off) and returns the status and its bytes.
func fetch(t *testing.T, url string, off int64) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func image(o *origin, url, sum string, customer int64) Image {
	return Image{Customer: customer, URL: url, Headers: []job.Header{{Name: "X-Token", Value: o.token}}, ChecksumType: "sha256", Checksum: sum}
}

// TestOneFetchManyFollowers: 12 agents at once get exactly the image's
// bytes while one origin download fills the cache; later ones are hits.
func TestOneFetchManyFollowers(t *testing.T) {
	o := newOrigin(t)
	data := randomBytes(24<<20, 1)
	u, sum := o.add("/img.raw", data)
	o.delay = 2 * time.Millisecond
	dir := t.TempDir()
	c := openCache(t, dir, nil)
	srv := front(t, c, map[string]Image{"a": image(o, u, sum, 1)})
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 20 * time.Millisecond)
			code, b, err := fetch(t, srv.URL+"/?img=a", 0)
			if err != nil || code != 200 || !bytes.Equal(b, data) {
				errs <- fmt.Errorf("agent %d: status %d, %d bytes, err %v, equal %v", i, code, len(b), err, bytes.Equal(b, data))
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := o.reqs.Load(); n != 1 {
		t.Errorf("origin got %d requests, want 1", n)
	}
	if n := o.bytes.Load(); n != int64(len(data)) {
		t.Errorf("origin sent %d bytes, want %d", n, len(data))
	}
	// A later agent is served from the verified entry, with a resume.
	code, b, err := fetch(t, srv.URL+"/?img=a", 5<<20)
	if err != nil || code != http.StatusPartialContent || !bytes.Equal(b, data[5<<20:]) {
		t.Fatalf("range from the complete entry: %d, %d bytes, %v", code, len(b), err)
	}
	st := c.Stats()
	if st.Misses.Load() != 1 || st.Hits.Load() < 1 || st.Joins.Load() < 1 || st.FillsOK.Load() != 1 {
		t.Errorf("stats: misses %d hits %d joins %d fills %d", st.Misses.Load(), st.Hits.Load(), st.Joins.Load(), st.FillsOK.Load())
	}
	if st.BytesServed.Load() != int64(12*len(data)+len(data)-5<<20) {
		t.Errorf("bytes served %d", st.BytesServed.Load())
	}
	if st.OriginBytes.Load() != int64(len(data)) {
		t.Errorf("origin bytes %d", st.OriginBytes.Load())
	}
	if o.userSeen.Load() != "byoi-api image cache" {
		t.Errorf("user agent %v", o.userSeen.Load())
	}
	noSecretsIn(t, dir, o.token, "presigned-query-secret", "/img.raw")
}

// noSecretsIn fails when a file of dir holds one of the strings.
func noSecretsIn(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".data") {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds %q", e.Name(), s)
			}
		}
	}
}

// TestFollowerResumesMidFill: an agent asks from an offset while the fill
// runs: it gets the rest.
func TestFollowerResumesMidFill(t *testing.T) {
	o := newOrigin(t)
	data := randomBytes(8<<20, 2)
	u, sum := o.add("/r", data)
	o.delay = 3 * time.Millisecond
	c := openCache(t, t.TempDir(), nil)
	srv := front(t, c, map[string]Image{"a": image(o, u, sum, 1)})
	done := make(chan struct{})
	go func() {
		fetch(t, srv.URL+"/?img=a", 0)
		close(done)
	}()
	time.Sleep(50 * time.Millisecond)
	code, b, err := fetch(t, srv.URL+"/?img=a", 3<<20)
	if err != nil || code != 206 || !bytes.Equal(b, data[3<<20:]) {
		t.Fatalf("resume: %d %d %v", code, len(b), err)
	}
	<-done
	if o.reqs.Load() != 1 {
		t.Errorf("origin requests %d", o.reqs.Load())
	}
}

// TestChecksumMismatchDropsEntry: the fill's checksum does not match: the
// entry is dropped and the image is "not cached" (agents go to the origin).
func TestChecksumMismatchDropsEntry(t *testing.T) {
	o := newOrigin(t)
	data := randomBytes(2<<20, 3)
	u, _ := o.add("/bad", data)
	dir := t.TempDir()
	c := openCache(t, dir, nil)
	img := image(o, u, strings.Repeat("ab", 32), 1)
	srv := front(t, c, map[string]Image{"a": img})
	code, b, _ := fetch(t, srv.URL+"/?img=a", 0)
	if code == 200 && bytes.Equal(b, data) {
		// The bytes were streamed before the end; the agent's own
		// checksum refuses them. The entry must be gone now.
	}
	waitFor(t, func() bool { return c.Stats().Mismatches.Load() == 1 })
	code, _, _ = fetch(t, srv.URL+"/?img=a", 0)
	if code != 404 {
		t.Fatalf("after the mismatch: %d, want 404 (not cached)", code)
	}
	if _, err := os.Stat(filepath.Join(dir, Key(img)+".data")); !os.IsNotExist(err) {
		t.Errorf("the data file is still there: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached within 5 s")
}

// TestCustomersApart: the same checksum for two customers: two entries,
// two origin downloads.
func TestCustomersApart(t *testing.T) {
	o := newOrigin(t)
	data := randomBytes(1<<20, 4)
	u, sum := o.add("/x", data)
	c := openCache(t, t.TempDir(), nil)
	srv := front(t, c, map[string]Image{"a": image(o, u, sum, 1), "b": image(o, u, sum, 2)})
	for _, k := range []string{"a", "b", "a", "b"} {
		if code, b, err := fetch(t, srv.URL+"/?img="+k, 0); code != 200 || !bytes.Equal(b, data) || err != nil {
			t.Fatalf("%s: %d %v", k, code, err)
		}
	}
	if o.reqs.Load() != 2 {
		t.Errorf("origin requests %d, want 2 (one per customer)", o.reqs.Load())
	}
	if Key(image(o, u, sum, 1)) == Key(image(o, u, sum, 2)) {
		t.Error("two customers share a key")
	}
}

// TestNotCacheable: no checksum, an unknown checksum type, a non-http URL.
func TestNotCacheable(t *testing.T) {
	c := openCache(t, t.TempDir(), nil)
	for _, img := range []Image{
		{Customer: 1, URL: "http://127.0.0.1/x"},
		{Customer: 1, URL: "http://127.0.0.1/x", ChecksumType: "crc32", Checksum: "abcd"},
		{Customer: 1, URL: "ftp://127.0.0.1/x", ChecksumType: "sha256", Checksum: strings.Repeat("0", 64)},
	} {
		if err := c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), img); !errors.Is(err, ErrNotCached) {
			t.Errorf("%+v: %v", img, err)
		}
	}
}

// TestAddressPolicy: without an allowed prefix, a loopback origin is
// refused (the agents go to the origin themselves), and nothing is fetched.
func TestAddressPolicy(t *testing.T) {
	o := newOrigin(t)
	u, sum := o.add("/p", randomBytes(1<<20, 5))
	c := openCache(t, t.TempDir(), func(cfg *Config) { cfg.Allow = nil })
	srv := front(t, c, map[string]Image{"a": image(o, u, sum, 1)})
	code, _, _ := fetch(t, srv.URL+"/?img=a", 0)
	if code != 404 {
		t.Fatalf("status %d, want 404", code)
	}
	if o.reqs.Load() != 0 {
		t.Errorf("the origin on 127.0.0.1 got %d requests", o.reqs.Load())
	}
	for _, a := range []string{"10.1.2.3", "169.254.169.254", "::1", "fd00::1", "100.64.1.1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1"} {
		if c.addrAllowed(netip.MustParseAddr(a)) {
			t.Errorf("%s allowed", a)
		}
	}
	for _, a := range []string{"8.8.8.8", "2001:4860:4860::8888", "51.68.1.1"} {
		if !c.addrAllowed(netip.MustParseAddr(a)) {
			t.Errorf("%s refused", a)
		}
	}
}

// TestPerHostLimit: with one download per host, a second image of the
// same host waits: its agents get 503 (busy) after QueueWait, and after
// MaxQueue the fill gives up and they are sent to the origin.
func TestPerHostLimit(t *testing.T) {
	o := newOrigin(t)
	u1, s1 := o.add("/one", randomBytes(4<<20, 6))
	u2, s2 := o.add("/two", randomBytes(1<<20, 7))
	o.delay = 40 * time.Millisecond // /one takes ~2.5 s
	c := openCache(t, t.TempDir(), func(cfg *Config) {
		cfg.PerHost, cfg.QueueWait, cfg.MaxQueue = 1, 300*time.Millisecond, 800*time.Millisecond
	})
	srv := front(t, c, map[string]Image{"1": image(o, u1, s1, 1), "2": image(o, u2, s2, 1)})
	go fetch(t, srv.URL+"/?img=1", 0)
	time.Sleep(100 * time.Millisecond)
	code, _, _ := fetch(t, srv.URL+"/?img=2", 0)
	if code != 503 {
		t.Fatalf("second image behind the limit: %d, want 503", code)
	}
	time.Sleep(900 * time.Millisecond)
	code, _, _ = fetch(t, srv.URL+"/?img=2", 0)
	if code != 404 {
		t.Fatalf("after MaxQueue: %d, want 404 (use the origin)", code)
	}
	if c.Stats().Busy.Load() < 1 || c.Stats().FillsFailed.Load() != 1 {
		t.Errorf("busy %d, failed %d", c.Stats().Busy.Load(), c.Stats().FillsFailed.Load())
	}
}

// TestLRUEviction: a budget for two images; a third evicts the least
// recently used, never one being read.
func TestLRUEviction(t *testing.T) {
	o := newOrigin(t)
	imgs := map[string]Image{}
	for i, k := range []string{"a", "b", "c"} {
		u, s := o.add("/"+k, randomBytes(3<<20, uint64(10+i)))
		imgs[k] = image(o, u, s, 1)
	}
	dir := t.TempDir()
	c := openCache(t, dir, func(cfg *Config) { cfg.MaxBytes = 7 << 20 })
	srv := front(t, c, imgs)
	get := func(k string) {
		if code, _, err := fetch(t, srv.URL+"/?img="+k, 0); code != 200 || err != nil {
			t.Fatalf("%s: %d %v", k, code, err)
		}
	}
	get("a")
	waitFor(t, func() bool { return c.Stats().FillsOK.Load() == 1 })
	get("b")
	waitFor(t, func() bool { return c.Stats().FillsOK.Load() == 2 })
	time.Sleep(10 * time.Millisecond)
	get("a") // a is now more recent than b
	get("c")
	waitFor(t, func() bool { return c.Stats().FillsOK.Load() == 3 })
	if c.Stats().Evictions.Load() != 1 {
		t.Fatalf("evictions %d", c.Stats().Evictions.Load())
	}
	if _, err := os.Stat(filepath.Join(dir, Key(imgs["b"])+".data")); !os.IsNotExist(err) {
		t.Error("b (least recently used) was not evicted")
	}
	if _, err := os.Stat(filepath.Join(dir, Key(imgs["a"])+".data")); err != nil {
		t.Error("a was evicted")
	}
	if n, used := c.Usage(); n != 2 || used != 6<<20 {
		t.Errorf("usage %d entries %d bytes", n, used)
	}
	// Too large for the budget: not cached.
	u, s := o.add("/huge", randomBytes(8<<20, 20))
	imgs["huge"] = image(o, u, s, 1)
	if code, _, _ := fetch(t, srv.URL+"/?img=huge", 0); code != 404 {
		t.Errorf("an image over the budget: %d, want 404", code)
	}
}

// TestPartialResume: a cache closed (or killed) mid-fill keeps the
// flushed part; reopened, garbage past it is cut off, and the next request
// resumes the download with a Range request; the result is verified.
func TestPartialResume(t *testing.T) {
	defer func(v int64) { checkpointEvery = v }(checkpointEvery)
	checkpointEvery = 1 << 20
	o := newOrigin(t)
	data := randomBytes(8<<20, 30)
	u, sum := o.add("/big", data)
	o.stopAt = 5<<20 + 12345 // the origin breaks mid-way, for good
	dir := t.TempDir()
	img := image(o, u, sum, 1)
	c, err := Open(Config{Dir: dir, Allow: loopback, QueueWait: time.Second, RetryBase: time.Hour, MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := front(t, c, map[string]Image{"a": img})
	go fetch(t, srv.URL+"/?img=a", 0)
	waitFor(t, func() bool { return o.bytes.Load() >= 5<<20+12345 }) // the cut; the retry waits an hour
	time.Sleep(200 * time.Millisecond)
	c.Close() // as a crash would: the partial entry stays
	srv.Close()
	m, err := readMeta(filepath.Join(dir, Key(img)+".meta"))
	if err != nil || m.Complete || m.Synced < 4<<20 || m.Synced > 5<<20+12345 {
		t.Fatalf("meta after the crash: %+v %v", m, err)
	}
	// Garbage past the flushed length, as a power loss may leave.
	f, _ := os.OpenFile(filepath.Join(dir, Key(img)+".data"), os.O_WRONLY|os.O_APPEND, 0)
	f.Write(bytes.Repeat([]byte{0xee}, 3<<20))
	f.Close()
	o.mu.Lock()
	o.stopAt = 0
	o.mu.Unlock()
	before := o.bytes.Load()
	c2 := openCache(t, dir, nil)
	srv2 := front(t, c2, map[string]Image{"a": img})
	code, b, err := fetch(t, srv2.URL+"/?img=a", 0)
	if err != nil || code != 200 || !bytes.Equal(b, data) {
		t.Fatalf("after the resume: %d, %d bytes, %v, equal %v", code, len(b), err, bytes.Equal(b, data))
	}
	if got := o.bytes.Load() - before; got != int64(len(data))-m.Synced {
		t.Errorf("the resume fetched %d bytes, want %d", got, int64(len(data))-m.Synced)
	}
	if o.ranges.Load() < 1 {
		t.Error("no Range request to the origin")
	}
	waitFor(t, func() bool { return c2.Stats().FillsOK.Load() == 1 })
}

// TestOneProcessPerDir: a second Open of the same directory is refused.
func TestOneProcessPerDir(t *testing.T) {
	dir := t.TempDir()
	openCache(t, dir, nil)
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second open: %v", err)
	}
}

// TestOriginFailsFollowersCut: the origin breaks for good mid-fill:
// followers are cut (they resume elsewhere), and the image is then
// "not cached".
func TestOriginFailsFollowersCut(t *testing.T) {
	o := newOrigin(t)
	u, sum := o.add("/f", randomBytes(4<<20, 40))
	o.stopAt = 1 << 20
	c := openCache(t, t.TempDir(), func(cfg *Config) { cfg.MaxRetries = 1 })
	srv := front(t, c, map[string]Image{"a": image(o, u, sum, 1)})
	code, b, err := fetch(t, srv.URL+"/?img=a", 0)
	if code != 200 || err == nil || len(b) >= 4<<20 {
		t.Fatalf("a follower of a failed fill: %d, %d bytes, err %v (want a cut answer)", code, len(b), err)
	}
	code, _, _ = fetch(t, srv.URL+"/?img=a", int64(len(b)))
	if code != 404 {
		t.Fatalf("resume after the failure: %d, want 404", code)
	}
}

// TestBusyWhenNoByteYet: an origin slow to answer: the agent gets 503
// after QueueWait, not a hang.
func TestBusyWhenNoByteYet(t *testing.T) {
	hold := make(chan struct{})
	slowSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer slowSrv.Close()
	defer close(hold)
	c := openCache(t, t.TempDir(), func(cfg *Config) { cfg.QueueWait = 200 * time.Millisecond })
	srv := front(t, c, map[string]Image{"a": {Customer: 1, URL: slowSrv.URL + "/x", ChecksumType: "sha256", Checksum: strings.Repeat("0", 64)}})
	t0 := time.Now()
	code, _, _ := fetch(t, srv.URL+"/?img=a", 0)
	if code != 503 || time.Since(t0) > 2*time.Second {
		t.Fatalf("status %d after %s", code, time.Since(t0))
	}
	_ = context.Background
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=10-20", "bytes=-5", "bytes=1-2,3-4", "items=0-", "bytes= 7 - ", "bytes=9-3", "bytes=99999999999999999999-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, ok := parseRange(s)
		if ok && (start < 0 || (end >= 0 && end < start)) {
			t.Fatalf("%q: %d-%d", s, start, end)
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/10", "bytes 5-9/*", "bytes 9-5/10", "bytes 0-9/5", "bytes x-y/z", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, total, err := parseContentRange(s)
		if err == nil && (start < 0 || end < start || (total >= 0 && total <= end)) {
			t.Fatalf("%q: %d %d %d", s, start, end, total)
		}
	})
}

func FuzzReadMeta(f *testing.F) {
	f.Add([]byte(`{"version":1,"checksumType":"sha256","checksum":"00","size":10,"complete":true,"synced":10}`))
	f.Add([]byte(`{"version":1,"checksumType":"md5","checksum":"zz","size":-1}`))
	f.Add([]byte(`not json`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "m.meta")
		os.WriteFile(p, b, 0o600)
		m, err := readMeta(p)
		if err == nil && (m.Size < 0 || m.Synced > m.Size || newHash(m.ChecksumType) == nil) {
			t.Fatalf("accepted %+v", m)
		}
	})
}
