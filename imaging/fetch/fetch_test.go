package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/job"
)

const (
	secretValue = "SECRET-TOKEN-xyz"
	secretSig   = "SECRET-SIG-abc"
	secretPass  = "SECRET-PASS-def"
)

// testPayload is a random image of an odd size, shared by the tests.
var testPayload = sync.OnceValue(func() []byte {
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	b := make([]byte, 9<<20+12345)
	_, _ = r.Read(b)
	return b
})

// action is what the test server does for one request.
type action struct {
	status      int    // non-200 status to answer with (no body)
	retryAfter  string // Retry-After header with status
	dropAfter   int64  // >0: send this many body bytes, then abort the connection
	stallAfter  int64  // >0: send this many body bytes, then send nothing
	ignoreRange bool   // answer a Range request with 200 and the whole file
	wrongStart  int64  // >0: answer a Range request with a range starting here
	shortBy     int64  // declare the full length, send this many bytes less
	noLength    bool   // chunked, no Content-Length
	location    string // redirect here (302)
}

type seenReq struct {
	rng, ifRange string
	header       http.Header
	path         string
}

// testServer serves data, honouring "bytes=N-" ranges, and does what plan
// says for request i (0-based).
type testServer struct {
	data []byte
	etag string
	plan func(i int, r *http.Request) action

	mu   sync.Mutex
	reqs []seenReq
}

func (ts *testServer) requests() []seenReq {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]seenReq(nil), ts.reqs...)
}

func (ts *testServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ts.mu.Lock()
	i := len(ts.reqs)
	ts.reqs = append(ts.reqs, seenReq{rng: r.Header.Get("Range"), ifRange: r.Header.Get("If-Range"), header: r.Header.Clone(), path: r.URL.Path})
	ts.mu.Unlock()
	var act action
	if ts.plan != nil {
		act = ts.plan(i, r)
	}
	if act.location != "" {
		http.Redirect(w, r, act.location, http.StatusFound)
		return
	}
	if act.status != 0 {
		if act.retryAfter != "" {
			w.Header().Set("Retry-After", act.retryAfter)
		}
		w.WriteHeader(act.status)
		return
	}
	start := int64(0)
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && !act.ignoreRange {
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
		if err != nil || n >= int64(len(ts.data)) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(ts.data)))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if ir := r.Header.Get("If-Range"); ts.etag == "" || ir == ts.etag {
			start, status = n, http.StatusPartialContent
			shown := start
			if act.wrongStart > 0 {
				shown = act.wrongStart
			}
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", shown, len(ts.data)-1, len(ts.data)))
		}
	}
	body := ts.data[start:]
	if ts.etag != "" {
		w.Header().Set("ETag", ts.etag)
	}
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Type", "application/octet-stream")
	if !act.noLength {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(status)
	f := w.(http.Flusher)
	switch {
	case act.dropAfter > 0:
		_, _ = w.Write(body[:act.dropAfter])
		f.Flush()
		panic(http.ErrAbortHandler)
	case act.stallAfter > 0:
		_, _ = w.Write(body[:act.stallAfter])
		f.Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	case act.shortBy > 0:
		_, _ = w.Write(body[:max(int64(len(body))-act.shortBy, 0)])
		return
	}
	_, _ = w.Write(body)
}

func newTestServer(t *testing.T, plan func(int, *http.Request) action) (*testServer, *httptest.Server) {
	t.Helper()
	ts := &testServer{data: testPayload(), etag: `"v1"`, plan: plan}
	srv := httptest.NewUnstartedServer(ts)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	return ts, srv
}

// secretURL is srv's image URL with credentials and a signed query.
func secretURL(srv *httptest.Server) string {
	u, _ := url.Parse(srv.URL)
	u.User = url.UserPassword("user", secretPass)
	u.Path = "/img.qcow2"
	u.RawQuery = "X-Amz-Signature=" + secretSig + "&X-Amz-Expires=600"
	return u.String()
}

