package pagestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/internal/progress"
)

// GCOptions configure GC.
type GCOptions struct {
	// DryRun reports what would be done and changes nothing.
	DryRun bool
	// RewriteThreshold is the fraction of a pack's bytes that must be dead
	// before gc copies its live chunks into a new pack to reclaim space
	// (default 0.2). Dead chunks leave the catalog regardless; a pack with
	// no live chunk is always deleted, and debris past a pack's committed
	// length is always truncated. A negative value rewrites any pack with
	// dead bytes.
	RewriteThreshold float64
	Progress         func(msg string)
}

// GCResult reports a collection.
type GCResult struct {
	DryRun      bool  `json:"dry_run"`
	LiveChunks  int   `json:"live_chunks"`
	DeadChunks  int   `json:"dead_chunks"`
	DeadBytes   int64 `json:"dead_bytes"`
	StaleLeases int   `json:"stale_leases"`
	// Packs deleted whole, rewritten to drop dead chunks, truncated to
	// drop crash debris; pack files the catalog never knew.
	DeletedPacks   []uint32 `json:"deleted_packs,omitempty"`
	RewrittenPacks []uint32 `json:"rewritten_packs,omitempty"`
	TruncatedPacks []uint32 `json:"truncated_packs,omitempty"`
	OrphanFiles    []string `json:"orphan_files,omitempty"`
	// ReclaimedBytes is the disk space freed (or that would be).
	ReclaimedBytes int64 `json:"reclaimed_bytes"`
	// Dead lists the chunks removed from the catalog.
	Dead []catalog.Hash `json:"-"`
}

type packPlan struct {
	id        uint32
	committed int64
	fileSize  int64
	live      []chunkRef
	liveBytes int64
	// deadBytes are the committed bytes no live chunk holds: chunks dead
	// now and those an earlier gc dropped from the catalog without
	// rewriting the pack (below the threshold, or it crashed first).
	deadBytes int64
}

