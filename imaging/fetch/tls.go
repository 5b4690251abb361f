package fetch

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// ErrCACert is returned when the PEM given as extra roots (--ca-cert) holds
// no certificate.
var ErrCACert = errors.New("no certificate found in the CA certificate PEM")

// fallbackRoot is one parsed root of the embedded Mozilla/NSS bundle.
type fallbackRoot struct {
	cert       *x509.Certificate
	constraint func([]*x509.Certificate) error
}

// fallbackRoots parses the embedded bundle once per process.
var fallbackRoots = sync.OnceValue(func() []fallbackRoot {
	var roots []fallbackRoot
	for r := range bundle.Roots() {
		c, err := x509.ParseCertificate(r.Certificate)
		if err != nil {
			continue // never happens with the shipped bundle; never panic
		}
		roots = append(roots, fallbackRoot{cert: c, constraint: r.Constraint})
	}
	return roots
})

// RootCAs returns the pool the image download trusts: the system roots
// (honouring SSL_CERT_FILE/SSL_CERT_DIR), plus the NSS roots embedded from
// golang.org/x/crypto/x509roots/fallback, plus the certificates of
// extraPEM (--ca-cert).
//
// Why the embedded roots are added explicitly: importing the fallback
// package only calls x509.SetFallbackRoots, which Go uses solely when the
// system pool is missing or empty, and the package documentation asks
// libraries not to import it. A rescue initramfs often has no CA store at
// all, or an outdated one. So the bundle is always merged into the pool we
// build here (with its distrust-after constraints), whatever the system
// has: verification works with SSL_CERT_FILE pointing to an empty file and
// no system roots, and a stale system store cannot hide a current root.
// Setting tls.Config.RootCAs is safe on Linux, where Go has no platform
// verifier to bypass.
func RootCAs(extraPEM []byte) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, r := range fallbackRoots() {
		if r.constraint != nil {
			pool.AddCertWithConstraint(r.cert, r.constraint)
		} else {
			pool.AddCert(r.cert)
		}
	}
	if len(extraPEM) > 0 && !pool.AppendCertsFromPEM(extraPEM) {
		return nil, ErrCACert
	}
	return pool, nil
}

// PreloadRoots starts loading what RootCAs needs in the background, so a
// download does not wait for it: x509.SystemCertPool reads and parses the
// system's store once per process (measured: 70 ms on Debian 12, whose
// /etc/ssl/certs holds every root twice, in the bundle and as files; a
// tenth of a 1.3 s qcow2 deploy from a local mirror). Commands call it
// first thing; RootCAs waits for the same load if it is not done.
func PreloadRoots() {
	go func() {
		_, _ = x509.SystemCertPool()
		fallbackRoots()
	}()
}

// TLSConfig returns the client TLS configuration for downloads: TLS 1.2 or
// later, verified against RootCAs(extraPEM).
func TLSConfig(extraPEM []byte) (*tls.Config, error) {
	pool, err := RootCAs(extraPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// readBufferSize is the transport's read buffer. Large buffers cut the
// number of read syscalls on multi-gigabit links.
const readBufferSize = 256 << 10

// NewTransport returns the HTTP transport used for image downloads:
//   - HTTP/1.1 only (ForceAttemptHTTP2 off and an empty, non-nil
//     TLSNextProto): HTTP/2 measured at half the throughput for one big
//     stream, and Range resume needs nothing from it;
//   - proxy from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY);
//   - connectTimeout bounds dial, TLS handshake and waiting for the
//     response headers (0 means 30 s);
//   - no transparent gzip: the bytes hashed and written must be the bytes
//     of the file, and Range offsets must count them;
//   - TLS verified against RootCAs(caCertPEM).
func NewTransport(caCertPEM []byte, connectTimeout time.Duration) (*http.Transport, error) {
	if connectTimeout <= 0 {
		connectTimeout = defaultConnectTimeout
	}
	tlsConf, err := TLSConfig(caCertPEM)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   connectTimeout,
		ResponseHeaderTimeout: connectTimeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     false,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		DisableCompression:    true,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		ReadBufferSize:        readBufferSize,
		WriteBufferSize:       32 << 10,
	}, nil
}

// isTLSVerifyError reports a certificate verification failure or a TLS
// protocol failure: retrying cannot fix either.
func isTLSVerifyError(err error) bool {
	var (
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		he  x509.HostnameError
		cie x509.CertificateInvalidError
		rhe tls.RecordHeaderError
		ae  tls.AlertError
	)
	return errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &he) ||
		errors.As(err, &cie) || errors.As(err, &rhe) || errors.As(err, &ae)
}
