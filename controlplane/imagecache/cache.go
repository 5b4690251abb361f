// Package imagecache is byoi-api's image cache (issue 28): the first agent
// of a customer asking for an image starts one download from the image's
// origin, with the job's headers; the bytes go into a file of the cache
// directory and, at the same time, to every agent asking for the same
// image (a reader follows the growing file: no agent waits for the whole
// image). At the end the cache verifies the job's checksum (each agent
// verifies its own stream too); a mismatch drops the entry.
//
// What the cache keeps on disk: for each entry, KEY.data (the image's
// bytes) and KEY.meta (JSON: the checksum, the size, the origin's
// validators, how many bytes are known to be on disk). Never a URL (its
// query may be a pre-signed credential), never a header value. The key is
// a SHA-256 of the customer, the checksum type and the checksum: one
// customer never gets another's bytes, whatever the checksum.
//
// Limits: a budget of bytes (least recently used entries are evicted, never
// one being read), a number of concurrent origin downloads per origin host
// (a request waiting for a slot is answered 503 with Retry-After after
// Config.QueueWait, and the fill gives up after Config.MaxQueue, so the
// agent falls back to the origin), and an address policy: by default the
// cache connects only to public addresses (no loopback, private,
// link-local, CGNAT or multicast address, checked on the address actually
// dialled), so that a customer cannot make byoi-api fetch from its own
// network; Config.Allow opens prefixes (an operator's internal mirror).
//
// A crash leaves a partial entry: at Open it is cut back to the bytes its
// meta file says were flushed, and the next request resumes the download
// from there (re-hashing the prefix; If-Range with the origin's validator),
// or starts over when the origin cannot resume. A partial entry is only
// ever served as part of a download that ends with the cache's checksum
// verification; a complete entry is one that passed it.
package imagecache

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/byoi/byoi/job"
)

// Config configures a Cache.
type Config struct {
	// Dir holds the entries (created 0700). One byoi-api per directory: a
	// second process is refused.
	Dir string
	// MaxBytes is the budget of the entries' bytes (default 50 GiB).
	MaxBytes int64
	// PerHost is how many origin downloads may run at once per origin host
	// (default 4).
	PerHost int
	// QueueWait is how long a request waits for its first bytes (behind
	// the per-host limit, or for the origin's answer) before it is
	// answered 503 with a Retry-After (default 20 s: under the agent's
	// 30 s connect timeout, so that the agent retries, and reports it,
	// instead of timing out).
	QueueWait time.Duration
	// MaxQueue is how long a download waits for a slot before it gives up
	// and the agents asking are sent to the origin (default 5 minutes).
	MaxQueue time.Duration
	// StallTimeout: an origin that sends nothing for this long is a broken
	// transfer, resumed (default 60 s).
	StallTimeout time.Duration
	// ConnectTimeout bounds dialling, TLS and the origin's response headers
	// (default 20 s).
	ConnectTimeout time.Duration
	// MaxRetries is how many failed origin attempts in a row end a fill
	// (default 8; the count restarts after 1 MiB of progress).
	MaxRetries int
	// RetryBase is the first backoff between origin attempts (default 1 s,
	// doubling up to 30 s).
	RetryBase time.Duration
	// FailedFor is how long a failed image is answered "not cached" (the
	// agents go to the origin) before a new download is tried (default 1
	// minute).
	FailedFor time.Duration
	// Allow lists address prefixes the cache may connect to besides public
	// addresses (e.g. 10.1.2.0/24 for an internal mirror; 127.0.0.0/8 in
	// tests).
	Allow []netip.Prefix
	// RootCAs verifies https origins (nil: the system's roots).
	RootCAs *x509.CertPool
	// Transport replaces the origin transport (tests). The address policy
	// is then the transport's business.
	Transport http.RoundTripper
	Logger    *slog.Logger
}

