// Package fetch downloads an image over HTTP(S) for byoi: a Stream that
// retries, resumes with byte ranges, times out a stalled or too slow
// transfer and never shows a secret (URL credentials, query strings, header
// values) in an error or a log; the TLS roots (the system's, a fallback
// bundle, a CA the caller adds); and a RangeReader for inspecting an image
// without downloading it. Its errors are typed (*Error wraps every failure
// with the redacted URL); what a customer reads is decided by the caller.
package fetch

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/internal/httprange"
	"github.com/byoi/byoi/job"
)

// Defaults of Options.
const (
	defaultConnectTimeout = 30 * time.Second
	defaultStallTimeout   = 60 * time.Second
	defaultSpeedLimit     = 1024 // bytes/s
	defaultSpeedTime      = 60 * time.Second
	defaultMaxRetries     = 8
	defaultRetryBase      = time.Second
	defaultMaxBackoff     = 30 * time.Second
	maxRedirects          = 10
	// progressResets is how much an attempt must deliver before the
	// consecutive-failure count starts again from zero: a flaky link on a
	// 100 GiB image must not run out of retries, yet a server that drops
	// every connection after a few bytes still gives up.
	progressResets = 1 << 20
)

// Options configures Open. The zero value is usable.
type Options struct {
	// Headers are sent with every request to the image's host. Their
	// values are secrets: never logged, never in an error. They are not
	// sent after a redirect to another origin (see checkRedirect).
	Headers []job.Header
	// CACertPEM holds extra roots (--ca-cert), added to the system roots
	// and the embedded fallback roots (see RootCAs).
	CACertPEM []byte
	// ConnectTimeout bounds dial + TLS handshake + response headers of one
	// attempt. Default 30 s.
	ConnectTimeout time.Duration
	// SpeedLimit and SpeedTime: a transfer slower than SpeedLimit bytes/s
	// over SpeedTime of waiting for the server is a broken transfer, which
	// is resumed (curl's --speed-limit/--speed-time). A server trickling a
	// byte now and then never trips StallTimeout, but trips this. Only the
	// time spent waiting for the body counts: a slow consumer is not a
	// slow server. Defaults 1024 bytes/s over 60 s; SpeedLimit < 0 turns
	// the check off.
	SpeedLimit int64
	SpeedTime  time.Duration
	// StallTimeout: no body byte for this long is a broken transfer, which
	// is then resumed. Default 60 s.
	StallTimeout time.Duration
	// MaxRetries is how many attempts may follow a failed one (connection
	// errors, 408, 429, 5xx, stalls, truncated bodies). The count restarts
	// when an attempt delivered at least 1 MiB. Default 8; negative means 0.
	MaxRetries int
	// RetryBase is the first backoff; it doubles per consecutive failure,
	// with jitter, up to MaxBackoff. Default 1 s.
	RetryBase time.Duration
	// MaxBackoff caps the backoff and a server's Retry-After. Default 30 s.
	MaxBackoff time.Duration
	// Logger receives attempts and retries (URLs redacted, no header
	// values). Nil discards.
	Logger *slog.Logger
	// OnRetry, when set, is called before each retry's wait with the
	// retry's number, MaxRetries and the byte offset the download resumes
	// at (the agent tells the customer; its watchdog sees the download is
	// alive). It gets no error text: the log has the scrubbed cause.
	OnRetry func(retry, maxRetries int, offset int64)
	// OnBody, when set, is called after every read that got body bytes,
	// with their count: the agent's watchdog sees a slow download move
	// before a whole pipeline buffer is full. It must be cheap.
	OnBody func(n int)
	// Transport replaces the tuned transport of NewTransport (tests). With
	// it, CACertPEM is ignored.
	Transport http.RoundTripper
	// Before lists sources tried before the image's own URL, in order (the
	// control plane's image cache): see Source (sources.go).
	Before []Source
	// OnSourceFailed, when set, is called when a source of Before is given
	// up and the next one takes over at offset.
	OnSourceFailed func(name string, offset int64)
}

