package fetch

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// anyFallbackRoot returns an unconstrained root of the embedded bundle.
func anyFallbackRoot(t *testing.T) *x509.Certificate {
	t.Helper()
	for _, r := range fallbackRoots() {
		if r.constraint == nil {
			return r.cert
		}
	}
	t.Fatal("embedded bundle has no unconstrained root")
	return nil
}

func verifiesWith(c *x509.Certificate, pool *x509.CertPool) error {
	_, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: c.NotBefore.Add(time.Hour)})
	return err
}

func TestRootCAsHasFallbackAndExtra(t *testing.T) {
	pool, err := RootCAs(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifiesWith(anyFallbackRoot(t), pool); err != nil {
		t.Errorf("embedded root not trusted: %v", err)
	}
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	ca := srv.Certificate()
	if verifiesWith(ca, pool) == nil {
		t.Fatal("test CA trusted without --ca-cert")
	}
	pool, err = RootCAs(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}))
	if err != nil {
		t.Fatal(err)
	}
	if err := verifiesWith(ca, pool); err != nil {
		t.Errorf("--ca-cert root not trusted: %v", err)
	}
	if _, err := RootCAs([]byte("-----BEGIN NOTHING-----")); err != ErrCACert {
		t.Errorf("bad PEM: %v", err)
	}
}

// TestRootCAsWithoutSystemRoots runs itself again with SSL_CERT_FILE
// pointing to an empty file and SSL_CERT_DIR to an empty directory (Go's
// system pool is loaded once per process, so a child is needed): the system
// pool is then empty, and the embedded roots must still verify.
func TestRootCAsWithoutSystemRoots(t *testing.T) {
	if os.Getenv("BYOI_TEST_NO_SYSTEM_ROOTS") == "1" {
		c := anyFallbackRoot(t)
		if sys, err := x509.SystemCertPool(); err == nil && verifiesWith(c, sys) == nil {
			t.Fatal("system roots still present: the test setup did not remove them")
		}
		pool, err := RootCAs(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifiesWith(c, pool); err != nil {
			t.Fatalf("no system roots: embedded root not trusted: %v", err)
		}
		return
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRootCAsWithoutSystemRoots$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "BYOI_TEST_NO_SYSTEM_ROOTS=1", "SSL_CERT_FILE="+empty, "SSL_CERT_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestRootCAsWithoutSystemRoots")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestNewTransportSettings(t *testing.T) {
	tr, err := NewTransport(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tr.ForceAttemptHTTP2 || tr.TLSNextProto == nil || len(tr.TLSNextProto) != 0 {
		t.Error("HTTP/2 not disabled")
	}
	if tr.Proxy == nil || !tr.DisableCompression || tr.ReadBufferSize < 256<<10 {
		t.Errorf("transport %+v", tr)
	}
	if tr.TLSHandshakeTimeout != defaultConnectTimeout || tr.ResponseHeaderTimeout != defaultConnectTimeout {
		t.Error("timeouts not set")
	}
	if tr.TLSClientConfig.RootCAs == nil || tr.TLSClientConfig.InsecureSkipVerify {
		t.Error("TLS verification not configured")
	}
}

// TestFetchUsesHTTP1 talks to an HTTP/2-capable TLS server and checks the
// request arrived over HTTP/1.1.
func TestFetchUsesHTTP1(t *testing.T) {
	proto := make(chan int, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto <- r.ProtoMajor
		_, _ = w.Write([]byte("x"))
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	s, err := Open(t.Context(), srv.URL, Options{
		CACertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := io.Copy(io.Discard, s); err != nil {
		t.Fatal(err)
	}
	if p := <-proto; p != 1 {
		t.Errorf("HTTP/%d, want HTTP/1.1", p)
	}
}