func (c *Config) normalize() {
	if c.MaxBytes <= 0 {
		c.MaxBytes = 50 << 30
	}
	if c.PerHost <= 0 {
		c.PerHost = 4
	}
	if c.QueueWait <= 0 {
		c.QueueWait = 20 * time.Second
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 5 * time.Minute
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 60 * time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 20 * time.Second
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 8
	} else if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.FailedFor <= 0 {
		c.FailedFor = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Image is what a request asks for: a deployment's image, from its job.
type Image struct {
	Customer     int64
	URL          string
	Headers      []job.Header // secrets: sent to the origin, never stored or logged
	ChecksumType string       // md5 sha1 sha256 sha512
	Checksum     string       // lower-case hex
}

// Key is the cache key of an image: the customer, the checksum type and the
// checksum (not the URL: two URLs of one customer with the same checksum
// are the same bytes, and pre-signed URLs change at every request).
func Key(img Image) string {
	h := sha256.New()
	fmt.Fprintf(h, "byoi-imagecache-v1\x00%d\x00%s\x00%s", img.Customer, img.ChecksumType, strings.ToLower(img.Checksum))
	return hex.EncodeToString(h.Sum(nil))
}

// Cacheable reports whether img can go through the cache: it needs a
// checksum the cache can verify, and an http(s) URL.
func Cacheable(img Image) bool {
	if img.Checksum == "" || newHash(img.ChecksumType) == nil {
		return false
	}
	u, err := url.Parse(img.URL)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// Errors of Serve, before anything was written: the caller answers them.
var (
	// ErrNotCached: the cache does not serve this image (no checksum, the
	// download failed, the disk is full, the budget is too small, the
	// address is refused): the agent downloads from the origin.
	ErrNotCached = errors.New("the image cache does not serve this image")
)

// BusyError: no byte is available yet (a slot behind the per-host limit, or
// the origin's answer, or the bytes before the asked offset, are still
// awaited); ask again after RetryAfter.
type BusyError struct{ RetryAfter time.Duration }

func (e *BusyError) Error() string {
	return "the image cache is busy: retry in " + e.RetryAfter.String()
}

// state of an entry.
type state int

const (
	stFilling  state = iota // a fill runs (or waits for its slot)
	stComplete              // verified, on disk
	stPartial               // on disk in part (after a crash or shutdown), no fill running
	stFailed                // the last fill failed: "not cached" until FailedFor passed
)

type entry struct {
	key     string
	sumType string
	sum     string
	// guarded by Cache.mu
	state      state
	size       int64 // -1 until known
	written    int64 // bytes in the data file, readable
	synced     int64 // bytes flushed and recorded in the meta file
	etag       string
	lastMod    string
	reserved   int64 // bytes counted against the budget
	readers    int
	used       time.Time
	failedAt   time.Time
	failReason string
	changed    chan struct{} // closed and replaced on every change
}

func (e *entry) broadcast() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// Cache is an image cache over a directory.
type Cache struct {
	cfg    Config
	log    *slog.Logger
	lock   *os.File // flock of the directory
	client *http.Client
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	entries map[string]*entry
	used    int64 // sum of reserved
	hosts   map[string]chan struct{}

	stats Stats
}

// Stats are the cache's counters since Open (the metrics read them).
type Stats struct {
	Hits        atomic.Int64 // requests served from a complete entry
	Joins       atomic.Int64 // requests that followed a download in progress
	Misses      atomic.Int64 // requests that started (or resumed) a download
	Busy        atomic.Int64 // requests answered 503 (no byte yet)
	NotCached   atomic.Int64 // requests sent to the origin (failed, full, refused)
	BytesServed atomic.Int64 // image bytes sent to agents
	OriginBytes atomic.Int64 // image bytes received from origins
	OriginReqs  atomic.Int64 // requests sent to origins (resumes included)
	FillsOK     atomic.Int64
	FillsFailed atomic.Int64 // download errors, refused addresses, no size
	Mismatches  atomic.Int64 // fills whose checksum did not match
	Full        atomic.Int64 // fills refused for the budget or a full disk
	Evictions   atomic.Int64
}

// Usage is what the cache holds now: entries and their bytes (reserved:
// a download in progress counts its whole size).
func (c *Cache) Usage() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.state != stFailed {
			entries++
		}
	}
	return entries, c.used
}

// Stats returns the counters.
func (c *Cache) Stats() *Stats { return &c.stats }

// MaxBytes is the budget.
func (c *Cache) MaxBytes() int64 { return c.cfg.MaxBytes }

// Open opens (or creates) the cache directory, takes it for this process,
// and loads its entries: complete ones as they are, partial ones cut back
// to their flushed length (resumed on the next request), anything else
// removed.
func Open(cfg Config) (*Cache, error) {
	cfg.normalize()
	if cfg.Dir == "" {
		return nil, errors.New("imagecache: no directory")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("image cache %s is used by another process: give each byoi-api instance its own directory", cfg.Dir)
	}
	ctx, stop := context.WithCancel(context.Background())
	c := &Cache{cfg: cfg, log: cfg.Logger, lock: lock, ctx: ctx, stop: stop,
		entries: map[string]*entry{}, hosts: map[string]chan struct{}{}}
	c.client = c.newClient()
	if err := c.load(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close stops the downloads (their entries stay partial, resumed by the
// next Open) and releases the directory.
func (c *Cache) Close() error {
	c.stop()
	c.wg.Wait()
	if c.lock != nil {
		c.lock.Close()
	}
	return nil
}

func (c *Cache) dataPath(key string) string { return filepath.Join(c.cfg.Dir, key+".data") }
func (c *Cache) metaPath(key string) string { return filepath.Join(c.cfg.Dir, key+".meta") }

// load reads the directory at Open.
func (c *Cache) load() error {
	ents, err := os.ReadDir(c.cfg.Dir)
	if err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	keep := map[string]bool{}
	for _, de := range ents {
		name := de.Name()
		key, ok := strings.CutSuffix(name, ".meta")
		if !ok || !validKey(key) {
			continue
		}
		m, err := readMeta(c.metaPath(key))
		if err != nil {
			c.log.Warn("image cache: dropping an unreadable entry", "key", key[:12], "err", err)
			c.remove(key)
			continue
		}
		fi, err := os.Stat(c.dataPath(key))
		if err != nil {
			c.remove(key)
			continue
		}
		e := &entry{key: key, sumType: m.ChecksumType, sum: m.Checksum, size: m.Size, etag: m.ETag, lastMod: m.LastModified,
			changed: make(chan struct{}), used: m.Used}
		if info, err := os.Stat(c.metaPath(key)); err == nil && info.ModTime().After(e.used) {
			e.used = info.ModTime()
		}
		switch {
		case m.Complete && fi.Size() == m.Size:
			e.state, e.written, e.synced = stComplete, m.Size, m.Size
		case !m.Complete && m.Synced > 0 && m.Synced <= fi.Size() && m.Synced < m.Size:
			// Bytes past the last flush may be anything after a power
			// loss: cut them off.
			if err := os.Truncate(c.dataPath(key), m.Synced); err != nil {
				c.remove(key)
				continue
			}
			e.state, e.written, e.synced = stPartial, m.Synced, m.Synced
			c.log.Info("image cache: partial entry kept for resume", "key", key[:12], "bytes", m.Synced, "size", m.Size)
		default:
			c.log.Info("image cache: dropping an incomplete entry", "key", key[:12])
			c.remove(key)
			continue
		}
		e.reserved = e.size
		c.used += e.reserved
		c.entries[key] = e
		keep[key] = true
	}
	// Data files without a meta file, temporary files.
	for _, de := range ents {
		name := de.Name()
		if name == ".lock" {
			continue
		}
		key := strings.TrimSuffix(strings.TrimSuffix(name, ".meta"), ".data")
		if !keep[key] {
			os.Remove(filepath.Join(c.cfg.Dir, name))
		}
	}
	c.mu.Lock()
	c.evictLocked(0, nil)
	c.mu.Unlock()
	return nil
}

func validKey(k string) bool {
	if len(k) != 64 {
		return false
	}
	_, err := hex.DecodeString(k)
	return err == nil
}

// remove deletes an entry's files.
func (c *Cache) remove(key string) {
	os.Remove(c.metaPath(key))
	os.Remove(c.dataPath(key))
}

// evictLocked evicts least recently used entries that nobody reads until
// need more bytes fit in the budget (keeping except). It reports whether
// they fit.
func (c *Cache) evictLocked(need int64, except *entry) bool {
	if c.used+need <= c.cfg.MaxBytes {
		return true
	}
	var cands []*entry
	for _, e := range c.entries {
		if e != except && e.readers == 0 && (e.state == stComplete || e.state == stPartial) {
			cands = append(cands, e)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].used.Before(cands[j].used) })
	for _, e := range cands {
		if c.used+need <= c.cfg.MaxBytes {
			break
		}
		c.dropLocked(e)
		c.stats.Evictions.Add(1)
		c.log.Info("image cache: evicted", "key", e.key[:12], "bytes", e.size)
	}
	return c.used+need <= c.cfg.MaxBytes
}

// dropLocked forgets an entry and removes its files.
func (c *Cache) dropLocked(e *entry) {
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	c.used -= e.reserved
	e.reserved = 0
	c.remove(e.key)
}

// failLocked ends a fill with a failure: the entry is dropped (its files
// removed) and answers "not cached" for FailedFor.
func (c *Cache) failLocked(e *entry, reason string) {
	c.used -= e.reserved
	e.reserved = 0
	c.remove(e.key)
	e.state, e.failedAt, e.failReason = stFailed, time.Now(), reason
	e.broadcast()
}

// hostSlot returns the semaphore of an origin host.
func (c *Cache) hostSlot(host string) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.hosts[host]
	if s == nil {
		s = make(chan struct{}, c.cfg.PerHost)
		c.hosts[host] = s
	}
	return s
}

// originHost is the per-host limit's key: host and port, lower case.
func originHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"https": "443"}[u.Scheme]
		if port == "" {
			port = "80"
		}
	}
	return strings.ToLower(u.Hostname()) + ":" + port
}