func (o *Options) normalize() {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = defaultConnectTimeout
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = defaultStallTimeout
	}
	if o.SpeedLimit == 0 {
		o.SpeedLimit = defaultSpeedLimit
	}
	if o.SpeedTime <= 0 {
		o.SpeedTime = defaultSpeedTime
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = defaultMaxRetries
	} else if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	if o.RetryBase <= 0 {
		o.RetryBase = defaultRetryBase
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = defaultMaxBackoff
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Error is every error of Open and Stream.Read other than io.EOF.
// URL is redacted (job.RedactURL) and Err never holds a header value, a query
// string or URL credentials.
type Error struct {
	URL string
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "download " + e.URL
	}
	return "download " + e.URL + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// StatusError is a final HTTP status: a 4xx other than 408/429, a
// redirect without a usable Location, or a 5xx/408/429 after the retries.
type StatusError struct {
	Code   int
	Status string // "404 Not Found"
}

func (e *StatusError) Error() string { return "HTTP " + e.Status }

// Sentinels of download failures that retrying cannot fix, or that ended
// the retries; match them with errors.Is.
var (
	// ErrResumeRefused: the server answered a Range request with the
	// whole file (200) or with another range, or the file changed
	// between attempts. Reading again from byte 0 would feed the consumer's
	// hash twice, so the download fails instead.
	ErrResumeRefused = errors.New("server cannot resume the download")
	// ErrTruncated: the transfer kept ending before Content-Length.
	ErrTruncated = errors.New("transfer ended early")
	// ErrTooSlow: the body arrived slower than SpeedLimit over SpeedTime.
	ErrTooSlow = errors.New("transfer too slow")
	// ErrStalled: no body byte arrived for StallTimeout.
	ErrStalled = errors.New("transfer stalled")
	// ErrRedirect: a redirect to a non-http(s) URL, or too many redirects.
	ErrRedirect = errors.New("redirect refused")
	// ErrURL: the URL is not a valid http(s) URL.
	ErrURL = errors.New("invalid image URL")
)

var (
	errConnectTimeout = errors.New("no response headers within the connect timeout")
	errClosed         = errors.New("stream closed")
	errComplete       = errors.New("nothing left to download")
)

// retryable marks an error that another attempt may fix.
type retryable struct {
	err        error
	retryAfter time.Duration // from the server, 0 if none
}

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

// Stream is an image download, read sequentially. It resumes broken
// transfers with Range requests from the byte reached, so every byte is
// delivered exactly once. Read and Close are for one goroutine; Size,
// BytesRead and Retries may be called from any.
type Stream struct {
	ctx      context.Context
	rawURL   string
	redacted string
	opts     Options
	log      *slog.Logger
	client   *http.Client
	own      *http.Transport // closed with the stream; nil if injected
	secrets  []string        // header values, URL query and credentials

	size     atomic.Int64
	offset   atomic.Int64
	retries  atomic.Int64
	started  bool   // a first 200 was seen: size and validators are known
	etag     string // strong ETag of the first response
	lastMod  string
	failures int         // consecutive failed attempts
	src      sourceState // the sources before the image's own URL (sources.go)

	body       io.ReadCloser
	bodyStart  int64 // offset when body was opened
	cancel     context.CancelCauseFunc
	actx       context.Context
	stallTimer *time.Timer
	// The speed window of the current body: time spent waiting in its
	// Read, and the bytes it delivered meanwhile.
	waited   time.Duration
	winBytes int64

	err error // sticky: io.EOF, or the final *Error

	// Close may come from another goroutine while Read waits on the body
	// (WriteRaw abandons a blocked reader after a failure, and its caller
	// closes the stream): Close then only cancels (stop), and the Read in
	// progress cleans up when it returns.
	stop    context.CancelFunc
	closeMu sync.Mutex
	reading bool
	closed  bool
}

// Open starts downloading rawURL (http or https) and returns once the
// server answered 200 (after retries). The Stream is read sequentially; on
// a broken transfer it transparently resumes with a Range request from the
// byte reached (checking 206 and the Content-Range start, and the
// ETag/Last-Modified via If-Range when the server gave them). A 200 to a
// Range request means a restart, which would deliver bytes twice: that is
// an error, never a silent re-read from 0. So a consumer hashing the bytes
// it reads never hashes anything twice.
func Open(ctx context.Context, rawURL string, opts Options) (*Stream, error) {
	opts.normalize()
	sctx, stop := context.WithCancel(ctx)
	s := &Stream{
		ctx:      sctx,
		stop:     stop,
		rawURL:   rawURL,
		redacted: job.RedactURL(rawURL),
		opts:     opts,
		log:      opts.Logger,
	}
	s.size.Store(-1)
	s.collectSecrets()
	s.initSources()
	if err := s.setup(); err != nil {
		stop()
		return nil, s.downloadError(err)
	}
	s.log.Info("download starting", "url", s.redacted)
	if err := s.connect(); err != nil {
		s.closeIdle()
		stop()
		return nil, s.downloadError(err)
	}
	s.log.Info("download connected", "url", s.redacted, "size", s.size.Load())
	return s, nil
}

// setup validates the URL and headers and builds the client.
func (s *Stream) setup() error {
	u, err := url.Parse(s.rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text carries the URL
		}
		return fmt.Errorf("%w: %w", ErrURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: scheme %q is not http or https", ErrURL, u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("%w: no host", ErrURL)
	}
	for _, h := range s.opts.Headers {
		if !job.ValidHeaderName(h.Name) {
			return fmt.Errorf("%w: invalid HTTP header name %q", ErrURL, h.Name)
		}
		if !job.ValidHeaderValue(h.Value) {
			return fmt.Errorf("%w: invalid value for HTTP header %q", ErrURL, h.Name)
		}
	}
	rt := s.opts.Transport
	if rt == nil {
		t, err := NewTransport(s.opts.CACertPEM, s.opts.ConnectTimeout)
		if err != nil {
			return err
		}
		s.own, rt = t, t
	}
	s.client = &http.Client{Transport: rt, CheckRedirect: s.checkRedirect}
	return nil
}

// collectSecrets lists what must never appear in an error or a log line.
func (s *Stream) collectSecrets() {
	for _, h := range s.opts.Headers {
		s.secrets = append(s.secrets, h.Value)
	}
	if u, err := url.Parse(s.rawURL); err == nil {
		s.secrets = append(s.secrets, u.RawQuery, u.Fragment)
		if u.User != nil {
			s.secrets = append(s.secrets, u.User.String())
			if p, ok := u.User.Password(); ok {
				s.secrets = append(s.secrets, p)
			}
		}
	}
	if i := strings.IndexAny(s.rawURL, "?#"); i >= 0 {
		s.secrets = append(s.secrets, s.rawURL[i+1:])
	}
}

// checkRedirect follows at most 10 redirects, only to http(s). Go's client
// copies every request header to the redirected request and strips only
// Authorization, Cookie and the like when the domain changes; our custom
// headers (tokens) would go to whatever host the redirect names. So the
// job's headers are removed unless the redirect stays on the same origin
// (scheme-compatible, same host and port), and never sent in clear after
// an https to http downgrade. Pre-signed object storage URLs, the usual
// redirect target, carry their credentials in the URL and need no header.
func (s *Stream) checkRedirect(req *http.Request, via []*http.Request) error {
	stripped, err := CheckRedirect(req, via, s.opts.Headers)
	if stripped {
		s.log.Debug("redirected to another origin: job headers not sent", "url", job.RedactURL(req.URL.String()))
	}
	return err
}

// CheckRedirect is the redirect policy of every request byoi makes for an
// image (see Stream.checkRedirect): at most 10 redirects, only to http(s),
// and the job's headers removed (stripped true) unless the redirect stays
// on the first request's origin.
func CheckRedirect(req *http.Request, via []*http.Request, headers []job.Header) (stripped bool, err error) {
	// Go's client sets Referer to the previous URL on a redirect: the
	// next host would receive the original URL, query (pre-signed
	// signature) included. Never send one.
	req.Header.Del("Referer")
	if len(via) >= maxRedirects {
		return false, fmt.Errorf("%w: stopped after %d redirects", ErrRedirect, maxRedirects)
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return false, fmt.Errorf("%w: redirect to scheme %q", ErrRedirect, req.URL.Scheme)
	}
	if sameOrigin(via[0].URL, req.URL) {
		return false, nil
	}
	for _, h := range headers {
		name := textproto.CanonicalMIMEHeaderKey(h.Name)
		if controlledHeader(name) {
			continue
		}
		req.Header.Del(name)
		if name == "Host" {
			req.Host = ""
		}
	}
	return len(headers) > 0, nil
}

// sameOrigin reports whether b has a's scheme, host and port, or is an
// http to https upgrade of it on the same host and port.
func sameOrigin(a, b *url.URL) bool {
	if a.Scheme == "https" && b.Scheme != "https" {
		return false
	}
	return strings.EqualFold(a.Hostname(), b.Hostname()) && effectivePort(a) == effectivePort(b)
}

func effectivePort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

// SetRequestHeaders puts the job's headers on an image request: Host sets
// the request's host, a User-Agent replaces byoi's, and the headers byoi
// controls (Range, If-Range, Accept-Encoding) are ignored. Encoding is
// identity: offsets and hashes are about the file's bytes.
func SetRequestHeaders(req *http.Request, headers []job.Header) {
	req.Header.Set("User-Agent", "byoi")
	for _, h := range headers {
		name := textproto.CanonicalMIMEHeaderKey(h.Name)
		if controlledHeader(name) {
			continue
		}
		if name == "Host" {
			req.Host = h.Value
			continue
		}
		if name == "User-Agent" {
			req.Header.Del(name)
		}
		req.Header.Add(name, h.Value)
	}
	req.Header.Set("Accept-Encoding", "identity")
}

// controlledHeader names the headers Open sets itself.
func controlledHeader(canonical string) bool {
	switch canonical {
	case "Range", "If-Range", "Accept-Encoding":
		return true
	}
	return false
}

// connect makes attempts until one delivers a usable response, a final
// error occurs, or the retries run out.
func (s *Stream) connect() error {
	for {
		err := s.attempt()
		if err == nil {
			return nil
		}
		if err := s.retryWait(err); err != nil {
			if s.nextSource(err) {
				continue
			}
			return err
		}
	}
}

// retryWait returns err itself when it is final; for a retryable error it
// counts the retry, waits the backoff and returns nil, or returns the final
// error when the retries are exhausted or ctx is done.
func (s *Stream) retryWait(err error) error {
	if cerr := s.ctx.Err(); cerr != nil {
		return cerr
	}
	var r *retryable
	if !errors.As(err, &r) {
		return err
	}
	if s.failures >= s.opts.MaxRetries {
		s.log.Warn("download failed, no retries left", "url", s.redacted, "attempts", s.failures+1, "err", s.scrub(err.Error()))
		return fmt.Errorf("giving up after %d attempts: %w", s.failures+1, r.err)
	}
	s.failures++
	s.retries.Add(1)
	wait := s.backoff(s.failures, r.retryAfter)
	s.log.Warn("download attempt failed, retrying", "url", s.redacted, "offset", s.offset.Load(),
		"retry", s.failures, "max_retries", s.opts.MaxRetries, "wait", wait, "err", s.scrub(err.Error()))
	if f := s.onRetry(); f != nil {
		f(s.failures, s.opts.MaxRetries, s.offset.Load())
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return s.ctx.Err()
	case <-t.C:
		return nil
	}
}

// backoff is RetryBase*2^(n-1) with jitter (between half and all of it),
// capped at MaxBackoff; a server's Retry-After wins when longer (capped
// too).
func (s *Stream) backoff(n int, retryAfter time.Duration) time.Duration {
	d := s.opts.RetryBase
	for i := 1; i < n && d < s.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.opts.MaxBackoff)
	d = d/2 + rand.N(d/2+1)
	if retryAfter > d {
		d = min(retryAfter, s.opts.MaxBackoff)
	}
	return d
}

