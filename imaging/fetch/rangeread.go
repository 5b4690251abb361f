package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/byoi/byoi/imaging/internal/blockcache"
	"github.com/byoi/byoi/job"
)

// Why inspect reads a URL through HTTP Range requests: it needs the head of
// the image (the format, the MBR and primary GPT, the qcow2 header), the
// backup GPT at the end, the qcow2 L1/L2 tables and a few clusters of the
// ESP's FAT: some MiB of an image that may weigh tens of GiB, and a rescue
// system's /tmp is RAM. When the server ignores Range (a 200 answer), the
// caller falls back to downloading the whole image (Open, staged in
// memory or in a file); when an image needs more than MaxBytes through
// Range, it returns ErrRangeBudget and the caller falls back the same way.

// ErrNoRange is returned by OpenRange when the server does not serve
// byte ranges (it answered 200 to a Range request, or a bad Content-Range).
var ErrNoRange = errors.New("the server does not serve byte ranges")

// ErrRangeBudget is returned by a RangeReader's ReadAt once it fetched
// MaxBytes.
var ErrRangeBudget = errors.New("range reads exceeded their byte budget")

// RangeOptions tune OpenRange.
type RangeOptions struct {
	// Client sends the requests (default: a client over
	// NewTransport(nil, 0), the download's transport).
	Client *http.Client
	// Headers are the job's headers, sent with every request. Their
	// values never appear in an error.
	Headers []job.Header
	// BlockSize is the unit fetched and cached (default 1 MiB).
	BlockSize int64
	// CacheBlocks bounds the cache (default 32 blocks).
	CacheBlocks int
	// MaxBytes caps the bytes fetched in all (default 256 MiB).
	MaxBytes int64
	// Retries on connection errors and 5xx answers (default 3).
	Retries int
	// RequestTimeout bounds one block's request, body included (default
	// 60 s): a server that stalls mid-body does not hang the inspection.
	RequestTimeout time.Duration
}

// RangeReader is an io.ReaderAt over an HTTP(S) URL, one Range request
// per missing block, with a small LRU block cache. It is not safe for
// concurrent use. Its ReadAt uses the context given to OpenRange (an
// io.ReaderAt takes none).
type RangeReader struct {
	ctx     context.Context
	url     string
	opts    RangeOptions
	size    int64
	fetched int64
	cache   blockcache.Cache
}

// OpenRange asks for the first block of rawURL with a Range request and
// returns a reader when the server answers 206 with a valid Content-Range
// giving the full size, ErrNoRange when it answers 200 (the body is not
// read), or the error.
func OpenRange(ctx context.Context, rawURL string, opts RangeOptions) (*RangeReader, error) {
	if opts.Client == nil {
		tr, err := NewTransport(nil, 0)
		if err != nil {
			return nil, err
		}
		opts.Client = &http.Client{Transport: tr}
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = 1 << 20
	}
	if opts.CacheBlocks <= 0 {
		opts.CacheBlocks = 32
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	if opts.Retries <= 0 {
		opts.Retries = 3
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 60 * time.Second
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("the image URL is not a valid http or https URL")
	}
	// Same redirect policy as Open: the job's headers (tokens)
	// go to the image's origin only.
	c := *opts.Client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		_, err := CheckRedirect(req, via, opts.Headers)
		return err
	}
	opts.Client = &c
	h := &RangeReader{ctx: ctx, url: rawURL, opts: opts, size: -1, cache: blockcache.Cache{Max: opts.CacheBlocks}}
	if _, err := h.get(0); err != nil {
		return nil, err
	}
	return h, nil
}

// Size is the image's size, from the first answer's Content-Range.
func (h *RangeReader) Size() int64 { return h.size }

// Fetched is the number of bytes downloaded so far.
func (h *RangeReader) Fetched() int64 { return h.fetched }

// ReadAt reads from the cached blocks, fetching the missing ones.
func (h *RangeReader) ReadAt(p []byte, off int64) (int, error) {
	return blockcache.ReadBlocks(p, off, h.size, h.opts.BlockSize, h.get)
}

// get returns the block at off, from the cache or the server.
func (h *RangeReader) get(off int64) ([]byte, error) {
	if b, ok := h.cache.Lookup(off); ok {
		return b, nil
	}
	n := h.opts.BlockSize
	if h.size >= 0 {
		n = min(n, h.size-off)
	}
	if h.fetched+n > h.opts.MaxBytes {
		return nil, fmt.Errorf("%w (%d bytes)", ErrRangeBudget, h.opts.MaxBytes)
	}
	var b []byte
	var err error
	for attempt := 0; ; attempt++ {
		b, err = h.fetch(off, n)
		if err == nil || attempt+1 >= h.opts.Retries || !isTransient(err) {
			break
		}
		select {
		case <-h.ctx.Done():
			return nil, h.ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, err
	}
	h.fetched += int64(len(b))
	h.cache.Add(off, b)
	return b, nil
}

// transientError is a failure a retry may fix.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func isTransient(err error) bool {
	var t *transientError
	return errors.As(err, &t)
}

// fetch asks for n bytes at off (n is a maximum while the size is unknown)
// and checks the answer is exactly that range.
func (h *RangeReader) fetch(off, n int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(h.ctx, h.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, errors.New("the image URL is not valid")
	}
	SetRequestHeaders(req, h.opts.Headers)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := h.opts.Client.Do(req)
	if err != nil {
		if ctxErr := h.ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, &transientError{fmt.Errorf("range request: %w", stripURL(err))}
	}
	defer resp.Body.Close()
	switch {
	case (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusRequestedRangeNotSatisfiable) && h.size < 0:
		// 200: Range ignored (the body is not read: Close drops it); 416
		// on the first block: an empty file. The full download handles
		// both.
		return nil, ErrNoRange
	case resp.StatusCode >= 500:
		return nil, &transientError{fmt.Errorf("range request at %d: HTTP %s", off, StatusText(resp.StatusCode))}
	case resp.StatusCode != http.StatusPartialContent:
		return nil, fmt.Errorf("range request at %d: HTTP %s", off, StatusText(resp.StatusCode))
	}
	start, end, total, err := ParseContentRange(resp.Header.Get("Content-Range"))
	if err != nil || start != off || total <= 0 || end < start || end >= total {
		if h.size < 0 {
			return nil, ErrNoRange
		}
		return nil, fmt.Errorf("range request at %d: the answer's Content-Range is not the range asked for", off)
	}
	if h.size < 0 {
		h.size = total
		n = min(n, total-off)
	}
	if total != h.size || end != off+n-1 {
		return nil, fmt.Errorf("range request at %d: the answer's Content-Range is not the range asked for (the image changed?)", off)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		return nil, &transientError{fmt.Errorf("range request at %d: read: %w", off, stripURL(err))}
	}
	return b, nil
}

// stripURL drops the URL net/http puts in its errors: it may carry a
// token in its query or user info.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
