package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/job"
)

// TestImageCacheFirst: an assignment with an image path reads the image
// from the control plane's cache first, with the agent token: the cache is
// busy twice (WarnImageCacheWait), serves a part and breaks (another
// WarnImageCacheWait: its retries are the cache's own), then refuses
// (404): the download goes on from the image's own URL at the byte reached
// (WarnImageCacheFallback), the checksum covers both parts, and the disk
// holds the image. Both codes of the image cache's group that the agent
// shows are triggered here.
func TestImageCacheFirst(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	s := sha256.Sum256(img)
	sum := hex.EncodeToString(s[:])
	origin := serve(t, img, "job-header")
	const cut = 5<<20 + 4321
	var reqs atomic.Int64
	cache := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := reqs.Add(1)
		if r.URL.Path != agentapi.ImagePath("ns1", 7) || r.Header.Get("Authorization") != "Bearer agent-token" || r.Header.Get("X-Token") != "" {
			http.Error(w, "wrong request", http.StatusBadRequest)
			return
		}
		switch n {
		case 1, 2:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
		case 3:
			w.Header().Set("Content-Length", strconv.Itoa(len(img)))
			w.WriteHeader(http.StatusOK)
			w.Write(img[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer cache.Close()
	c, err := NewClient(cache.URL, "ns1", "agent-token", ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := rec.deployer()
	fo := d.Fetch
	fo.MaxRetries = 3
	env := Env{Target: crashcheck.OldSystem(t, 512, 32*mib), Options: Options{Logger: d.Logger}, Report: ReporterFunc(rec.report)}
	env.Fetch = cacheFirst(fo, c, &agentapi.Assignment{DeploymentID: 7, ImagePath: agentapi.ImagePath("ns1", 7)})
	j := &job.Job{ImageURL: origin, ImageType: job.ImageTypeRaw, Checksum: sum, ChecksumType: "sha256", DiskGroupID: 1,
		Headers: []job.Header{{Name: "X-Token", Value: "job-header"}}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, j, env)
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, rec.all())
	}
	if res.Checksum != sum {
		t.Errorf("checksum %q", res.Checksum)
	}
	var waits, fallbacks int
	for _, e := range rec.events {
		switch e.Code {
		case job.WarnImageCacheWait:
			waits++
			if e.Kind != job.KindWarning || e.Step != job.StepDownload || e.Message != job.Text(job.WarnImageCacheWait, []int{1, 2, 1}[min(waits, 3)-1], 3) {
				t.Errorf("wait event %+v", e)
			}
		case job.WarnImageCacheFallback:
			fallbacks++
			if e.Message != job.Text(job.WarnImageCacheFallback, job.HumanBytes(cut)) {
				t.Errorf("fallback event %+v", e)
			}
		}
	}
	if waits != 3 || fallbacks != 1 {
		t.Errorf("%d waits, %d fallbacks\n%s", waits, fallbacks, rec.all())
	}
	got, err := os.ReadFile(env.Target)
	if err != nil {
		t.Fatal(err)
	}
	// The image's region, past the first and last MiB the commit wrote
	// (the GPT tables are its own): the bytes of both sources.
	if !bytes.Equal(got[1*mib:len(img)-1*mib], img[1*mib:len(img)-1*mib]) {
		t.Error("the disk does not hold the image")
	}
	// No path outside the agent API is used as a cache.
	for _, p := range []string{"", "/elsewhere", agentapi.Prefix + "/../x", agentapi.Prefix + "/a?b"} {
		if fo2 := cacheFirst(fo, c, &agentapi.Assignment{ImagePath: p}); len(fo2.Before) != 0 {
			t.Errorf("path %q used as a cache", p)
		}
	}
}