// Serve answers an agent's request for img: the bytes (200, or 206 for a
// Range), from a complete entry or following a download in progress, which
// it starts when there is none. Before anything is written it returns
// ErrNotCached (send the agent to the origin) or *BusyError (503 with
// Retry-After); once the answer started, a failure cuts the connection
// (the agent resumes, from the cache or the origin) and Serve returns nil.
func (c *Cache) Serve(w http.ResponseWriter, r *http.Request, img Image) error {
	if !Cacheable(img) {
		c.stats.NotCached.Add(1)
		return ErrNotCached
	}
	key := Key(img)
	c.mu.Lock()
	e := c.entries[key]
	if e != nil && e.state == stFailed && time.Since(e.failedAt) >= c.cfg.FailedFor {
		delete(c.entries, key)
		e = nil
	}
	switch {
	case e == nil:
		e = &entry{key: key, sumType: img.ChecksumType, sum: strings.ToLower(img.Checksum), state: stFilling, size: -1, changed: make(chan struct{})}
		c.entries[key] = e
		c.startFillLocked(e, img)
		c.stats.Misses.Add(1)
	case e.state == stFailed:
		c.mu.Unlock()
		c.stats.NotCached.Add(1)
		return ErrNotCached
	case e.state == stPartial:
		e.state = stFilling
		e.broadcast()
		c.startFillLocked(e, img)
		c.stats.Misses.Add(1)
	case e.state == stComplete:
		c.stats.Hits.Add(1)
	default:
		c.stats.Joins.Add(1)
	}
	e.readers++
	e.used = time.Now()
	complete := e.state == stComplete
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		e.readers--
		e.used = time.Now()
		c.mu.Unlock()
	}()
	if complete {
		return c.serveComplete(w, r, e)
	}
	return c.follow(w, r, e)
}