// logBuf captures a test's log output, for secret checks.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func fastOpts(lb *logBuf) Options {
	return Options{
		Headers:        []job.Header{{Name: "X-Auth-Token", Value: secretValue}},
		ConnectTimeout: 3 * time.Second,
		StallTimeout:   3 * time.Second,
		MaxRetries:     3,
		RetryBase:      5 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// assertNoSecrets fails if a secret appears in err (and every error in its
// chain) or in the log.
func assertNoSecrets(t *testing.T, err error, logs string) {
	t.Helper()
	for e := err; e != nil; e = errors.Unwrap(e) {
		for _, sec := range []string{secretValue, secretSig, secretPass, "SECRET"} {
			if strings.Contains(e.Error(), sec) {
				t.Errorf("secret %q in error %q", sec, e.Error())
			}
		}
	}
	if strings.Contains(logs, "SECRET") {
		t.Errorf("secret in logs:\n%s", logs)
	}
}

// readStream reads s to the end, hashing, and returns the bytes and error.
func readStream(s *Stream) ([]byte, string, error) {
	h := sha256.New()
	var buf bytes.Buffer
	_, err := io.Copy(&buf, imaging.HashingReader(s, h))
	return buf.Bytes(), hex.EncodeToString(h.Sum(nil)), err
}

func wantSum() string {
	s := sha256.Sum256(testPayload())
	return hex.EncodeToString(s[:])
}

func TestFetchPlain(t *testing.T) {
	ts, srv := newTestServer(t, nil)
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size() != int64(len(testPayload())) {
		t.Errorf("Size = %d, want %d", s.Size(), len(testPayload()))
	}
	got, sum, err := readStream(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, testPayload()) || sum != wantSum() {
		t.Fatal("payload differs")
	}
	if s.BytesRead() != int64(len(got)) || s.Retries() != 0 {
		t.Errorf("BytesRead %d Retries %d", s.BytesRead(), s.Retries())
	}
	reqs := ts.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	h := reqs[0].header
	if h.Get("X-Auth-Token") != secretValue || h.Get("User-Agent") != "byoi" || h.Get("Accept-Encoding") != "identity" {
		t.Errorf("server saw headers %v", h)
	}
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("Read after end: %v", err)
	}
	assertNoSecrets(t, nil, lb.String())
}

func TestFetchResumeAfterDrops(t *testing.T) {
	first, second := int64(1<<20+7), int64(3<<20+1)
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		switch i {
		case 0:
			return action{dropAfter: first}
		case 1:
			return action{dropAfter: second}
		}
		return action{}
	})
	var lb logBuf
	opts := fastOpts(&lb)
	var retried []string
	opts.OnRetry = func(retry, max int, off int64) { retried = append(retried, fmt.Sprintf("%d/%d@%d", retry, max, off)) }
	var bodyBytes int
	opts.OnBody = func(n int) { bodyBytes += n }
	s, err := Open(t.Context(), secretURL(srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, sum, err := readStream(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, testPayload()) || sum != wantSum() {
		t.Fatalf("payload differs: %d bytes, sum %s", len(got), sum)
	}
	// Each attempt delivered over 1 MiB: the count starts again at 1.
	wantRetried := fmt.Sprintf("1/%d@%d 1/%d@%d", opts.MaxRetries, first, opts.MaxRetries, first+second)
	if g := strings.Join(retried, " "); g != wantRetried {
		t.Errorf("OnRetry calls %q, want %q", g, wantRetried)
	}
	if bodyBytes != len(got) {
		t.Errorf("OnBody counted %d bytes, the stream gave %d", bodyBytes, len(got))
	}
	reqs := ts.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests", len(reqs))
	}
	wantRanges := []string{"", fmt.Sprintf("bytes=%d-", first), fmt.Sprintf("bytes=%d-", first+second)}
	for i, r := range reqs {
		if r.rng != wantRanges[i] {
			t.Errorf("request %d Range %q, want %q", i, r.rng, wantRanges[i])
		}
		if i > 0 && r.ifRange != `"v1"` {
			t.Errorf("request %d If-Range %q", i, r.ifRange)
		}
		if r.header.Get("X-Auth-Token") != secretValue {
			t.Errorf("request %d without the job header", i)
		}
	}
	if s.Retries() != 2 {
		t.Errorf("Retries = %d", s.Retries())
	}
	assertNoSecrets(t, nil, lb.String())
}

