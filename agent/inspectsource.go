package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/job"
)

// SourceOptions say how Inspect reaches an image.
type SourceOptions struct {
	InspectOptions
	// Headers are sent with every request for a URL (values are secrets).
	Headers []job.Header
	// CACertPEM holds extra roots for HTTPS.
	CACertPEM []byte
	// ConnectTimeout bounds connecting (default: the download's).
	ConnectTimeout time.Duration
	// StagingDir holds the temporary copy of a URL whose server ignores
	// Range (default: the system temp dir).
	StagingDir string
	Logger     *slog.Logger
}

// Inspected is Inspect's report and how the image was read.
type Inspected struct {
	*InspectReport
	// Via says how the image was read: "local file", "HTTP range requests
	// (N of M bytes)", "whole download, staged in ...".
	Via string
}

// IsURL reports whether src is an http(s) URL rather than a file path.
func IsURL(src string) bool {
	l := strings.ToLower(src)
	return strings.HasPrefix(l, "http://") || strings.HasPrefix(l, "https://")
}

// Inspect reports what a deploy would do with the image at src, a local
// file or block device (opened read-only) or an http(s) URL, and writes
// nothing anywhere. A URL is read through HTTP Range requests (only what
// the inspection needs); when the server ignores Range, when the range
// requests fail (the download then gives the deploy's error message), or
// when the inspection needs more than the range budget, the whole image is
// downloaded with the deploy's own code and staged in memory or in a
// temporary file that is removed.
func Inspect(ctx context.Context, src string, opts SourceOptions) (*Inspected, error) {
	if !IsURL(src) {
		if len(opts.Headers) > 0 || opts.CACertPEM != nil {
			return nil, errors.New("HTTP headers and CA certificates apply to a URL, not to a local file")
		}
		rep, err := inspectFile(ctx, src, opts.InspectOptions)
		if err != nil {
			return nil, err
		}
		return &Inspected{InspectReport: rep, Via: "local file"}, nil
	}
	return inspectURL(ctx, src, opts)
}

// inspectFile inspects a local image or block device, opened read-only.
func inspectFile(ctx context.Context, path string, opts InspectOptions) (*InspectReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("open image: %s is a directory", path)
	}
	// Seek to the end: the size of a regular file and of a block device.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	return InspectImage(ctx, f, size, opts)
}

func inspectURL(ctx context.Context, src string, opts SourceOptions) (*Inspected, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tr, err := fetch.NewTransport(opts.CACertPEM, opts.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	defer tr.CloseIdleConnections()
	ra, err := fetch.OpenRange(ctx, src, fetch.RangeOptions{Client: &http.Client{Transport: tr}, Headers: opts.Headers})
	if err == nil {
		rep, err := InspectImage(ctx, ra, ra.Size(), opts.InspectOptions)
		if err == nil {
			log.Info("inspected through range requests", "bytes", ra.Fetched(), "size", ra.Size())
			return &Inspected{InspectReport: rep, Via: fmt.Sprintf("HTTP range requests (%d of %d bytes)", ra.Fetched(), ra.Size())}, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		log.Info("range inspection failed, downloading the whole image", "err", err)
	} else {
		if ctx.Err() != nil {
			return nil, err
		}
		log.Info("no range requests, downloading the whole image", "err", err)
	}

	stream, err := fetch.Open(ctx, src, fetch.Options{
		Headers:        opts.Headers,
		CACertPEM:      opts.CACertPEM,
		ConnectTimeout: opts.ConnectTimeout,
		Logger:         log,
	})
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	dir := opts.StagingDir
	if dir == "" {
		dir = os.TempDir()
	}
	staged, err := qcow2.Stage(ctx, stream, qcow2.StageOptions{
		DeclaredSize: stream.Size(),
		StagingDir:   dir,
		Logger:       log,
	})
	if err != nil {
		var tb *qcow2.TooBigError
		if errors.As(err, &tb) {
			return nil, fmt.Errorf("the image (%d bytes) fits neither in memory nor in %s (--staging-dir), and its server does not serve byte ranges: %w", tb.Size, dir, err)
		}
		return nil, err
	}
	defer staged.Close()
	rep, err := InspectImage(ctx, staged, staged.Size(), opts.InspectOptions)
	if err != nil {
		return nil, err
	}
	return &Inspected{InspectReport: rep, Via: "whole download, staged in " + staged.Where()}, nil
}