// attempt sends one request from the current offset. On success s.body is
// the response body, positioned at s.offset.
func (s *Stream) attempt() error {
	off := s.offset.Load()
	actx, cancel := context.WithCancelCause(s.ctx)
	connTimer := time.AfterFunc(s.opts.ConnectTimeout, func() { cancel(errConnectTimeout) })
	fail := func(err error) error {
		connTimer.Stop()
		cancel(nil)
		return err
	}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, s.rawURL, nil)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", ErrURL, unwrapURLError(err)))
	}
	SetRequestHeaders(req, s.opts.Headers)
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		if s.etag != "" {
			req.Header.Set("If-Range", s.etag)
		} else if s.lastMod != "" {
			req.Header.Set("If-Range", s.lastMod)
		}
		s.log.Debug("download resuming", "url", s.redacted, "offset", off)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fail(s.classifyTransportError(actx, err))
	}
	if err := s.checkResponse(resp, off); err != nil {
		// Drain a little so the connection can be reused, then close.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
		return fail(err)
	}
	connTimer.Stop()
	if context.Cause(actx) == errConnectTimeout {
		resp.Body.Close()
		return fail(&retryable{err: fmt.Errorf("%w (%s)", errConnectTimeout, s.opts.ConnectTimeout)})
	}
	s.body, s.bodyStart, s.actx, s.cancel = resp.Body, off, actx, cancel
	s.waited, s.winBytes = 0, 0
	// The stall timer runs only while Read waits on the body (see Read): a
	// consumer that is slow to call Read is not a stalled server.
	s.stallTimer = time.AfterFunc(s.opts.StallTimeout, func() { cancel(ErrStalled) })
	s.stallTimer.Stop()
	return nil
}