func TestFetch500Then200(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		if i == 0 {
			return action{status: 500}
		}
		return action{}
	})
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, sum, err := readStream(s); err != nil || sum != wantSum() {
		t.Fatalf("sum %s err %v", sum, err)
	}
	if n := len(ts.requests()); n != 2 || s.Retries() != 1 {
		t.Errorf("%d requests, %d retries", n, s.Retries())
	}
}

func TestFetch503RetryAfter(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		if i == 0 {
			return action{status: 503, retryAfter: "1"}
		}
		return action{}
	})
	var lb logBuf
	opts := fastOpts(&lb)
	opts.RetryBase = time.Millisecond
	opts.MaxBackoff = 5 * time.Second
	start := time.Now()
	s, err := Open(t.Context(), secretURL(srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if d := time.Since(start); d < 900*time.Millisecond || d > 4*time.Second {
		t.Errorf("Retry-After: 1 waited %v", d)
	}
	if n := len(ts.requests()); n != 2 {
		t.Errorf("%d requests", n)
	}
}

func TestFetchRetriesExhausted(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action { return action{status: 502} })
	var lb logBuf
	opts := fastOpts(&lb)
	_, err := Open(t.Context(), secretURL(srv), opts)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 502 {
		t.Fatalf("err %v", err)
	}
	if n := len(ts.requests()); n != opts.MaxRetries+1 {
		t.Errorf("%d requests, want %d", n, opts.MaxRetries+1)
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetch404Final(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action { return action{status: 404} })
	var lb logBuf
	_, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("err %T %v", err, err)
	}
	// The customer reads OVH's "Could not download image located : URL."
	// before it (agent's TestErrorTable); the URL stays redacted here.
	want := "download " + srv.URL + "/img.qcow2?<redacted>: HTTP 404 Not Found"
	if err.Error() != want {
		t.Errorf("error\n%q, want\n%q", err.Error(), want)
	}
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 {
		t.Errorf("no *StatusError 404 in %v", err)
	}
	if n := len(ts.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetchShortBodyAlways(t *testing.T) {
	_, srv := newTestServer(t, func(i int, r *http.Request) action { return action{shortBy: 100} })
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := readStream(s)
	if err == nil {
		t.Fatal("short body read as success")
	}
	if !errors.Is(err, ErrTruncated) {
		t.Errorf("err %v, want ErrTruncated", err)
	}
	if !bytes.Equal(got, testPayload()[:len(got)]) || len(got) != len(testPayload())-100 {
		t.Errorf("got %d bytes", len(got))
	}
	if _, err2 := s.Read(make([]byte, 10)); err2 == nil || err2 == io.EOF {
		t.Errorf("Read after failure: %v", err2)
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetchChunkedUnknownSize(t *testing.T) {
	_, srv := newTestServer(t, func(i int, r *http.Request) action { return action{noLength: true} })
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size() != -1 {
		t.Errorf("Size = %d, want -1", s.Size())
	}
	if _, sum, err := readStream(s); err != nil || sum != wantSum() {
		t.Fatalf("sum %s err %v", sum, err)
	}
}

func TestFetchChunkedDropResumes(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		if i == 0 {
			return action{noLength: true, dropAfter: 2 << 20}
		}
		return action{}
	})
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, sum, err := readStream(s); err != nil || sum != wantSum() {
		t.Fatalf("sum %s err %v", sum, err)
	}
	if s.Size() != int64(len(testPayload())) {
		t.Errorf("Size after resume = %d (Content-Range total)", s.Size())
	}
	if r := ts.requests(); len(r) != 2 || r[1].rng != fmt.Sprintf("bytes=%d-", 2<<20) {
		t.Errorf("requests %+v", r)
	}
}

// TestFetchChunkedDropAtEnd: a chunked body breaks after its last byte
// (no final chunk); the resume gets 416 "bytes */N" with N the bytes
// received, which means the image is complete.
func TestFetchChunkedDropAtEnd(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		return action{noLength: true, dropAfter: int64(len(testPayload()))}
	})
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, sum, err := readStream(s); err != nil || sum != wantSum() {
		t.Fatalf("sum %s err %v", sum, err)
	}
	if r := ts.requests(); len(r) != 2 || r[1].rng != fmt.Sprintf("bytes=%d-", len(testPayload())) {
		t.Errorf("requests %+v", r)
	}
	if s.Size() != int64(len(testPayload())) {
		t.Errorf("Size after the end = %d", s.Size())
	}
}

