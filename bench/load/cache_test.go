package load

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/open"
)

// TestCacheScenario is the cache scenario scaled for CI: 40 agents of one
// customer, a 24 MiB image, through a real control plane (in process,
// SQLite, 127.0.0.1) with an image cache: the origin sends the image once
// and every agent's hash is the image's; without the cache, the origin
// sends it once per agent.
func TestCacheScenario(t *testing.T) {
	ctx := context.Background()
	defer func(d time.Duration) { cacheProgressEvery = d }(cacheProgressEvery)
	cacheProgressEvery = 20 * time.Millisecond
	for _, withCache := range []bool{true, false} {
		db := filepath.Join(t.TempDir(), "byoi.db")
		st, keys, err := open.Store(ctx, db, "")
		if err != nil {
			t.Fatal(err)
		}
		cfg := controlplane.Config{Store: st, Keys: keys}
		if withCache {
			c, err := imagecache.Open(imagecache.Config{Dir: t.TempDir(), Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			cfg.ImageCache = c
		}
		srv, err := controlplane.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(srv.Handler())
		c, err := parseCacheFlags([]string{"--db", db, "--url", ts.URL, "--agents", "40", "--image-size", "24MiB", "--duration", "2m",
			"--pid", "self=" + strconv.Itoa(os.Getpid())})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		res, err := runCache(ctx, c, &out)
		ts.Close()
		fc, ferr := st.FleetCounts(ctx, time.Now())
		st.Close()
		if ferr != nil {
			t.Fatal(ferr)
		}
		// Every agent's progress and final events were accepted: its
		// deployment ended done.
		if fc.Tasks[store.TaskDone] != 40 {
			t.Errorf("cache %v: tasks by status %v, want 40 done", withCache, fc.Tasks)
		}
		if err != nil {
			t.Fatalf("cache %v: %v\n%s", withCache, err, out.String())
		}
		t.Logf("with cache %v:\n%s", withCache, out.String())
		if res.OK != 40 || res.Mismatched != 0 || res.Failed != 0 || res.Delivered != 40*24<<20 {
			t.Errorf("cache %v: %+v", withCache, res)
		}
		wantReqs, wantBytes, wantVia := int64(1), int64(24<<20), 40
		if !withCache {
			wantReqs, wantBytes, wantVia = 40, 40*24<<20, 0
		}
		if res.OriginRequests != wantReqs || res.OriginBytes != wantBytes || res.ViaCache != wantVia || res.FellBack != 0 {
			t.Errorf("cache %v: origin %d requests %d bytes, %d via the cache, %d fell back; want %d, %d, %d, 0",
				withCache, res.OriginRequests, res.OriginBytes, res.ViaCache, res.FellBack, wantReqs, wantBytes, wantVia)
		}
		for _, want := range []string{"received exactly the image", "GiB/s aggregate", "memory self"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("report lacks %q", want)
			}
		}
	}
}

func TestCacheFlags(t *testing.T) {
	for _, args := range [][]string{{"--agents", "0"}, {"--agents", "2001"}, {"--image-size", "9GiB"}, {"--image-size", "x"}, {"--duration", "31m"}} {
		if _, err := parseCacheFlags(args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	c, err := parseCacheFlags([]string{"--image-size", "512MiB"})
	if err != nil || c.imageSize != 512<<20 || c.agents != 200 {
		t.Errorf("%+v %v", c, err)
	}
}