// checkResponse accepts a 200 from offset 0 or a 206 that starts at off,
// and sets the size and validators from the first response.
func (s *Stream) checkResponse(resp *http.Response, off int64) error {
	switch {
	case resp.StatusCode == http.StatusOK:
		if off > 0 {
			return fmt.Errorf("%w: the server answered the Range request from byte %d with the whole file (HTTP %s)", ErrResumeRefused, off, StatusText(resp.StatusCode))
		}
		if !s.started {
			s.started = true
			s.size.Store(resp.ContentLength)
			if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
				s.etag = et
			}
			s.lastMod = resp.Header.Get("Last-Modified")
			return nil
		}
		if size := s.size.Load(); size >= 0 && resp.ContentLength != size {
			return fmt.Errorf("%w: the file changed size between attempts (%d, then %d bytes)", ErrResumeRefused, size, resp.ContentLength)
		}
		return nil
	case resp.StatusCode == http.StatusPartialContent && off > 0:
		start, end, total, err := ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fmt.Errorf("%w: %w", ErrResumeRefused, err)
		}
		if start != off {
			return fmt.Errorf("%w: asked for bytes from %d, got a range starting at %d", ErrResumeRefused, off, start)
		}
		size := s.size.Load()
		if total >= 0 && size >= 0 && total != size {
			return fmt.Errorf("%w: the file changed size between attempts (%d, then %d bytes)", ErrResumeRefused, size, total)
		}
		if end >= 0 && resp.ContentLength >= 0 && resp.ContentLength != end-start+1 {
			return fmt.Errorf("%w: Content-Length %d does not match Content-Range %d-%d", ErrResumeRefused, resp.ContentLength, start, end)
		}
		if et := resp.Header.Get("ETag"); s.etag != "" && et != "" && et != s.etag {
			return fmt.Errorf("%w: the file changed between attempts (ETag)", ErrResumeRefused)
		}
		if size < 0 && total >= 0 {
			s.size.Store(total)
		}
		return nil
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests,
		resp.StatusCode >= 500 && resp.StatusCode <= 599:
		return &retryable{err: statusError(resp), retryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		// "bytes */N" with N the offset reached: a body of unknown length
		// broke after its last byte; nothing is missing.
		if tot, ok := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes */"); ok && off > 0 && s.size.Load() < 0 {
			if n, err := strconv.ParseInt(tot, 10, 64); err == nil && n == off {
				return errComplete
			}
		}
		return fmt.Errorf("%w: %w", ErrResumeRefused, statusError(resp))
	}
	return statusError(resp)
}

