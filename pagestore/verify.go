package pagestore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
)

// VerifyResult reports a verification. Problems are corruption; orphans
// and unreferenced chunks are normal debris that gc reclaims.
type VerifyResult struct {
	Objects int   `json:"objects"`
	Chunks  int   `json:"chunks"`
	Bytes   int64 `json:"bytes"` // uncompressed bytes verified
	// Unreferenced chunks are in the catalog but reachable from no root.
	Unreferenced int `json:"unreferenced_chunks"`
	// OrphanBytes is crash debris past the committed end of packs;
	// OrphanFiles are pack files the catalog does not know.
	OrphanBytes int64    `json:"orphan_bytes"`
	OrphanFiles []string `json:"orphan_files,omitempty"`
	Problems    []string `json:"problems,omitempty"`
}

// OK reports whether no problem was found.
func (r *VerifyResult) OK() bool { return len(r.Problems) == 0 }

// Verify checks the whole store: every object's references resolve, every
// chunk's record is where the catalog says, its CRC-32C matches, it
// decompresses to its recorded length and its SHA-256 equals its address.
// progress, if set, is called with chunks done and total.
func (s *Store) Verify(ctx context.Context, progress func(done, total int)) (*VerifyResult, error) {
	res := &VerifyResult{}
	problem := func(format string, a ...any) { res.Problems = append(res.Problems, fmt.Sprintf(format, a...)) }
	var chunks []chunkRef
	var packs map[uint32]int64
	referenced := map[catalog.Hash]bool{}
	err := s.cat.View(func(tx *catalog.Tx) error {
		var err error
		if packs, err = tx.Packs(); err != nil {
			return err
		}
		if err := tx.ForEachChunk(func(h catalog.Hash, loc catalog.Loc) error {
			chunks = append(chunks, chunkRef{h: h, loc: loc})
			return nil
		}); err != nil {
			return err
		}
		verifyObjects(tx, res, referenced, problem)
		leases, err := tx.Leases()
		if err != nil {
			return err
		}
		now := time.Now()
		for _, l := range leases {
			if !l.Live(now) {
				continue
			}
			for _, h := range l.Chunks {
				referenced[h] = true
			}
		}
		return nil
	})
	if err != nil {
		problem("catalog: %v", err)
		return res, nil
	}

	// Packs against the directory.
	sizes := map[uint32]int64{}
	for id, committed := range packs {
		fi, err := os.Stat(s.packPath(id))
		if err != nil {
			problem("pack %d: %v", id, err)
			continue
		}
		sizes[id] = fi.Size()
		switch {
		case fi.Size() < committed:
			problem("pack %d: %d bytes, but %d are committed (truncated)", id, fi.Size(), committed)
		case fi.Size() > committed:
			res.OrphanBytes += fi.Size() - committed
		}
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, chunksSubdir))
	if err != nil {
		problem("chunks directory: %v", err)
	}
	for _, e := range entries {
		if id, ok := parsePackName(e.Name()); ok {
			if _, known := packs[id]; !known {
				res.OrphanFiles = append(res.OrphanFiles, e.Name())
			}
		}
	}

	// Every chunk, in disk order, on all cores.
	sort.Slice(chunks, func(i, j int) bool {
		a, b := chunks[i].loc, chunks[j].loc
		return a.Pack < b.Pack || a.Pack == b.Pack && a.Offset < b.Offset
	})
	res.Chunks = len(chunks)
	for _, c := range chunks {
		if !referenced[c.h] {
			res.Unreferenced++
		}
	}
	var mu sync.Mutex
	var done int
	work := make(chan chunkRef, 64)
	var wg sync.WaitGroup
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				msg := ""
				if committed, ok := packs[c.loc.Pack]; !ok {
					msg = fmt.Sprintf("chunk %s: names unknown pack %d", c.h.Short(), c.loc.Pack)
				} else if end := c.loc.Offset + headerSize + int64(c.loc.CLen); end > committed {
					msg = fmt.Sprintf("chunk %s: ends at %d, past pack %d's committed %d", c.h.Short(), end, c.loc.Pack, committed)
				} else if _, err := s.decodeChunk(c.h, c.loc, true); err != nil {
					msg = err.Error()
				}
				mu.Lock()
				if msg != "" {
					problem("%s", msg)
				}
				res.Bytes += int64(c.loc.ULen)
				done++
				if progress != nil && (done%1024 == 0 || done == len(chunks)) {
					progress(done, len(chunks))
				}
				mu.Unlock()
			}
		}()
	}
	for _, c := range chunks {
		if ctx.Err() != nil {
			break
		}
		work <- c
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if progress != nil && len(chunks) == 0 {
		progress(0, 0)
	}
	sort.Strings(res.Problems)
	return res, nil
}

// verifyObjects checks that every object's references resolve and marks
// the chunks it reaches.
func verifyObjects(tx *catalog.Tx, res *VerifyResult, referenced map[catalog.Hash]bool, problem func(string, ...any)) {
	images, err := tx.Images()
	if err != nil {
		problem("images: %v", err)
	}
	for _, ii := range images {
		res.Objects++
		img, err := tx.Image(ii.Name)
		if err != nil {
			problem("%v", err)
			continue
		}
		for i, h := range img.Chunks {
			if h.IsZero() {
				continue
			}
			referenced[h] = true
			if !tx.HasChunk(h) {
				problem("image %q: chunk %d (%s) is missing", ii.Name, i, h.Short())
			}
		}
	}
	snaps, err := tx.Snapshots()
	if err != nil {
		problem("snapshots: %v", err)
	}
	for _, si := range snaps {
		res.Objects++
		if _, err := tx.Chain(si.Name); err != nil {
			problem("%v", err)
		}
		snap, err := tx.Snapshot(si.Name)
		if err != nil {
			problem("%v", err)
			continue
		}
		locs := make([]catalog.Loc, len(snap.Chunks))
		for i, h := range snap.Chunks {
			referenced[h] = true
			loc, err := tx.Chunk(h)
			if err != nil {
				problem("snapshot %q: chunk %s is missing", si.Name, h.Short())
				continue
			}
			locs[i] = loc
		}
		for _, e := range snap.Extents {
			if e.Chunk == catalog.ZeroChunk || locs[e.Chunk].ULen == 0 {
				continue
			}
			if int64(e.Off+e.Count)*pageSize > int64(locs[e.Chunk].ULen) {
				problem("snapshot %q: extent at page %d overruns chunk %s", si.Name, e.Page, snap.Chunks[e.Chunk].Short())
			}
		}
		for _, p := range snap.WorkingSet {
			if int64(p) >= snap.Pages() {
				problem("snapshot %q: working-set page %d beyond memory", si.Name, p)
				break
			}
		}
	}
	fns, err := tx.Functions()
	if err != nil {
		problem("functions: %v", err)
	}
	for _, f := range fns {
		for _, r := range f.Refs() {
			kind, name, _ := strings.Cut(string(r), "/")
			if tx.Exists(name) != kind {
				problem("function %q: %s %q is missing", f.Name, kind, name)
			}
		}
	}
}
