package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/metrics"
)

// fleetFlags are serve's flags of issue 28: the image cache and the
// metrics listener.
type fleetFlags struct {
	cacheDir     string
	cacheSize    string
	cachePerHost int
	cacheAllow   prefixList
	metrics      string
}

type prefixList []netip.Prefix

func (p *prefixList) String() string {
	var s []string
	for _, x := range *p {
		s = append(s, x.String())
	}
	return strings.Join(s, ",")
}

func (p *prefixList) Set(v string) error {
	x, err := netip.ParsePrefix(v)
	if err != nil {
		return fmt.Errorf("not an address prefix (CIDR): %q", v)
	}
	*p = append(*p, x.Masked())
	return nil
}

func (f *fleetFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.cacheDir, "image-cache", "", "serve the agents' images from a cache in this directory (one origin download per image and customer; one directory per instance)")
	fs.StringVar(&f.cacheSize, "image-cache-size", "50GiB", "with --image-cache: the cache's budget (e.g. 200GiB, 500MiB); least recently used images are evicted")
	fs.IntVar(&f.cachePerHost, "image-cache-per-host", 4, "with --image-cache: origin downloads at once per origin host")
	fs.Var(&f.cacheAllow, "image-cache-allow", "with --image-cache: an address prefix (CIDR) the cache may download from besides public addresses, e.g. an internal mirror's 10.1.2.0/24 (repeat for several)")
	fs.StringVar(&f.metrics, "metrics-listen", "", "serve Prometheus metrics at /metrics on this address (e.g. 127.0.0.1:9108); off by default, never on --listen")
}

// parseSize reads 123, 500MiB, 50GiB, 2TiB (also MB/GB/TB, K/M/G/T: binary).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10},
		{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(v), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("not a size: %q (e.g. 50GiB)", s)
	}
	return n * mult, nil
}

// apply opens the cache and starts the metrics listener, adding them to
// cfg; the returned function stops both.
func (f *fleetFlags) apply(ctx context.Context, cfg *controlplane.Config, listen string, log *slog.Logger) (func(), error) {
	var closers []func()
	stop := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	var m *metrics.Metrics
	if f.metrics != "" {
		if f.metrics == listen {
			return stop, errors.New("--metrics-listen must not be the customer listener (--listen)")
		}
		m = metrics.New(metrics.Options{Logger: log})
		m.WatchFleet(cfg.Store)
		cfg.Store = m.Store(cfg.Store)
		cfg.Metrics = m
	}
	if f.cacheDir != "" {
		size, err := parseSize(f.cacheSize)
		if err != nil {
			return stop, fmt.Errorf("--image-cache-size: %w", err)
		}
		c, err := imagecache.Open(imagecache.Config{Dir: f.cacheDir, MaxBytes: size, PerHost: f.cachePerHost, Allow: f.cacheAllow, Logger: log})
		if err != nil {
			return stop, err
		}
		closers = append(closers, func() { c.Close() })
		cfg.ImageCache = c
		if m != nil {
			m.WatchCache(c)
		}
	} else if len(f.cacheAllow) > 0 {
		return stop, errors.New("--image-cache-allow goes with --image-cache")
	}
	if m != nil {
		ln, err := net.Listen("tcp", f.metrics)
		if err != nil {
			stop()
			return func() {}, fmt.Errorf("--metrics-listen: %w", err)
		}
		hs := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go hs.Serve(ln)
		closers = append(closers, func() { hs.Close() })
		log.Warn("byoi-api metrics", "addr", ln.Addr().String())
	}
	return stop, nil
}
