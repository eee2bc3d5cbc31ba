package pagestore

import (
	"container/list"
	"sync"

	"github.com/snapfaas/snapfaas/catalog"
)

// cache is a bounded LRU of decompressed, verified chunks, keyed by hash.
// Values are shared: callers must not modify them.
type cache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	ll    *list.List
	items map[catalog.Hash]*list.Element

	hits, misses uint64
}

type cacheEntry struct {
	h    catalog.Hash
	data []byte
}

func newCache(max int64) *cache {
	return &cache{max: max, ll: list.New(), items: map[catalog.Hash]*list.Element{}}
}

func (c *cache) get(h catalog.Hash) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[h]; ok {
		c.ll.MoveToFront(e)
		c.hits++
		return e.Value.(*cacheEntry).data, true
	}
	c.misses++
	return nil, false
}

// has reports whether h is cached, without touching its recency.
func (c *cache) has(h catalog.Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.items[h]
	return ok
}

func (c *cache) add(h catalog.Hash, data []byte) {
	if int64(len(data)) > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[h]; ok {
		c.ll.MoveToFront(e)
		return
	}
	c.items[h] = c.ll.PushFront(&cacheEntry{h: h, data: data})
	c.size += int64(len(data))
	for c.size > c.max {
		e := c.ll.Back()
		ce := e.Value.(*cacheEntry)
		c.ll.Remove(e)
		delete(c.items, ce.h)
		c.size -= int64(len(ce.data))
	}
}

func (c *cache) remove(h catalog.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[h]; ok {
		c.ll.Remove(e)
		delete(c.items, h)
		c.size -= int64(len(e.Value.(*cacheEntry).data))
	}
}

// CacheStats reports the read cache's use.
type CacheStats struct {
	Bytes, Max   int64
	Entries      int
	Hits, Misses uint64
}

func (c *cache) stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Bytes: c.size, Max: c.max, Entries: len(c.items), Hits: c.hits, Misses: c.misses}
}
