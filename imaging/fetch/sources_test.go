package fetch

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/byoi/byoi/job"
)

const cacheToken = "SECRET-AGENT-TOKEN-123"

// sourcesOpts puts a "cache" source in front of the origin.
func sourcesOpts(lb *logBuf, cacheURL string, failed *[]string) Options {
	o := fastOpts(lb)
	o.Before = []Source{{Name: "image cache", URL: cacheURL, Headers: []job.Header{{Name: "Authorization", Value: "Bearer " + cacheToken}}}}
	var mu sync.Mutex
	o.OnSourceFailed = func(name string, off int64) {
		mu.Lock()
		defer mu.Unlock()
		*failed = append(*failed, name+"@"+itoa64(off))
	}
	return o
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

// TestSourcesCacheServes: the cache serves the whole image; the origin is
// never asked; each gets only its own headers.
func TestSourcesCacheServes(t *testing.T) {
	cache, csrv := newTestServer(t, nil)
	origin, osrv := newTestServer(t, nil)
	var lb logBuf
	var failed []string
	s, err := Open(context.Background(), secretURL(osrv), sourcesOpts(&lb, csrv.URL+"/image", &failed))
	if err != nil {
		t.Fatal(err)
	}
	b, sum, err := readStream(s)
	if err != nil || sum != wantSum() || !bytes.Equal(b, testPayload()) {
		t.Fatalf("read: %v", err)
	}
	if len(origin.requests()) != 0 || len(failed) != 0 {
		t.Errorf("origin asked %d times, failed %v", len(origin.requests()), failed)
	}
	h := cache.requests()[0].header
	if h.Get("Authorization") != "Bearer "+cacheToken || h.Get("X-Auth-Token") != "" {
		t.Errorf("cache request headers %v", h)
	}
	assertNoSecrets(t, nil, strings.ReplaceAll(lb.String(), cacheToken, "SECRET"))
}

// TestSourcesFallbackAt0: the cache answers 404: the origin serves all of
// it, with the job's headers and not the agent's token.
func TestSourcesFallbackAt0(t *testing.T) {
	_, csrv := newTestServer(t, func(int, *http.Request) action { return action{status: 404} })
	origin, osrv := newTestServer(t, nil)
	var lb logBuf
	var failed []string
	s, err := Open(context.Background(), secretURL(osrv), sourcesOpts(&lb, csrv.URL+"/image", &failed))
	if err != nil {
		t.Fatal(err)
	}
	_, sum, err := readStream(s)
	if err != nil || sum != wantSum() {
		t.Fatalf("read: %v", err)
	}
	if len(failed) != 1 || failed[0] != "image cache@0" {
		t.Errorf("failed %v", failed)
	}
	h := origin.requests()[0].header
	if strings.Contains(h.Get("Authorization"), cacheToken) || h.Get("X-Auth-Token") != secretValue {
		t.Errorf("origin request headers %v", h)
	}
	if strings.Contains(lb.String(), cacheToken) || strings.Contains(lb.String(), secretValue) {
		t.Error("a secret in the log")
	}
}

// TestSourcesFallbackMidway: the cache breaks mid-image and then refuses:
// the origin takes over with a Range request from the byte reached, and the
// consumer's checksum covers both parts exactly once.
func TestSourcesFallbackMidway(t *testing.T) {
	const cut = 3<<20 + 777
	_, csrv := newTestServer(t, func(i int, _ *http.Request) action {
		if i == 0 {
			return action{dropAfter: cut}
		}
		return action{status: 404}
	})
	origin, osrv := newTestServer(t, nil)
	origin.etag = "" // the test server honours a Range without If-Range only then
	var lb logBuf
	var failed []string
	s, err := Open(context.Background(), secretURL(osrv), sourcesOpts(&lb, csrv.URL+"/image", &failed))
	if err != nil {
		t.Fatal(err)
	}
	b, sum, err := readStream(s)
	if err != nil || sum != wantSum() || len(b) != len(testPayload()) {
		t.Fatalf("read: %d bytes, %v", len(b), err)
	}
	if len(failed) != 1 || failed[0] != "image cache@"+itoa64(cut) {
		t.Errorf("failed %v", failed)
	}
	reqs := origin.requests()
	if len(reqs) != 1 || reqs[0].rng != "bytes="+itoa64(cut)+"-" || reqs[0].ifRange != "" {
		t.Errorf("origin requests %+v", reqs)
	}
}

// TestSourcesCacheBusyRetries: 503 with Retry-After from the cache calls
// the source's own OnRetry, then the cache serves.
func TestSourcesCacheBusyRetries(t *testing.T) {
	_, csrv := newTestServer(t, func(i int, _ *http.Request) action {
		if i < 2 {
			return action{status: 503, retryAfter: "0"}
		}
		return action{}
	})
	_, osrv := newTestServer(t, nil)
	var lb logBuf
	var failed []string
	o := sourcesOpts(&lb, csrv.URL+"/image", &failed)
	var cacheRetries, plainRetries int
	o.Before[0].OnRetry = func(int, int, int64) { cacheRetries++ }
	o.OnRetry = func(int, int, int64) { plainRetries++ }
	s, err := Open(context.Background(), secretURL(osrv), o)
	if err != nil {
		t.Fatal(err)
	}
	if _, sum, err := readStream(s); err != nil || sum != wantSum() {
		t.Fatal(err)
	}
	if cacheRetries != 2 || plainRetries != 0 || len(failed) != 0 {
		t.Errorf("cache retries %d, plain %d, failed %v", cacheRetries, plainRetries, failed)
	}
}

// TestSourcesSizeDisagrees: an origin whose size differs from what the
// cache announced is refused, never spliced.
func TestSourcesSizeDisagrees(t *testing.T) {
	cache, csrv := newTestServer(t, func(i int, _ *http.Request) action {
		if i == 0 {
			return action{dropAfter: 1 << 20}
		}
		return action{status: 404}
	})
	cache.data = append(bytes.Clone(testPayload()), 1, 2, 3)
	_, osrv := newTestServer(t, nil)
	var lb logBuf
	var failed []string
	s, err := Open(context.Background(), secretURL(osrv), sourcesOpts(&lb, csrv.URL+"/image", &failed))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = readStream(s)
	if !errors.Is(err, ErrResumeRefused) {
		t.Fatalf("err %v, want ErrResumeRefused", err)
	}
}
