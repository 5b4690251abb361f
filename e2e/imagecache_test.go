package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store/pgstore/pgtest"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/ovh/go-ovh/ovh"
)

// The image cache with the real binaries (issue 28): byoi-api with
// --image-cache, several `byoi agent`s of one customer writing file
// targets, an origin on 127.0.0.1 that counts what it sends.

// countingOrigin serves a raw GPT image at /img (header X-Token required),
// slowed by delay per 256 KiB, and counts requests, bytes and Range starts.
type countingOrigin struct {
	data   []byte
	sum    string
	url    string
	reqs   atomic.Int64
	bytes  atomic.Int64
	mu     sync.Mutex
	ranges []string
	delay  atomic.Int64 // ns per 256 KiB
}

func newCountingOrigin(t *testing.T, size int64, delay time.Duration) *countingOrigin {
	t.Helper()
	raw, err := testimage.GPT(size, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: size - 7*mib, Fill: testimage.FillMixed},
	}, uint64(size))
	if err != nil {
		t.Fatal(err)
	}
	// The fake servers boot by BIOS (no firmware/efi in their sysfs): the
	// image checks want boot code in the MBR (a stub: int 18h).
	copy(raw, []byte{0xfa, 0xcd, 0x18})
	o := &countingOrigin{data: raw}
	s := sha256.Sum256(raw)
	o.sum = hex.EncodeToString(s[:])
	o.delay.Store(int64(delay))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.reqs.Add(1)
		if r.Header.Get("X-Token") != hdrSecret || r.URL.Path != "/img" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		if rg := r.Header.Get("Range"); rg != "" {
			o.mu.Lock()
			o.ranges = append(o.ranges, rg)
			o.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"img-v1"`)
		http.ServeContent(&countW{w, &o.bytes}, r, "", time.Time{}, &slowSeeker{r: bytes.NewReader(raw), delay: &o.delay})
	}))
	t.Cleanup(srv.Close)
	o.url = srv.URL + "/img?X-Sig=QUERY-SECRET-e2e"
	return o
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

type slowSeeker struct {
	r     *bytes.Reader
	delay *atomic.Int64
}

func (s *slowSeeker) Read(p []byte) (int, error) {
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	time.Sleep(time.Duration(s.delay.Load()))
	return s.r.Read(p)
}

func (s *slowSeeker) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

// cachedBody is a legacy body without ConfigDrive: every disk deployed with
// it ends byte-identical.
func cachedBody(o *countingOrigin) map[string]any {
	return map[string]any{"URL": o.url, "type": "raw", "checkSum": o.sum, "checkSumType": "sha256",
		"httpHeader": []map[string]string{{"key": "X-Token", "value": hdrSecret}}}
}

// runAgent starts `byoi agent --once` against url.
func runAgent(t *testing.T, url, server, token, disk string) *proc {
	return start(t, bins.byoi, "agent", "--url", url, "--server", server, "--token", token, "--disk", disk,
		"--no-reboot", "--once", "--report-interval", "200ms", "--heartbeat", "1s", "-v", "--cmdline", "/dev/null")
}

// sameDisks checks every disk is byte-identical to the first and holds the
// image between its first and last MiB (the tables around are the
// deployment's: the backup GPT moved to the disk's end).
func sameDisks(t *testing.T, o *countingOrigin, disks []string) {
	t.Helper()
	var first [32]byte
	for i, d := range disks {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if i == 0 {
			first = sum
			if !bytes.Equal(b[mib:len(o.data)-mib], o.data[mib:len(o.data)-mib]) {
				t.Errorf("%s does not hold the image", d)
			}
		} else if sum != first {
			t.Errorf("%s differs from %s", d, disks[0])
		}
	}
}

// cacheAPI starts byoi-api with an image cache (loopback origins allowed)
// and metrics.
func cacheAPI(t *testing.T, cacheDir string) (*api, string) {
	mport := freePort(t)
	a := newAPI(t, "--image-cache", cacheDir, "--image-cache-allow", "127.0.0.0/8", "--metrics-listen", "127.0.0.1:"+strconv.Itoa(mport))
	return a, "http://127.0.0.1:" + strconv.Itoa(mport) + "/metrics"
}

// TestImageCacheAgents: four real agents of one customer deploy the same
// image through one byoi-api with --image-cache: the origin sends it once,
// every disk ends byte-identical, and /metrics says so.
func TestImageCacheAgents(t *testing.T) {
	t.Parallel()
	o := newCountingOrigin(t, 48*mib, 15*time.Millisecond)
	a, metricsURL := cacheAPI(t, t.TempDir())
	c := a.addCustomer("acme")
	cl := a.signed(c)
	var disks []string
	var agents []*proc
	for i := 0; i < 4; i++ {
		name := fmt.Sprintf("c%d", i)
		tok := a.addServer(name, "acme")
		if err := cl.Post("/dedicated/server/"+name+"/bringYourOwnImage", cachedBody(o), nil); err != nil {
			t.Fatal(err)
		}
		disk := testutil.SparseFile(t, 64*mib)
		disks = append(disks, disk)
		agents = append(agents, runAgent(t, a.url, name, tok, disk))
	}
	for i, ag := range agents {
		if code := ag.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("agent %d exit %d", i, code)
		}
		if st := getStatus(t, cl, fmt.Sprintf("c%d", i)); st.Status != "done" {
			t.Fatalf("c%d: %+v", i, st)
		}
	}
	if n := o.reqs.Load(); n != 1 {
		t.Errorf("the origin got %d requests, want 1", n)
	}
	if n := o.bytes.Load(); n != int64(len(o.data)) {
		t.Errorf("the origin sent %d bytes, want %d", n, len(o.data))
	}
	sameDisks(t, o, disks)
	text := httpGet(t, metricsURL)
	for series, want := range map[string]float64{
		`byoi_image_cache_origin_bytes_total`:       float64(len(o.data)),
		`byoi_image_cache_served_bytes_total`:       4 * float64(len(o.data)),
		`byoi_image_cache_fills_total{result="ok"}`: 1,
		`byoi_fleet_tasks{status="done"}`:           4,
	} {
		if got, ok := metricValue(text, series); !ok || got != want {
			t.Errorf("/metrics: %s = %v (found %v), want %v", series, got, ok, want)
		}
	}
	for _, ag := range agents {
		if lines(ag.out.String(), "download source given up") != 0 {
			t.Errorf("an agent fell back to the origin:\n%s", tail(ag.out.String(), 20))
		}
	}
	noSecrets(t, append(logsOf(a), agentsOut(agents)...), hdrSecret, "QUERY-SECRET-e2e")
}

// metricValue finds a series' value in Prometheus text.
func metricValue(text, series string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func logsOf(a *api) []string {
	var out []string
	for _, l := range a.logs {
		out = append(out, l.String())
	}
	return out
}

func agentsOut(ps []*proc) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.out.String())
	}
	return out
}

// TestImageCacheKillAPI: kill -9 of byoi-api while it fills the cache
// (past its first 64 MiB checkpoint): restarted on the same cache
// directory, it resumes the partial entry from the checkpoint (a Range
// request to the origin), the agents resume from it, and every disk ends
// byte-identical. The origin sent less than twice the image.
func TestImageCacheKillAPI(t *testing.T) {
	t.Parallel()
	o := newCountingOrigin(t, 112*mib, 20*time.Millisecond) // ~9 s for the whole image
	dir := t.TempDir()
	a, _ := cacheAPI(t, dir)
	c := a.addCustomer("acme")
	cl := a.signed(c)
	var disks []string
	var agents []*proc
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("k%d", i)
		tok := a.addServer(name, "acme")
		if err := cl.Post("/dedicated/server/"+name+"/bringYourOwnImage", cachedBody(o), nil); err != nil {
			t.Fatal(err)
		}
		disk := testutil.SparseFile(t, 128*mib)
		disks = append(disks, disk)
		agents = append(agents, runAgent(t, a.url, name, tok, disk))
	}
	deadline := time.Now().Add(time.Minute)
	for o.bytes.Load() < 72*mib && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if o.bytes.Load() < 72*mib {
		t.Fatalf("the cache did not fill: %d bytes", o.bytes.Load())
	}
	a.proc.kill()
	killedAt := o.bytes.Load()
	time.Sleep(time.Second)
	a.serve("--image-cache", dir, "--image-cache-allow", "127.0.0.0/8")
	for i, ag := range agents {
		if code := ag.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("agent %d exit %d", i, code)
		}
		if st := getStatus(t, cl, fmt.Sprintf("k%d", i)); st.Status != "done" {
			t.Fatalf("k%d: %+v", i, st)
		}
	}
	sameDisks(t, o, disks)
	o.mu.Lock()
	ranges := append([]string(nil), o.ranges...)
	o.mu.Unlock()
	if len(ranges) == 0 || ranges[0] != "bytes=67108864-" {
		t.Errorf("the restarted cache did not resume from its checkpoint: ranges %v", ranges)
	}
	if total := o.bytes.Load(); total >= 2*int64(len(o.data)) {
		t.Errorf("the origin sent %d bytes for a %d-byte image (killed at %d)", total, len(o.data), killedAt)
	}
	t.Logf("origin: %d requests, %d bytes (image %d, killed at %d), ranges %v", o.reqs.Load(), o.bytes.Load(), len(o.data), killedAt, ranges)
	noSecrets(t, logsOf(a), hdrSecret, "QUERY-SECRET-e2e")
}

// TestImageCacheTwoInstances: two byoi-api on one PostgreSQL, each with its
// own cache directory, agents spread over both: per-instance caches, so the
// origin sends the image at most once per instance (here exactly twice),
// and every disk ends byte-identical.
func TestImageCacheTwoInstances(t *testing.T) {
	t.Parallel()
	build(t)
	dsn := pgtest.DSN(t)
	o := newCountingOrigin(t, 40*mib, 10*time.Millisecond)
	keyFile := filepath.Join(t.TempDir(), "byoi.key")
	adm := func(args ...string) map[string]string {
		a := &api{t: t, db: dsn}
		return a.admin(append(args, "--key-file", keyFile)...)
	}
	adm("customer", "add", "acme")
	cr := adm("credential", "add", "--customer", "acme")
	var urls []string
	for i := 0; i < 2; i++ {
		a := &api{t: t, db: dsn, port: freePort(t)}
		a.url = "http://127.0.0.1:" + strconv.Itoa(a.port)
		a.serve("--key-file", keyFile, "--image-cache", t.TempDir(), "--image-cache-allow", "127.0.0.0/8")
		urls = append(urls, a.url)
	}
	cl, err := ovh.NewClient(urls[0]+"/1.0", cr["applicationKey"], cr["applicationSecret"], cr["consumerKey"])
	if err != nil {
		t.Fatal(err)
	}
	var disks []string
	var agents []*proc
	for i := 0; i < 4; i++ {
		name := fmt.Sprintf("p%d", i)
		tok := adm("server", "add", name, "--customer", "acme")["agentToken"]
		if err := cl.Post("/dedicated/server/"+name+"/bringYourOwnImage", cachedBody(o), nil); err != nil {
			t.Fatal(err)
		}
		disk := testutil.SparseFile(t, 64*mib)
		disks = append(disks, disk)
		agents = append(agents, runAgent(t, urls[i%2], name, tok, disk))
	}
	for i, ag := range agents {
		if code := ag.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("agent %d exit %d", i, code)
		}
	}
	if n := o.reqs.Load(); n != 2 {
		t.Errorf("the origin got %d requests, want 2 (one per instance)", n)
	}
	if n := o.bytes.Load(); n != 2*int64(len(o.data)) {
		t.Errorf("the origin sent %d bytes, want twice the image (%d)", n, 2*len(o.data))
	}
	sameDisks(t, o, disks)
}
