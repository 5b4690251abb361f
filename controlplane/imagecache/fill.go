package imagecache

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/byoi/byoi/internal/httprange"
	"github.com/byoi/byoi/job"
)

// checkpointEvery is how often a fill flushes its data and records the
// flushed length in the meta file: what a crash can cost.
var checkpointEvery int64 = 64 << 20

// chunk is the size of one read from the origin and one broadcast to the
// followers.
const chunk = 1 << 20

func newHash(kind string) hash.Hash {
	switch kind {
	case "md5":
		return md5.New()
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	case "sha512":
		return sha512.New()
	}
	return nil
}

// meta is an entry's meta file. No URL, no header value.
type meta struct {
	Version      int       `json:"version"`
	ChecksumType string    `json:"checksumType"`
	Checksum     string    `json:"checksum"`
	Size         int64     `json:"size"`
	Complete     bool      `json:"complete"`
	Synced       int64     `json:"synced"` // bytes flushed to the data file
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"lastModified,omitempty"`
	Used         time.Time `json:"used"`
}

func readMeta(path string) (meta, error) {
	var m meta
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if len(b) > 64<<10 {
		return m, errors.New("meta file too large")
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, err
	}
	if m.Version != 1 || newHash(m.ChecksumType) == nil || m.Size < 0 || m.Synced < 0 || m.Synced > m.Size {
		return m, errors.New("meta file is not valid")
	}
	if _, err := hex.DecodeString(m.Checksum); err != nil {
		return m, errors.New("meta file is not valid")
	}
	return m, nil
}

// writeMeta replaces a meta file atomically and durably.
func writeMeta(dir, key string, m meta) error {
	m.Version = 1
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, key+".meta.tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, key+".meta")); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// startFillLocked starts the download of an entry (new, or partial).
func (c *Cache) startFillLocked(e *entry, img Image) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.fill(e, img)
	}()
}

// fillError ends a fill; reason is for the log and the metrics.
type fillError struct {
	reason string // "download", "checksum", "full", "refused", "size", "queue"
	err    error
}

func (e *fillError) Error() string { return e.reason + ": " + e.err.Error() }

// fill runs one entry's download to its end: a slot of its origin host,
// the origin's answer, the bytes into the data file (followers see them
// as they arrive), checkpoints, the checksum. It owns the entry's files.
func (c *Cache) fill(e *entry, img Image) {
	host := originHost(img.URL)
	redacted := job.RedactURL(img.URL)
	slot := c.hostSlot(host)
	queue := time.NewTimer(c.cfg.MaxQueue)
	select {
	case slot <- struct{}{}:
		queue.Stop()
	case <-queue.C:
		c.finish(e, &fillError{"queue", fmt.Errorf("no download slot for %s within %s", host, c.cfg.MaxQueue)}, redacted)
		return
	case <-c.ctx.Done():
		c.finish(e, c.ctx.Err(), redacted)
		return
	}
	defer func() { <-slot }()
	c.log.Info("image cache: downloading", "key", e.key[:12], "url", redacted)
	err := c.download(e, img)
	c.finish(e, err, redacted)
}

// finish records the end of a fill.
func (c *Cache) finish(e *entry, err error, redacted string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.stats.FillsOK.Add(1)
		c.log.Info("image cache: image verified and cached", "key", e.key[:12], "url", redacted, "bytes", e.size)
		return
	}
	if c.ctx.Err() != nil {
		// Shutting down: keep what was flushed for the next start.
		e.state = stPartial
		e.broadcast()
		return
	}
	var fe *fillError
	reason := "download"
	if errors.As(err, &fe) {
		reason = fe.reason
	}
	switch reason {
	case "checksum":
		c.stats.Mismatches.Add(1)
	case "full":
		c.stats.Full.Add(1)
	default:
		c.stats.FillsFailed.Add(1)
	}
	c.log.Warn("image cache: download failed: agents go to the origin", "key", e.key[:12], "url", redacted, "reason", reason, "err", err.Error())
	c.failLocked(e, reason)
}

// download fetches the image into the entry's data file, resuming what is
// there, and verifies it.
func (c *Cache) download(e *entry, img Image) error {
	h := newHash(img.ChecksumType)
	path := c.dataPath(e.key)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return &fillError{"full", err}
	}
	defer f.Close()
	c.mu.Lock()
	off := e.written
	c.mu.Unlock()
	// A resumed entry: hash what is already there.
	if off > 0 {
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, off)); err != nil {
			return &fillError{"download", err}
		}
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return &fillError{"download", err}
	}
	if err := f.Truncate(off); err != nil {
		return &fillError{"download", err}
	}
	buf := make([]byte, chunk)
	failures := 0
	for {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		c.mu.Lock()
		off, size, etag, lastMod := e.written, e.size, e.etag, e.lastMod
		c.mu.Unlock()
		if size >= 0 && off == size {
			break
		}
		c.stats.OriginReqs.Add(1)
		resp, cancel, err := c.get(img, off, etag, lastMod)
		if err == nil {
			err = c.accept(e, f, h, resp, off)
		}
		if err == nil {
			var got int64
			got, err = c.copyBody(e, f, h, resp, buf, cancel)
			if got >= 1<<20 {
				failures = 0
			}
		}
		if resp != nil {
			resp.Body.Close()
		}
		if cancel != nil {
			cancel(nil)
		}
		if err == nil {
			continue
		}
		var fe *fillError
		if errors.As(err, &fe) || c.ctx.Err() != nil {
			return err
		}
		if failures >= c.cfg.MaxRetries {
			return &fillError{"download", fmt.Errorf("giving up after %d attempts: %w", failures+1, err)}
		}
		failures++
		wait := c.backoff(failures)
		c.log.Warn("image cache: origin attempt failed, retrying", "key", e.key[:12], "offset", off, "retry", failures, "wait", wait, "err", err.Error())
		select {
		case <-time.After(wait):
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != e.sum {
		return &fillError{"checksum", fmt.Errorf("bad %s: got %s, want %s", img.ChecksumType, got, e.sum)}
	}
	if err := f.Sync(); err != nil {
		return &fillError{"full", err}
	}
	c.mu.Lock()
	m := meta{ChecksumType: e.sumType, Checksum: e.sum, Size: e.size, Complete: true, Synced: e.size, ETag: e.etag, LastModified: e.lastMod, Used: time.Now()}
	c.mu.Unlock()
	if err := writeMeta(c.cfg.Dir, e.key, m); err != nil {
		return &fillError{"full", err}
	}
	c.mu.Lock()
	e.state, e.synced = stComplete, e.size
	e.broadcast()
	c.mu.Unlock()
	return nil
}

func (c *Cache) backoff(n int) time.Duration {
	d := c.cfg.RetryBase
	for i := 1; i < n && d < 30*time.Second; i++ {
		d *= 2
	}
	d = min(d, 30*time.Second)
	return d/2 + rand.N(d/2+1)
}

// retryable marks an origin error another attempt may fix.
type retryable struct{ err error }

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

// accept checks the origin's answer for offset off and records the size
// and validators of the first one. A 200 to a resume starts the entry over
// (the cache's own hash restarts with it; followers already past byte 0
// are cut off by the size or checksum checks that follow, never fed two
// versions silently: the entry's size must not change).
func (c *Cache) accept(e *entry, f *os.File, h hash.Hash, resp *http.Response, off int64) error {
	c.mu.Lock()
	size := e.size
	c.mu.Unlock()
	switch {
	case resp.StatusCode == http.StatusOK:
		if resp.ContentLength < 0 {
			return &fillError{"size", errors.New("the origin does not say the image's size")}
		}
		if size >= 0 && resp.ContentLength != size {
			return &fillError{"download", fmt.Errorf("the image changed size at the origin (%d, then %d bytes)", size, resp.ContentLength)}
		}
		if off > 0 {
			// Cannot resume: start over from byte 0, if it is still the
			// same file (followers already have bytes of it).
			c.mu.Lock()
			oldTag, oldMod := e.etag, e.lastMod
			c.mu.Unlock()
			if (oldTag != "" && resp.Header.Get("ETag") != oldTag) || (oldTag == "" && oldMod != "" && resp.Header.Get("Last-Modified") != oldMod) {
				return &fillError{"download", errors.New("the image changed at the origin during the download")}
			}
			h.Reset()
			if err := f.Truncate(0); err != nil {
				return &fillError{"download", err}
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return &fillError{"download", err}
			}
			c.mu.Lock()
			e.written, e.synced = 0, 0
			c.mu.Unlock()
			c.log.Info("image cache: the origin cannot resume: starting over", "key", e.key[:12], "offset", off)
		}
		return c.sized(e, resp.ContentLength, resp.Header)
	case resp.StatusCode == http.StatusPartialContent && off > 0:
		start, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != off || total < 0 || (size >= 0 && total != size) {
			return &fillError{"download", errors.New("the origin answered the resume with another range")}
		}
		return c.sized(e, total, nil)
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return &retryable{fmt.Errorf("HTTP %d", resp.StatusCode)}
	}
	return &fillError{"download", fmt.Errorf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))}
}

// sized records the image's size (reserving it in the budget) the first
// time it is known.
func (c *Cache) sized(e *entry, size int64, hdr http.Header) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if hdr != nil {
		if et := hdr.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") && len(et) <= 256 {
			e.etag = et
		}
		if lm := hdr.Get("Last-Modified"); len(lm) <= 64 {
			e.lastMod = lm
		}
	}
	if e.size >= 0 {
		return nil
	}
	if size > c.cfg.MaxBytes {
		return &fillError{"full", fmt.Errorf("the image (%d bytes) is larger than the cache's budget (%d bytes)", size, c.cfg.MaxBytes)}
	}
	if !c.evictLocked(size, e) {
		return &fillError{"full", fmt.Errorf("no room for %d bytes in the cache's budget (%d of %d bytes in use by entries being read)", size, c.used, c.cfg.MaxBytes)}
	}
	if free, ok := freeBytes(c.cfg.Dir); ok && free < size {
		return &fillError{"full", fmt.Errorf("the cache's disk has %d bytes free, the image needs %d", free, size)}
	}
	e.size, e.reserved = size, size
	c.used += size
	e.broadcast()
	return nil
}

func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// copyBody copies the origin's body into the data file, chunk by chunk,
// with the stall timeout; followers are woken after each chunk, and a
// checkpoint is recorded every checkpointEvery bytes.
func (c *Cache) copyBody(e *entry, f *os.File, h hash.Hash, resp *http.Response, buf []byte, cancel context.CancelCauseFunc) (int64, error) {
	var got int64
	stall := time.AfterFunc(c.cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	for {
		c.mu.Lock()
		size, off, synced := e.size, e.written, e.synced
		c.mu.Unlock()
		want := min(int64(len(buf)), size-off)
		if want <= 0 {
			return got, nil
		}
		stall.Reset(c.cfg.StallTimeout)
		n, rerr := io.ReadFull(resp.Body, buf[:want])
		stall.Stop()
		if n > 0 {
			h.Write(buf[:n])
			if _, err := f.Write(buf[:n]); err != nil {
				return got, &fillError{"full", err}
			}
			got += int64(n)
			c.stats.OriginBytes.Add(int64(n))
			c.mu.Lock()
			e.written += int64(n)
			e.broadcast()
			off = e.written
			c.mu.Unlock()
			if off-synced >= checkpointEvery && off < size {
				if err := c.checkpoint(e, f, off); err != nil {
					return got, &fillError{"full", err}
				}
			}
		}
		if rerr != nil {
			if off == size {
				return got, nil
			}
			if errors.Is(rerr, io.ErrUnexpectedEOF) || rerr == io.EOF {
				return got, &retryable{fmt.Errorf("transfer ended early at byte %d of %d", off, size)}
			}
			if errors.Is(context.Cause(resp.Request.Context()), errStalled) {
				return got, &retryable{fmt.Errorf("no data for %s at byte %d", c.cfg.StallTimeout, off)}
			}
			return got, &retryable{fmt.Errorf("transfer broken at byte %d: %w", off, scrubErr(rerr))}
		}
	}
}

var errStalled = errors.New("origin stalled")

// checkpoint flushes the data file and records its length.
func (c *Cache) checkpoint(e *entry, f *os.File, off int64) error {
	if err := f.Sync(); err != nil {
		return err
	}
	c.mu.Lock()
	m := meta{ChecksumType: e.sumType, Checksum: e.sum, Size: e.size, Synced: off, ETag: e.etag, LastModified: e.lastMod, Used: time.Now()}
	c.mu.Unlock()
	if err := writeMeta(c.cfg.Dir, e.key, m); err != nil {
		return err
	}
	c.mu.Lock()
	e.synced = off
	c.mu.Unlock()
	return nil
}

// parseContentRange parses "bytes start-end/total" (total -1 for "*"):
// internal/httprange's rule, the same as the agent's download.
func parseContentRange(v string) (start, end, total int64, err error) {
	return httprange.Parse(v)
}