// etag is the strong validator the cache gives an image: the same on every
// instance, so that a resume on another instance (or from a complete entry)
// is accepted.
func (e *entry) etag_() string { return `"byoi-` + e.key[:40] + `"` }

// serveComplete serves a verified entry (ranges, HEAD, If-Range).
func (c *Cache) serveComplete(w http.ResponseWriter, r *http.Request, e *entry) error {
	f, err := os.Open(c.dataPath(e.key))
	if err != nil {
		c.mu.Lock()
		if e.state == stComplete {
			c.dropLocked(e)
		}
		c.mu.Unlock()
		c.stats.NotCached.Add(1)
		return ErrNotCached
	}
	defer f.Close()
	if now := time.Now(); now.Sub(fileTime(c.metaPath(e.key))) > time.Minute {
		os.Chtimes(c.metaPath(e.key), now, now) // the LRU order survives a restart
	}
	noLongDeadlines(w)
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("ETag", e.etag_())
	h.Set("Cache-Control", "no-store")
	cw := &countingWriter{ResponseWriter: w, n: &c.stats.BytesServed}
	http.ServeContent(cw, r, "", time.Time{}, f)
	return nil
}

func fileTime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// noLongDeadlines lifts the server's read and write deadlines for a long
// answer (an image is minutes of transfer): the follower sets its own
// write deadline per chunk instead.
func noLongDeadlines(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
}

