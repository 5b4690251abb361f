package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/job"
)

// inspRangeServer serves data at /img; mode changes how it answers Range.
func inspRangeServer(t *testing.T, data []byte, mode string, seen *[]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			*seen = append(*seen, r.Host+" "+r.Header.Get("X-Token")+" "+r.Header.Get("Range"))
		}
		switch mode {
		case "ignore":
			w.Write(data)
		case "shifted": // a wrong Content-Range after the first block
			if r.Header.Get("Range") != "bytes=0-65535" {
				w.Header().Set("Content-Range", "bytes 0-65535/"+strconv.Itoa(len(data)))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(data[:65536])
				return
			}
			http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(data))
		case "5xx-once":
			mode = ""
			http.Error(w, "busy", http.StatusServiceUnavailable)
		default:
			http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(data))
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/img"
}

func TestHTTPRangeReader(t *testing.T) {
	data := make([]byte, 1<<20+12345)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	ctx := context.Background()
	opts := RangeOptions{BlockSize: 64 << 10, CacheBlocks: 4, Headers: []job.Header{{Name: "X-Token", Value: "t0k3n"}}}
	var seen []string
	ra, err := OpenRange(ctx, inspRangeServer(t, data, "", &seen), opts)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Size() != int64(len(data)) {
		t.Fatalf("size %d", ra.Size())
	}
	got := make([]byte, len(data))
	if _, err := ra.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("whole read: %v", err)
	}
	p := make([]byte, 100)
	if n, err := ra.ReadAt(p, int64(len(data))-50); n != 50 || err != io.EOF || !bytes.Equal(p[:50], data[len(data)-50:]) {
		t.Errorf("read at the end: %d %v", n, err)
	}
	for _, s := range seen {
		if !strings.Contains(s, " t0k3n bytes=") {
			t.Errorf("request without the header or Range: %q", s)
		}
	}
	before := ra.Fetched()
	ra.ReadAt(p, int64(len(data))-50) // cached
	if ra.Fetched() != before {
		t.Error("a cached block was fetched again")
	}

	if _, err := OpenRange(ctx, inspRangeServer(t, data, "ignore", nil), opts); !errors.Is(err, ErrNoRange) {
		t.Errorf("server ignoring Range: %v", err)
	}
	ra, err = OpenRange(ctx, inspRangeServer(t, data, "shifted", nil), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ra.ReadAt(p, 1<<20); err == nil || !strings.Contains(err.Error(), "not the range asked for") {
		t.Errorf("wrong Content-Range: %v", err)
	}
	if _, err := OpenRange(ctx, inspRangeServer(t, data, "5xx-once", nil), opts); err != nil {
		t.Errorf("one 503 is retried: %v", err)
	}
	small := opts
	small.MaxBytes = 128 << 10
	ra, err = OpenRange(ctx, inspRangeServer(t, data, "", nil), small)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ra.ReadAt(got, 0); !errors.Is(err, ErrRangeBudget) || ra.Fetched() > small.MaxBytes {
		t.Errorf("budget: %v, fetched %d", err, ra.Fetched())
	}
}

// TestHTTPRangeRedirectDropsHeaders: the job's header goes to the image's
// origin only, like fetch.Open.
func TestHTTPRangeRedirectDropsHeaders(t *testing.T) {
	data := bytes.Repeat([]byte{1}, 4096)
	var seen []string
	target := inspRangeServer(t, data, "", &seen)
	redir := httptest.NewServer(http.RedirectHandler(target, http.StatusFound)) // another port: another origin
	defer redir.Close()
	ra, err := OpenRange(context.Background(), redir.URL, RangeOptions{Headers: []job.Header{{Name: "X-Token", Value: "t0k3n"}}})
	if err != nil {
		t.Fatal(err)
	}
	if ra.Size() != 4096 || len(seen) != 1 || strings.Contains(seen[0], "t0k3n") {
		t.Errorf("size %d requests %q", ra.Size(), seen)
	}
}