// GC removes every chunk that no image, snapshot or live lease references
// (mark and sweep from those roots), drops stale leases, and reclaims the
// disk space of dead chunks and crash debris. It never removes a chunk a
// root can still reach.
func (s *Store) GC(ctx context.Context, o GCOptions) (*GCResult, error) {
	if s.readOnly && !o.DryRun {
		return nil, ErrReadOnly
	}
	if o.RewriteThreshold == 0 {
		o.RewriteThreshold = 0.2
	}
	say := func(format string, a ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf(format, a...))
		}
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.pw != nil {
		// Everything it wrote is committed; reopened on the next write.
		if err := s.pw.close(); err != nil {
			return nil, err
		}
		s.pw = nil
	}
	res := &GCResult{DryRun: o.DryRun}

	// Mark.
	live := map[catalog.Hash]bool{}
	var stale []string
	plans := map[uint32]*packPlan{}
	err := s.cat.View(func(tx *catalog.Tx) error {
		objs, err := allObjects(tx)
		if err != nil {
			return err
		}
		for _, o := range objs {
			for _, h := range o.chunks {
				live[h] = true
			}
		}
		leases, err := tx.Leases()
		if err != nil {
			return err
		}
		now := time.Now()
		for _, l := range leases {
			if !l.Live(now) {
				stale = append(stale, l.ID)
				continue
			}
			for _, h := range l.Chunks {
				live[h] = true
			}
		}
		packs, err := tx.Packs()
		if err != nil {
			return err
		}
		for id, n := range packs {
			plans[id] = &packPlan{id: id, committed: n}
		}
		// Sweep candidates.
		return tx.ForEachChunk(func(h catalog.Hash, loc catalog.Loc) error {
			p := plans[loc.Pack]
			if p == nil {
				return fmt.Errorf("chunk %s names unknown pack %d: %w", h.Short(), loc.Pack, ErrCorrupt)
			}
			size := int64(headerSize) + int64(loc.CLen)
			if live[h] {
				res.LiveChunks++
				p.live = append(p.live, chunkRef{h: h, loc: loc})
				p.liveBytes += size
			} else {
				res.DeadChunks++
				res.DeadBytes += size
				res.Dead = append(res.Dead, h)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("gc: mark: %w", err)
	}
	res.StaleLeases = len(stale)
	say("mark: %d live chunks, %d dead (%s), %d stale leases", res.LiveChunks, res.DeadChunks, progress.Bytes(res.DeadBytes), len(stale))

	// Decide per pack.
	var del, rewrite, trunc []*packPlan
	for _, p := range sortedPlans(plans) {
		fi, err := os.Stat(s.packPath(p.id))
		if err != nil {
			return nil, fmt.Errorf("gc: pack %d: %w: %w", p.id, err, ErrCorrupt)
		}
		p.fileSize = fi.Size()
		p.deadBytes = p.committed - p.liveBytes
		switch {
		case len(p.live) == 0:
			del = append(del, p)
			res.DeletedPacks = append(res.DeletedPacks, p.id)
			res.ReclaimedBytes += p.fileSize
		case p.deadBytes > 0 && (o.RewriteThreshold < 0 || float64(p.deadBytes+max(0, p.fileSize-p.committed)) >= o.RewriteThreshold*float64(p.fileSize)):
			rewrite = append(rewrite, p)
			res.RewrittenPacks = append(res.RewrittenPacks, p.id)
			res.ReclaimedBytes += p.fileSize - p.liveBytes
		case p.fileSize > p.committed:
			trunc = append(trunc, p)
			res.TruncatedPacks = append(res.TruncatedPacks, p.id)
			res.ReclaimedBytes += p.fileSize - p.committed
		}
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, chunksSubdir))
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	for _, e := range entries {
		id, ok := parsePackName(e.Name())
		if !ok || plans[id] != nil {
			continue
		}
		res.OrphanFiles = append(res.OrphanFiles, e.Name())
		if fi, err := e.Info(); err == nil {
			res.ReclaimedBytes += fi.Size()
		}
	}
	if o.DryRun {
		return res, nil
	}

	// Sweep: the catalog first, so nothing it names is ever missing.
	deadSet := map[uint32]bool{}
	for _, p := range del {
		deadSet[p.id] = true
	}
	err = s.cat.Update(func(tx *catalog.Tx) error {
		for _, h := range res.Dead {
			if err := tx.DeleteChunk(h); err != nil {
				return err
			}
		}
		for _, id := range stale {
			if err := tx.DeleteLease(id); err != nil {
				return err
			}
		}
		for id := range deadSet {
			if err := tx.DeletePack(id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: sweep: %w", err)
	}
	crashPoint("gc/swept")
	for _, h := range res.Dead {
		s.cache.remove(h)
	}
	for _, p := range del {
		s.forgetPack(p.id)
		if err := os.Remove(s.packPath(p.id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("gc: %w", err)
		}
		crashPoint("gc/pack-deleted")
		say("deleted pack %d (%s)", p.id, progress.Bytes(p.fileSize))
	}
	for _, name := range res.OrphanFiles {
		if err := os.Remove(filepath.Join(s.dir, chunksSubdir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("gc: %w", err)
		}
		crashPoint("gc/orphan-deleted")
		say("deleted orphan file %s", name)
	}
	for _, p := range trunc {
		if err := os.Truncate(s.packPath(p.id), p.committed); err != nil {
			return res, fmt.Errorf("gc: pack %d: %w", p.id, err)
		}
		crashPoint("gc/pack-truncated")
		say("truncated pack %d by %s of crash debris", p.id, progress.Bytes(p.fileSize-p.committed))
	}
	for _, p := range rewrite {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := s.rewritePack(p); err != nil {
			return res, fmt.Errorf("gc: rewrite pack %d: %w", p.id, err)
		}
		say("rewrote pack %d: kept %s of %s", p.id, progress.Bytes(p.liveBytes), progress.Bytes(p.fileSize))
	}
	if len(del)+len(res.OrphanFiles) > 0 {
		_ = syncDir(filepath.Join(s.dir, chunksSubdir))
		crashPoint("gc/dir-synced")
	}
	return res, nil
}

func sortedPlans(m map[uint32]*packPlan) []*packPlan {
	out := make([]*packPlan, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// rewritePack copies a pack's live records into a new pack, commits their
// new locations, then deletes the old file. A crash before the commit
// leaves the new file as an orphan; after it, the old one.
func (s *Store) rewritePack(p *packPlan) error {
	sort.Slice(p.live, func(i, j int) bool { return p.live[i].loc.Offset < p.live[j].loc.Offset })
	pw, err := s.newPack()
	if err != nil {
		return err
	}
	moved := make(map[catalog.Hash]catalog.Loc, len(p.live))
	for _, c := range p.live {
		rec, err := s.readRecord(c.h, c.loc)
		if err != nil {
			return err
		}
		off, err := pw.append(rec)
		if err != nil {
			return err
		}
		crashPoint("gc/record-copied")
		loc := c.loc
		loc.Pack, loc.Offset = pw.id, off
		moved[c.h] = loc
	}
	if err := pw.sync(); err != nil {
		return err
	}
	crashPoint("gc/rewrite-synced")
	err = s.cat.Update(func(tx *catalog.Tx) error {
		for h, loc := range moved {
			if err := tx.PutChunk(h, loc); err != nil {
				return err
			}
		}
		if err := tx.SetPack(pw.id, pw.size); err != nil {
			return err
		}
		return tx.DeletePack(p.id)
	})
	if err != nil {
		return err
	}
	crashPoint("gc/rewrite-committed")
	s.forgetPack(p.id)
	if err := os.Remove(s.packPath(p.id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	crashPoint("gc/old-pack-removed")
	return nil
}
