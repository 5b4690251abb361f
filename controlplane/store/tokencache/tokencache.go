// Package tokencache remembers for a few seconds which server an agent
// token opens, so that an agent's event (one every few seconds from each
// of thousands of servers) costs no database read to authenticate.
//
// What it may return stale: the server a token opened up to TTL ago. A
// store forgets a server's entry as soon as it writes that server's row
// itself (new token, boot, inventory, a deployment's start or end), so
// within one process nothing is stale; a token replaced by another
// process (the admin command, another byoi-api instance) stops working
// there within TTL. Agent handlers use only the server's id and name,
// which never change.
package tokencache

import (
	"sync"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// TTL is how long an entry is trusted.
const TTL = 5 * time.Second

// maxEntries bounds the memory: past it the cache starts over.
const maxEntries = 200_000

// Cache maps token hashes to servers. The zero value is not usable: use New.
type Cache struct {
	mu       sync.RWMutex // thousands of agents read at once
	ttl      time.Duration
	byHash   map[string]entry
	byServer map[int64]string
	gen      uint64 // moved by every Forget
}

type entry struct {
	sv  store.Server
	exp time.Time
}

// New returns an empty cache trusting entries for ttl (0: caches nothing).
func New(ttl time.Duration) *Cache {
	return &Cache{ttl: ttl, byHash: map[string]entry{}, byServer: map[int64]string{}}
}

// Get returns the server hash opened, if known and fresh; otherwise the
// generation to give Put with what the database says.
func (c *Cache) Get(hash []byte, now time.Time) (store.Server, uint64, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.byHash[string(hash)]
	if !ok || !now.Before(e.exp) {
		return store.Server{}, c.gen, false
	}
	return e.sv, c.gen, true
}

// Put remembers that hash opens sv, read from the database at now after
// Get returned gen. A read that a Forget overtook is not remembered: it
// may hold what that write replaced.
func (c *Cache) Put(hash []byte, sv store.Server, now time.Time, gen uint64) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.byHash) >= maxEntries {
		clear(c.byHash)
		clear(c.byServer)
	}
	if old, ok := c.byServer[sv.ID]; ok {
		delete(c.byHash, old)
	}
	c.byHash[string(hash)] = entry{sv: sv, exp: now.Add(c.ttl)}
	c.byServer[sv.ID] = string(hash)
}

// Forget drops the server's entry (its row was written).
func (c *Cache) Forget(serverID int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if h, ok := c.byServer[serverID]; ok {
		delete(c.byHash, h)
		delete(c.byServer, serverID)
	}
}