// parseRange reads "bytes=N-" or "bytes=N-M" (one range); ok false means
// no usable range (the whole image is sent).
func parseRange(v string) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(v), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, -1, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found || a == "" {
		return 0, -1, false
	}
	s, err := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	if err != nil || s < 0 {
		return 0, -1, false
	}
	end = -1
	if b = strings.TrimSpace(b); b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil || e < s {
			return 0, -1, false
		}
		end = e
	}
	return s, end, true
}

// follow serves an entry whose download runs: it waits (QueueWait at most)
// for the size and the first byte at the asked offset, then sends the
// bytes as they reach the file.
func (c *Cache) follow(w http.ResponseWriter, r *http.Request, e *entry) error {
	start, end, ranged := parseRange(r.Header.Get("Range"))
	if ir := r.Header.Get("If-Range"); ranged && ir != "" && ir != e.etag_() {
		start, end, ranged = 0, -1, false
	}
	wait := time.NewTimer(c.cfg.QueueWait)
	defer wait.Stop()
	var size int64
	for {
		c.mu.Lock()
		st, sz, written, ch := e.state, e.size, e.written, e.changed
		c.mu.Unlock()
		switch {
		case st == stFailed:
			c.stats.NotCached.Add(1)
			return ErrNotCached
		case st == stComplete:
			return c.serveComplete(w, r, e)
		}
		if sz >= 0 && (written > start || start >= sz) {
			size = sz
			break
		}
		select {
		case <-ch:
			continue
		case <-wait.C:
			c.stats.Busy.Add(1)
			return &BusyError{RetryAfter: 5 * time.Second}
		case <-r.Context().Done():
			return r.Context().Err()
		}
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("ETag", e.etag_())
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "no-store")
	if start >= size && ranged {
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return nil
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	if ranged {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	if r.Method == http.MethodHead {
		return nil
	}
	f, err := os.Open(c.dataPath(e.key))
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	defer f.Close()
	noLongDeadlines(w)
	rc := http.NewResponseController(w)
	pos, stop := start, end+1
	idle := time.NewTimer(2 * c.cfg.StallTimeout)
	defer idle.Stop()
	for pos < stop {
		c.mu.Lock()
		st, written, ch := e.state, e.written, e.changed
		c.mu.Unlock()
		if st == stFailed || (st == stPartial && written <= pos) {
			// The download failed (or stopped: shutdown): cut the
			// answer; the agent resumes at the byte it reached, from the
			// origin or another instance.
			panic(http.ErrAbortHandler)
		}
		if written > pos {
			n := min(written, stop) - pos
			_ = rc.SetWriteDeadline(time.Now().Add(2 * c.cfg.StallTimeout))
			sent, err := sendRange(w, f, pos, n)
			c.stats.BytesServed.Add(sent)
			pos += sent
			if err != nil {
				return nil // the agent went away
			}
			idle.Reset(2 * c.cfg.StallTimeout)
			continue
		}
		select {
		case <-ch:
		case <-idle.C:
			panic(http.ErrAbortHandler)
		case <-r.Context().Done():
			return nil
		}
	}
	_ = rc.SetWriteDeadline(time.Time{})
	return nil
}

// countingWriter counts the body bytes of a response and keeps the
// underlying writer's ReadFrom (sendfile) and Unwrap (deadlines).
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.ResponseWriter.Write(p)
	cw.n.Add(int64(n))
	return n, err
}

func (cw *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := sendAll(cw.ResponseWriter, r)
	cw.n.Add(n)
	return n, err
}

func (cw *countingWriter) Unwrap() http.ResponseWriter { return cw.ResponseWriter }