// statusError names an HTTP answer by its code and the standard reason
// phrase only. The server's own reason phrase and body are never shown: a
// server may echo there a piece of what it was sent (a token), and whole
// header values are the only thing scrub can recognise.
func statusError(resp *http.Response) *StatusError {
	return &StatusError{Code: resp.StatusCode, Status: StatusText(resp.StatusCode)}
}

// StatusText is "404 Not Found": the code and its standard phrase.
func StatusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return strconv.Itoa(code) + " " + t
	}
	return strconv.Itoa(code)
}

// ParseContentRange parses a Content-Range header, "bytes start-end/total"
// (RFC 9110 section 14.4); an unknown total ("*") is returned as -1. The
// rule is internal/httprange's, shared with the control plane's image cache.
func ParseContentRange(v string) (start, end, total int64, err error) {
	return httprange.Parse(v)
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 if absent/bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > 86400 {
			n = 86400
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// classifyTransportError turns a client.Do error into a final or a
// retryable error, without the URL (*url.Error prints it whole).
func (s *Stream) classifyTransportError(actx context.Context, err error) error {
	if cerr := s.ctx.Err(); cerr != nil {
		return cerr
	}
	inner := unwrapURLError(err)
	if context.Cause(actx) == errConnectTimeout {
		return &retryable{err: fmt.Errorf("%w (%s)", errConnectTimeout, s.opts.ConnectTimeout)}
	}
	var dnsErr *net.DNSError
	switch {
	case errors.Is(inner, ErrRedirect), errors.Is(inner, ErrURL):
		return inner
	case isTLSVerifyError(inner):
		return inner
	case errors.As(inner, &dnsErr) && dnsErr.IsNotFound:
		return inner
	}
	var ce x509.ConstraintViolationError
	if errors.As(inner, &ce) {
		return inner
	}
	return &retryable{err: inner}
}

// unwrapURLError returns the cause of a *url.Error, dropping its URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

// Read reads the next bytes of the image. It returns io.EOF only when
// every byte arrived; a transfer that keeps ending early, stalls or breaks
// after the retries is a *Error, never io.EOF.
func (s *Stream) Read(p []byte) (int, error) {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return 0, s.downloadError(errClosed)
	}
	s.reading = true
	s.closeMu.Unlock()
	defer func() {
		s.closeMu.Lock()
		s.reading = false
		if s.closed {
			s.release()
		}
		s.closeMu.Unlock()
	}()
	return s.read(p)
}

// read is Read once the stream is known open.
func (s *Stream) read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if s.body == nil {
			if err := s.connect(); errors.Is(err, errComplete) {
				s.complete()
				return 0, io.EOF
			} else if err != nil {
				s.fail(err)
				return 0, s.err
			}
		}
		s.stallTimer.Reset(s.opts.StallTimeout)
		t0 := time.Now()
		n, err := s.body.Read(p)
		s.waited += time.Since(t0)
		s.stallTimer.Stop()
		off := s.offset.Load()
		if n > 0 {
			off = s.offset.Add(int64(n))
			s.winBytes += int64(n)
			if s.opts.OnBody != nil {
				s.opts.OnBody(n)
			}
		}
		if err == nil {
			if err = s.checkSpeed(off); err == nil {
				return n, nil
			}
		}
		size := s.size.Load()
		if size >= 0 && off > size {
			s.fail(fmt.Errorf("the server sent more than the %d bytes announced", size))
			return n, nil // the error comes with the next Read
		}
		// Every announced byte arrived (whatever went wrong after the last
		// one), or a body of unknown length ended cleanly.
		if (size >= 0 && off == size) || (size < 0 && err == io.EOF && s.actx.Err() == nil) {
			s.complete()
			return n, nil // io.EOF comes with the next Read
		}
		cause := s.bodyError(err, off, size)
		if off-s.bodyStart >= progressResets {
			s.failures = 0
		}
		s.closeBody()
		if ferr := s.retryWait(cause); ferr != nil && !s.nextSource(ferr) {
			s.fail(ferr)
			if n > 0 {
				return n, nil
			}
			return 0, s.err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// errSlow marks a body abandoned for its speed (see checkSpeed).
var errSlow = errors.New("slow body")

// checkSpeed closes the speed window once SpeedTime of waiting passed: a
// body that delivered less than SpeedLimit bytes/s over it is abandoned
// (errSlow; bodyError makes it a retryable ErrTooSlow), else a new window
// starts.
func (s *Stream) checkSpeed(off int64) error {
	if s.opts.SpeedLimit < 0 || s.waited < s.opts.SpeedTime {
		return nil
	}
	slow := float64(s.winBytes) < float64(s.opts.SpeedLimit)*s.waited.Seconds()
	s.waited, s.winBytes = 0, 0
	if slow {
		return errSlow
	}
	return nil
}

// bodyError explains a body read that ended before the image did.
func (s *Stream) bodyError(err error, off, size int64) error {
	if cerr := s.ctx.Err(); cerr != nil {
		return cerr
	}
	if err == errSlow {
		return &retryable{err: fmt.Errorf("%w: less than %d bytes/s over %s at byte %d", ErrTooSlow, s.opts.SpeedLimit, s.opts.SpeedTime, off)}
	}
	if context.Cause(s.actx) == ErrStalled {
		return &retryable{err: fmt.Errorf("%w: no data for %s at byte %d", ErrStalled, s.opts.StallTimeout, off)}
	}
	err = unwrapURLError(err)
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		if size >= 0 {
			return &retryable{err: fmt.Errorf("%w: got %d of %d bytes", ErrTruncated, off, size)}
		}
		return &retryable{err: fmt.Errorf("%w at byte %d", ErrTruncated, off)}
	}
	return &retryable{err: fmt.Errorf("%w at byte %d: %w", ErrTruncated, off, err)}
}

// complete records the end of the image.
func (s *Stream) complete() {
	s.closeBody()
	s.closeIdle()
	s.err = io.EOF
	s.size.CompareAndSwap(-1, s.offset.Load())
	s.log.Info("download complete", "url", s.redacted, "bytes", s.offset.Load(), "retries", s.retries.Load())
}

// fail records the final error of the stream.
func (s *Stream) fail(err error) {
	s.closeBody()
	s.closeIdle()
	s.err = s.downloadError(err)
	s.log.Error("download failed", "url", s.redacted, "bytes", s.offset.Load(), "err", s.err.Error())
}

func (s *Stream) closeBody() {
	if s.stallTimer != nil {
		s.stallTimer.Stop()
		s.stallTimer = nil
	}
	if s.cancel != nil {
		s.cancel(nil)
		s.cancel = nil
	}
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
}

func (s *Stream) closeIdle() {
	if s.own != nil {
		s.own.CloseIdleConnections()
	}
}

// Size is the size of the whole image in bytes, -1 when the server did not
// say.
func (s *Stream) Size() int64 { return s.size.Load() }

// BytesRead is how many bytes Read has delivered so far.
func (s *Stream) BytesRead() int64 { return s.offset.Load() }

// Retries is how many attempts followed a failed one so far.
func (s *Stream) Retries() int { return int(s.retries.Load()) }

// Close stops the download and releases its connection. Reads after Close
// fail.
// Close may be called from another goroutine than the one reading: a Read
// blocked on the body then returns (with an error) and releases it.
func (s *Stream) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.stop()
	if !s.reading {
		s.release()
	}
	return nil
}

