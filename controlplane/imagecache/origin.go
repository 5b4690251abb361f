package imagecache

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/byoi/byoi/job"
)

// ErrAddressRefused: the origin's address is not public and not allowed.
var ErrAddressRefused = errors.New("the image's host resolves to an address the image cache does not connect to")

// blocked are the non-public ranges netip does not classify itself.
var blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // CGNAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// addrAllowed is the address policy: public addresses, and the operator's
// prefixes.
func (c *Cache) addrAllowed(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.cfg.Allow {
		if p.Contains(a) {
			return true
		}
	}
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	for _, p := range blocked {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// newClient is the origin client: the address policy on every dial
// (after name resolution, so a name cannot rebind to a refused address), no
// proxy from the environment, TLS with the system's roots (or Config's).
func (c *Cache) newClient() *http.Client {
	rt := c.cfg.Transport
	if rt == nil {
		d := &net.Dialer{Timeout: c.cfg.ConnectTimeout, KeepAlive: 30 * time.Second,
			Control: func(network, address string, _ syscall.RawConn) error {
				ap, err := netip.ParseAddrPort(address)
				if err != nil || !c.addrAllowed(ap.Addr()) {
					return ErrAddressRefused
				}
				return nil
			}}
		rt = &http.Transport{
			DialContext:           d.DialContext,
			TLSClientConfig:       &tls.Config{RootCAs: c.cfg.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   c.cfg.ConnectTimeout,
			ResponseHeaderTimeout: c.cfg.ConnectTimeout,
			MaxIdleConnsPerHost:   c.cfg.PerHost,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
			DisableCompression:    true,
		}
	}
	return &http.Client{Transport: rt}
}

// get sends one request for the image from offset off. The request's
// context is cancelled by the returned function (the stall timer's cause).
func (c *Cache) get(img Image, off int64, etag, lastMod string) (*http.Response, context.CancelCauseFunc, error) {
	ctx, cancel := context.WithCancelCause(c.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, img.URL, nil)
	if err != nil {
		cancel(nil)
		return nil, nil, &fillError{"download", errors.New("the image URL cannot be requested")}
	}
	setHeaders(req, img.Headers)
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		if etag != "" {
			req.Header.Set("If-Range", etag)
		} else if lastMod != "" {
			req.Header.Set("If-Range", lastMod)
		}
	}
	cl := *c.client
	cl.CheckRedirect = func(r *http.Request, via []*http.Request) error { return checkRedirect(r, via, img.Headers) }
	resp, err := cl.Do(req)
	if err != nil {
		cancel(nil)
		err = scrubErr(err)
		if errors.Is(err, ErrAddressRefused) {
			return nil, nil, &fillError{"refused", err}
		}
		var re *redirectError
		if errors.As(err, &re) {
			return nil, nil, &fillError{"download", err}
		}
		return nil, nil, &retryable{err}
	}
	return resp, cancel, nil
}

// setHeaders puts the job's headers on an origin request, as the agent
// does (imaging.SetRequestHeaders): Host sets the host, User-Agent
// replaces ours, Range/If-Range/Accept-Encoding are the cache's.
func setHeaders(req *http.Request, headers []job.Header) {
	req.Header.Set("User-Agent", "byoi-api image cache")
	for _, h := range headers {
		name := textproto.CanonicalMIMEHeaderKey(h.Name)
		switch name {
		case "Range", "If-Range", "Accept-Encoding":
			continue
		case "Host":
			req.Host = h.Value
			continue
		case "User-Agent":
			req.Header.Del(name)
		}
		req.Header.Add(name, h.Value)
	}
	req.Header.Set("Accept-Encoding", "identity")
}

type redirectError struct{ msg string }

func (e *redirectError) Error() string { return e.msg }

// checkRedirect is the agent's redirect policy: at most 10, http(s) only,
// no Referer, and the job's headers only on the first request's origin
// (never after a downgrade to http).
func checkRedirect(req *http.Request, via []*http.Request, headers []job.Header) error {
	req.Header.Del("Referer")
	if len(via) >= 10 {
		return &redirectError{"stopped after 10 redirects"}
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return &redirectError{fmt.Sprintf("redirect to scheme %q refused", req.URL.Scheme)}
	}
	a, b := via[0].URL, req.URL
	same := !(a.Scheme == "https" && b.Scheme != "https") && a.Hostname() == b.Hostname() && port(a) == port(b)
	if same {
		return nil
	}
	for _, h := range headers {
		name := textproto.CanonicalMIMEHeaderKey(h.Name)
		switch name {
		case "Range", "If-Range", "Accept-Encoding":
			continue
		case "Host":
			req.Host = ""
		}
		req.Header.Del(name)
	}
	return nil
}

func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

// scrubErr drops the URL a *url.Error prints (its query may be a
// credential).
func scrubErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

// sendRange sends n bytes of f from off to w, by sendfile when the
// connection allows it.
func sendRange(w http.ResponseWriter, f interface {
	io.Reader
	io.Seeker
}, off, n int64) (int64, error) {
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return sendAll(w, io.LimitReader(f, n))
}

// sendAll copies r to w through w's ReadFrom when it has one (the HTTP
// server's, which uses sendfile for a limited *os.File).
func sendAll(w http.ResponseWriter, r io.Reader) (int64, error) {
	if rf, ok := w.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{w}, r)
}
