package tokencache

import (
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

func TestCache(t *testing.T) {
	c := New(5 * time.Second)
	t0 := time.Unix(1000, 0)
	h := []byte("hash")
	if _, gen, ok := c.Get(h, t0); ok {
		t.Fatal("hit in an empty cache")
	} else {
		c.Put(h, store.Server{ID: 7, Name: "ns1"}, t0, gen)
	}
	if sv, _, ok := c.Get(h, t0.Add(4*time.Second)); !ok || sv.ID != 7 {
		t.Fatalf("miss: %+v", sv)
	}
	if _, _, ok := c.Get(h, t0.Add(5*time.Second)); ok {
		t.Fatal("hit after the TTL")
	}
	// A write to the server forgets it.
	_, gen, _ := c.Get(h, t0)
	c.Put(h, store.Server{ID: 7}, t0, gen)
	c.Forget(7)
	if _, _, ok := c.Get(h, t0); ok {
		t.Fatal("hit after Forget")
	}
	// A read overtaken by a write is not remembered.
	_, gen, _ = c.Get(h, t0)
	c.Forget(7)
	c.Put(h, store.Server{ID: 7}, t0, gen)
	if _, _, ok := c.Get(h, t0); ok {
		t.Fatal("a read older than a write was cached")
	}
	// A server's new token replaces its old entry.
	_, gen, _ = c.Get(h, t0)
	c.Put(h, store.Server{ID: 7}, t0, gen)
	c.Put([]byte("new"), store.Server{ID: 7}, t0, gen)
	if _, _, ok := c.Get(h, t0); ok {
		t.Fatal("old token still cached")
	}
	if _, _, ok := New(0).Get(h, t0); ok {
		t.Fatal("TTL 0 caches")
	}
}