// release frees the connection once no Read is running.
func (s *Stream) release() {
	s.closeBody()
	s.closeIdle()
	if s.err == nil {
		s.err = s.downloadError(errClosed)
	}
}

// downloadError wraps err as a *Error whose text holds no secret.
func (s *Stream) downloadError(err error) error {
	var de *Error
	if errors.As(err, &de) {
		return err
	}
	return &Error{URL: s.redacted, Err: &safeError{msg: s.scrub(err.Error()), inner: err}}
}

// safeError carries a scrubbed message. It deliberately has no Unwrap, so
// no code walking the chain can print the unscrubbed text of the cause;
// errors.Is and errors.As still reach the cause (context.Canceled, the
// sentinels above, x509 errors, *StatusError).
type safeError struct {
	msg   string
	inner error
}

func (e *safeError) Error() string        { return e.msg }
func (e *safeError) Is(target error) bool { return errors.Is(e.inner, target) }
func (e *safeError) As(target any) bool   { return errors.As(e.inner, target) }

// urlInText finds URLs inside error texts (net/http quotes them whole).
var urlInText = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>]+`)

// minSecret is the shortest header value scrubbed from texts: shorter
// values match everywhere and are no secret anyway.
const minSecret = 4

// scrub removes URLs' query strings and credentials, and the job's header
// values, from a message.
func (s *Stream) scrub(msg string) string {
	msg = urlInText.ReplaceAllStringFunc(msg, job.RedactURL)
	for _, sec := range s.secrets {
		if len(sec) >= minSecret {
			msg = strings.ReplaceAll(msg, sec, "<redacted>")
		}
	}
	return msg
}
