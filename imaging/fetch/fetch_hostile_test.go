package fetch

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/job"
)

// TestFetchNoRefererOnRedirect: Go's client would send the original URL
// (its query: a pre-signed signature; its fragment) as Referer to the
// redirect's host. byoi sends none.
func TestFetchNoRefererOnRedirect(t *testing.T) {
	other, otherSrv := newTestServer(t, nil)
	_, srv := newTestServer(t, func(i int, r *http.Request) action {
		if r.URL.Path == "/img.qcow2" {
			return action{location: otherSrv.URL + "/img.qcow2"}
		}
		return action{}
	})
	var lb logBuf
	s, err := Open(t.Context(), secretURL(srv)+"#frag-"+secretSig, fastOpts(&lb))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := readStream(s); err != nil {
		t.Fatal(err)
	}
	reqs := other.requests()
	if len(reqs) == 0 {
		t.Fatal("redirect not followed")
	}
	for _, r := range reqs {
		if ref := r.header.Get("Referer"); ref != "" {
			t.Errorf("Referer sent to the redirect target: %q", ref)
		}
		for k, v := range r.header {
			if strings.Contains(strings.Join(v, " "), secretSig) {
				t.Errorf("header %s carries the signature: %v", k, v)
			}
		}
	}
}

// TestFetchEchoedSecretNotShown: a server that answers with a status line
// or body echoing part of the token it received: neither the reason
// phrase nor the body reaches the error or the log.
func TestFetchEchoedSecretNotShown(t *testing.T) {
	const token = "Bearer abc-" + secretValue
	part := secretValue[3:] // a piece of the header value, not all of it
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				io.WriteString(c, "HTTP/1.1 403 Denied "+part+"\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\n")
				io.WriteString(c, "no: "+part+strings.Repeat(" ", 40-4-len(part)))
			}(c)
		}
	}()
	var lb logBuf
	opts := fastOpts(&lb)
	opts.Headers = []job.Header{{Name: "Authorization", Value: token}}
	_, err = Open(t.Context(), "http://"+ln.Addr().String()+"/img", opts)
	var he *StatusError
	if !errors.As(err, &he) || he.Code != 403 {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(err.Error(), part) || strings.Contains(lb.String(), part) {
		t.Errorf("the echoed token reached the error or the log: %v\n%s", err, lb.String())
	}
	if !strings.Contains(err.Error(), "HTTP 403 Forbidden") {
		t.Errorf("error %q does not name the status", err)
	}
	// The inspect range reader too.
	_, err = OpenRange(t.Context(), "http://"+ln.Addr().String()+"/img", RangeOptions{Headers: opts.Headers})
	if err == nil || strings.Contains(err.Error(), part) {
		t.Errorf("range reader: %v", err)
	}
}

// TestFetchTricklingServerTimesOut: a server sending one byte every 50 ms
// (a few bytes per second, far below the limit) never stalls, but the
// minimum speed gives up on it: resumed, then failed after the retries.
func TestFetchTricklingServerTimesOut(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		for range 100000 {
			if _, err := w.Write([]byte{1}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
	defer srv.Close()
	var lb logBuf
	opts := fastOpts(&lb)
	opts.StallTimeout = 10 * time.Second
	opts.SpeedLimit, opts.SpeedTime = 1024, 300*time.Millisecond
	opts.MaxRetries = -1 // the first slow attempt is final (this server ignores Range)
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second) // without the speed limit: a timeout
	defer cancel()
	s, err := Open(ctx, srv.URL, opts)
	if err == nil {
		_, _, err = readStream(s)
		s.Close()
	}
	if !errors.Is(err, ErrTooSlow) {
		t.Fatalf("err %v, want ErrTooSlow", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s", el)
	}
	// A slow consumer of a fast server is not slow.
	_, fast := newTestServer(t, nil)
	s, err = Open(t.Context(), fast.URL, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 64<<10)
	for i := 0; i < 8; i++ {
		if _, err := s.Read(buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