func TestFetchStallResumes(t *testing.T) {
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		if i == 0 {
			return action{stallAfter: int64(len(testPayload()) / 2)}
		}
		return action{}
	})
	var lb logBuf
	opts := fastOpts(&lb)
	opts.StallTimeout = 300 * time.Millisecond
	start := time.Now()
	s, err := Open(t.Context(), secretURL(srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, sum, err := readStream(s); err != nil || sum != wantSum() {
		t.Fatalf("sum %s err %v", sum, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
	if r := ts.requests(); len(r) != 2 || r[1].rng != fmt.Sprintf("bytes=%d-", len(testPayload())/2) {
		t.Errorf("requests %+v", r)
	}
	if !strings.Contains(lb.String(), "stalled") {
		t.Errorf("no stall in log:\n%s", lb.String())
	}
	assertNoSecrets(t, nil, lb.String())
}

func TestFetchSlowConsumerIsNoStall(t *testing.T) {
	ts, srv := newTestServer(t, nil)
	var lb logBuf
	opts := fastOpts(&lb)
	opts.StallTimeout = 100 * time.Millisecond
	s, err := Open(t.Context(), secretURL(srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := io.ReadFull(s, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the consumer is busy, not the server
	if _, err := io.Copy(io.Discard, s); err != nil {
		t.Fatal(err)
	}
	if n := len(ts.requests()); n != 1 || s.Retries() != 0 {
		t.Errorf("%d requests, %d retries", n, s.Retries())
	}
}

func TestFetchRangeAnswered200(t *testing.T) {
	_, srv := newTestServer(t, func(i int, r *http.Request) action {
		if i == 0 {
			return action{dropAfter: 1 << 20}
		}
		return action{ignoreRange: true}
	})
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := readStream(s)
	if !errors.Is(err, ErrResumeRefused) {
		t.Fatalf("err %v, want ErrResumeRefused", err)
	}
	if len(got) != 1<<20 || !bytes.Equal(got, testPayload()[:1<<20]) {
		t.Errorf("delivered %d bytes before the error, or wrong bytes", len(got))
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetchRangeWrongStart(t *testing.T) {
	_, srv := newTestServer(t, func(i int, r *http.Request) action {
		if i == 0 {
			return action{dropAfter: 1 << 20}
		}
		return action{wrongStart: 5}
	})
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv), fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := readStream(s); !errors.Is(err, ErrResumeRefused) {
		t.Fatalf("err %v, want ErrResumeRefused", err)
	}
}

func TestFetchTLS(t *testing.T) {
	ts := &testServer{data: testPayload()[:1<<20]}
	srv := httptest.NewUnstartedServer(ts)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	var lb logBuf
	opts := fastOpts(&lb)
	opts.CACertPEM = caPEM
	s, err := Open(t.Context(), secretURL(srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := readStream(s)
	s.Close()
	if err != nil || !bytes.Equal(got, ts.data) {
		t.Fatalf("TLS download: %d bytes, %v", len(got), err)
	}

	opts.CACertPEM = nil
	start := time.Now()
	_, err = Open(t.Context(), secretURL(srv), opts)
	if err == nil || !isTLSVerifyError(err) {
		t.Fatalf("want a verification error, got %v", err)
	}
	if strings.Contains(lb.String(), "retrying") {
		t.Error("a verification failure was retried")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	if len(ts.requests()) != 1 {
		t.Errorf("%d requests reached the handler", len(ts.requests()))
	}
	assertNoSecrets(t, err, lb.String())

	opts.CACertPEM = []byte("not a pem")
	if _, err := Open(t.Context(), secretURL(srv), opts); !errors.Is(err, ErrCACert) {
		t.Errorf("bad CA PEM: %v", err)
	}
}

func TestFetchRedirects(t *testing.T) {
	_, other := newTestServer(t, nil)
	var self string
	ts, srv := newTestServer(t, func(i int, r *http.Request) action {
		switch r.URL.Path {
		case "/same":
			return action{location: self + "/img.qcow2"}
		case "/other":
			return action{location: other.URL + "/img.qcow2?sig=" + secretSig}
		case "/ftp":
			return action{location: "ftp://127.0.0.1/img.qcow2?sig=" + secretSig}
		case "/loop":
			return action{location: "/loop?sig=" + secretSig}
		}
		return action{}
	})
	self = srv.URL
	otherTS := other.Config.Handler.(*testServer)
	var lb logBuf
	opts := fastOpts(&lb)
	opts.Headers = append(opts.Headers, job.Header{Name: "Authorization", Value: "Bearer " + secretValue})

	fetchAll := func(path string) error {
		s, err := Open(t.Context(), srv.URL+path, opts)
		if err != nil {
			return err
		}
		defer s.Close()
		_, sum, err := readStream(s)
		if err == nil && sum != wantSum() {
			t.Errorf("%s: wrong sum", path)
		}
		return err
	}
	if err := fetchAll("/same"); err != nil {
		t.Fatal(err)
	}
	reqs := ts.requests()
	if last := reqs[len(reqs)-1]; last.path != "/img.qcow2" || last.header.Get("X-Auth-Token") != secretValue {
		t.Errorf("same-origin redirect lost the headers: %+v", last)
	}
	if err := fetchAll("/other"); err != nil {
		t.Fatal(err)
	}
	oreqs := otherTS.requests()
	if len(oreqs) != 1 {
		t.Fatalf("other server saw %d requests", len(oreqs))
	}
	if h := oreqs[0].header; h.Get("X-Auth-Token") != "" || h.Get("Authorization") != "" {
		t.Errorf("job headers leaked to another origin: %v", h)
	}
	for _, p := range []string{"/ftp", "/loop"} {
		err := fetchAll(p)
		if !errors.Is(err, ErrRedirect) {
			t.Errorf("%s: err %v, want ErrRedirect", p, err)
		}
		assertNoSecrets(t, err, lb.String())
	}
}

func TestFetchBadURL(t *testing.T) {
	var lb logBuf
	for _, u := range []string{
		"ftp://user:" + secretPass + "@127.0.0.1/img?sig=" + secretSig,
		"file:///etc/passwd?sig=" + secretSig,
		"http://[::1/x?sig=" + secretSig,
		"http:///nohost?sig=" + secretSig,
		"127.0.0.1/img?sig=" + secretSig,
	} {
		_, err := Open(t.Context(), u, fastOpts(&lb))
		if !errors.Is(err, ErrURL) {
			t.Errorf("%s: err %v, want ErrURL", job.RedactURL(u), err)
		}
		assertNoSecrets(t, err, lb.String())
	}
	opts := fastOpts(&lb)
	opts.Headers = []job.Header{{Name: "X-Bad", Value: secretValue + "\r\nX-Injected: 1"}}
	if _, err := Open(t.Context(), "http://127.0.0.1:1/img", opts); !errors.Is(err, ErrURL) {
		t.Errorf("header injection: %v", err)
	} else {
		assertNoSecrets(t, err, lb.String())
	}
	opts.Headers = []job.Header{{Name: "Bad Name", Value: secretValue}}
	if _, err := Open(t.Context(), "http://127.0.0.1:1/img", opts); !errors.Is(err, ErrURL) {
		t.Errorf("bad header name: %v", err)
	}
}

func TestFetchConnectionRefused(t *testing.T) {
	_, srv := newTestServer(t, nil)
	u := secretURL(srv)
	srv.Close() // nothing listens on that port now
	var lb logBuf
	opts := fastOpts(&lb)
	opts.MaxRetries = 2
	_, err := Open(t.Context(), u, opts)
	var de *Error
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "giving up after 3 attempts") {
		t.Fatalf("err %v", err)
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetchConnectTimeout(t *testing.T) {
	// Headers never come: the handler waits.
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	var lb logBuf
	opts := fastOpts(&lb)
	opts.ConnectTimeout = 100 * time.Millisecond
	opts.MaxRetries = 1
	start := time.Now()
	_, err := Open(t.Context(), secretURL(srv), opts)
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetchContextCancel(t *testing.T) {
	_, srv := newTestServer(t, func(i int, r *http.Request) action {
		return action{stallAfter: 1 << 20}
	})
	var lb logBuf
	opts := fastOpts(&lb)
	opts.StallTimeout = 30 * time.Second
	ctx, cancel := context.WithCancel(t.Context())
	s, err := Open(ctx, secretURL(srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, _, err = readStream(s)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel took %v", d)
	}

	// Cancel during a backoff.
	_, srv2 := newTestServer(t, func(i int, r *http.Request) action { return action{status: 500} })
	opts.RetryBase = 20 * time.Second
	opts.MaxBackoff = 20 * time.Second
	ctx2, cancel2 := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel2)
	start = time.Now()
	_, err = Open(ctx2, secretURL(srv2), opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel during backoff took %v", d)
	}
	assertNoSecrets(t, err, lb.String())
}

func TestFetchClose(t *testing.T) {
	_, srv := newTestServer(t, nil)
	var lb logBuf
	s, err := Open(t.Context(), srv.URL, fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(make([]byte, 10)); err == nil || err == io.EOF {
		t.Errorf("Read after Close: %v", err)
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-9/10", 0, 9, 10, true},
		{"bytes 5-9/*", 5, 9, -1, true},
		{"bytes 5-9/9", 0, 0, 0, false},
		{"bytes 9-5/10", 0, 0, 0, false},
		{"bytes */10", 0, 0, 0, false},
		{"items 0-9/10", 0, 0, 0, false},
		{"bytes -1-9/10", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	} {
		s, e, tot, err := ParseContentRange(c.in)
		if (err == nil) != c.ok || c.ok && (s != c.start || e != c.end || tot != c.total) {
			t.Errorf("%q: %d %d %d %v", c.in, s, e, tot, err)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		"-1":                            0,
		"junk":                          0,
		"Thu, 01 Jan 2026 00:00:10 GMT": 10 * time.Second,
		"Wed, 31 Dec 2025 00:00:10 GMT": 0,
	} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("%q: %v, want %v", in, got, want)
		}
	}
}

func TestBackoff(t *testing.T) {
	s := &Stream{opts: Options{RetryBase: 100 * time.Millisecond, MaxBackoff: time.Second}}
	for n := 1; n <= 10; n++ {
		d := s.backoff(n, 0)
		full := min(100*time.Millisecond<<(n-1), time.Second)
		if d < full/2 || d > full {
			t.Errorf("backoff(%d) = %v, want in [%v, %v]", n, d, full/2, full)
		}
	}
	if d := s.backoff(1, 10*time.Second); d != time.Second {
		t.Errorf("Retry-After not capped: %v", d)
	}
	if d := s.backoff(1, 700*time.Millisecond); d != 700*time.Millisecond {
		t.Errorf("Retry-After not honoured: %v", d)
	}
}

func BenchmarkFetch512MiB(b *testing.B) {
	const size = 512 << 20
	block := testPayload()[:1<<20]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for i := 0; i < size/len(block); i++ {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	for _, hashed := range []bool{true, false} {
		name := "sha256"
		if !hashed {
			name = "nohash"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				s, err := Open(b.Context(), srv.URL, Options{})
				if err != nil {
					b.Fatal(err)
				}
				var w io.Writer = io.Discard
				if hashed {
					w = sha256.New()
				}
				n, err := io.CopyBuffer(w, s, make([]byte, 1<<20))
				s.Close()
				if err != nil || n != size {
					b.Fatalf("%d bytes, %v", n, err)
				}
			}
		})
	}
}

// FuzzParseContentRange: a server's Content-Range is untrusted; any answer
// either parses to a sane range or is an error.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 5-9/*", "bytes */100", "bytes 9-5/10", "bytes -1-2/3", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, total, err := ParseContentRange(s)
		if err != nil {
			return
		}
		if start < 0 || end < start || (total >= 0 && end >= total) || total < -1 {
			t.Fatalf("%q parsed to %d-%d/%d", s, start, end, total)
		}
	})
}
