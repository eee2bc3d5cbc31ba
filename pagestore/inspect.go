package pagestore

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
)

// ObjectInfo describes a stored image or memory snapshot: what
// `snapstore inspect --json` prints.
type ObjectInfo struct {
	Name string `json:"name"`
	// Type is "image" or "snapshot".
	Type        string            `json:"type"`
	Kind        catalog.Kind      `json:"kind,omitempty"`
	Parent      string            `json:"parent,omitempty"`
	ParentChain []string          `json:"parent_chain,omitempty"`
	Created     time.Time         `json:"created"`
	Labels      map[string]string `json:"labels,omitempty"`
	// LogicalBytes is the size of the image or of guest memory.
	LogicalBytes int64 `json:"logical_bytes"`
	// ChunkSize is the image chunk size or the memory granularity.
	ChunkSize int   `json:"chunk_size"`
	Pages     int64 `json:"pages"`
	// ZeroPages are 4 KiB pages that are zero (resolved through the parent
	// chain for a snapshot); they are recorded, not stored.
	ZeroPages int64 `json:"zero_pages"`
	// LayerPages are the pages this snapshot layer records itself (data or
	// zero); the rest come from its parent. Equal to Pages minus implicit
	// zeros for an image or base snapshot.
	LayerPages int64 `json:"layer_pages"`
	// Chunks is the number of distinct chunks the object (layer) references,
	// split into those no other object references and those shared.
	Chunks       int `json:"chunks"`
	UniqueChunks int `json:"unique_chunks"`
	SharedChunks int `json:"shared_chunks"`
	// ReferencedBytes counts the non-zero bytes the object's chunk
	// references stand for, repeats included.
	ReferencedBytes int64 `json:"referenced_bytes"`
	// DataBytes is the uncompressed size of the distinct chunks.
	DataBytes int64 `json:"data_bytes"`
	// StoredBytes is what the distinct chunks occupy on disk (compressed,
	// with record headers); UniqueStoredBytes what removing the object
	// would free.
	StoredBytes       int64 `json:"stored_bytes"`
	UniqueStoredBytes int64 `json:"unique_stored_bytes"`
	// CompressionRatio is DataBytes / StoredBytes.
	CompressionRatio float64 `json:"compression_ratio"`
	// DedupRatio is ReferencedBytes / DataBytes: how much repeated content
	// within the object was stored once.
	DedupRatio      float64        `json:"dedup_ratio"`
	WorkingSetPages int            `json:"working_set_pages,omitempty"`
	Codecs          map[string]int `json:"codecs,omitempty"`
}

// objectChunks is what one object (image, or snapshot layer) references.
type objectChunks struct {
	ref    catalog.ObjectRef
	chunks []catalog.Hash // distinct, non-zero
}

// allObjects loads every image and snapshot layer's distinct chunks.
func allObjects(tx *catalog.Tx) ([]objectChunks, error) {
	var out []objectChunks
	images, err := tx.Images()
	if err != nil {
		return nil, err
	}
	for _, ii := range images {
		img, err := tx.Image(ii.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, objectChunks{ref: catalog.ImageRef(ii.Name), chunks: distinct(img.Chunks)})
	}
	snaps, err := tx.Snapshots()
	if err != nil {
		return nil, err
	}
	for _, si := range snaps {
		s, err := tx.Snapshot(si.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, objectChunks{ref: catalog.SnapshotRef(si.Name), chunks: distinct(s.Chunks)})
	}
	return out, nil
}

func distinct(hs []catalog.Hash) []catalog.Hash {
	seen := make(map[catalog.Hash]struct{}, len(hs))
	out := make([]catalog.Hash, 0, len(hs))
	for _, h := range hs {
		if h.IsZero() {
			continue
		}
		if _, ok := seen[h]; !ok {
			seen[h] = struct{}{}
			out = append(out, h)
		}
	}
	return out
}

// List describes every image and snapshot, in name order. Sharing is
// computed across the whole store.
func (s *Store) List() ([]ObjectInfo, error) {
	var out []ObjectInfo
	err := s.cat.View(func(tx *catalog.Tx) error {
		objs, err := allObjects(tx)
		if err != nil {
			return err
		}
		owners := countOwners(objs)
		for _, o := range objs {
			info, err := describe(tx, o, owners)
			if err != nil {
				return err
			}
			out = append(out, *info)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// Inspect describes image or snapshot name.
func (s *Store) Inspect(name string) (*ObjectInfo, error) {
	var info *ObjectInfo
	err := s.cat.View(func(tx *catalog.Tx) error {
		var ref catalog.ObjectRef
		switch tx.Exists(name) {
		case "image":
			ref = catalog.ImageRef(name)
		case "snapshot":
			ref = catalog.SnapshotRef(name)
		default:
			return fmt.Errorf("%q: %w", name, catalog.ErrNotFound)
		}
		objs, err := allObjects(tx)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if o.ref == ref {
				info, err = describe(tx, o, countOwners(objs))
				return err
			}
		}
		return fmt.Errorf("%q: %w", name, catalog.ErrNotFound)
	})
	return info, err
}

func countOwners(objs []objectChunks) map[catalog.Hash]int {
	owners := map[catalog.Hash]int{}
	for _, o := range objs {
		for _, h := range o.chunks {
			owners[h]++
		}
	}
	return owners
}

func describe(tx *catalog.Tx, o objectChunks, owners map[catalog.Hash]int) (*ObjectInfo, error) {
	info := &ObjectInfo{Codecs: map[string]int{}}
	kind, name, _ := strings.Cut(string(o.ref), "/")
	if kind == "image" {
		img, err := tx.Image(name)
		if err != nil {
			return nil, err
		}
		info.Name, info.Type, info.Created, info.Labels = name, "image", img.Created, img.Labels
		info.LogicalBytes, info.ChunkSize = img.Size, img.ChunkSize
		info.Pages = (img.Size + pageSize - 1) / pageSize
		for i, h := range img.Chunks {
			n := int64(min(int64(img.ChunkSize), img.Size-int64(i)*int64(img.ChunkSize)))
			if h.IsZero() {
				info.ZeroPages += (n + pageSize - 1) / pageSize
			} else {
				info.ReferencedBytes += n
			}
		}
		info.LayerPages = info.Pages - info.ZeroPages
	} else {
		snap, err := tx.Snapshot(name)
		if err != nil {
			return nil, err
		}
		chain, err := tx.Chain(name)
		if err != nil {
			return nil, err
		}
		info.Name, info.Type, info.Kind, info.Parent = name, "snapshot", snap.Kind, snap.Parent
		info.Created, info.Labels = snap.Created, snap.Labels
		for _, c := range chain[1:] {
			info.ParentChain = append(info.ParentChain, c.Name)
		}
		info.LogicalBytes, info.ChunkSize, info.Pages = snap.MemSize, snap.Granularity, snap.Pages()
		info.WorkingSetPages = len(snap.WorkingSet)
		zero, err := resolvedZeroPages(tx, chain)
		if err != nil {
			return nil, err
		}
		info.ZeroPages = zero
		for _, e := range snap.Extents {
			info.LayerPages += int64(e.Count)
			if e.Chunk != catalog.ZeroChunk {
				info.ReferencedBytes += int64(e.Count) * pageSize
			}
		}
	}
	info.Chunks = len(o.chunks)
	for _, h := range o.chunks {
		loc, err := tx.Chunk(h)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", o.ref, err, ErrCorrupt)
		}
		stored := int64(headerSize) + int64(loc.CLen)
		info.DataBytes += int64(loc.ULen)
		info.StoredBytes += stored
		info.Codecs[Codec(loc.Codec).String()]++
		if owners[h] <= 1 {
			info.UniqueChunks++
			info.UniqueStoredBytes += stored
		} else {
			info.SharedChunks++
		}
	}
	if info.StoredBytes > 0 {
		info.CompressionRatio = float64(info.DataBytes) / float64(info.StoredBytes)
	}
	if info.DataBytes > 0 {
		info.DedupRatio = float64(info.ReferencedBytes) / float64(info.DataBytes)
	}
	return info, nil
}

// resolvedZeroPages counts the zero pages of a snapshot through its chain.
func resolvedZeroPages(tx *catalog.Tx, chain []catalog.SnapshotInfo) (int64, error) {
	pages := chain[0].Pages()
	// state per page: 0 unresolved, 1 zero, 2 data; leaf first wins.
	state := make([]uint8, pages)
	for _, c := range chain {
		layer, err := tx.Snapshot(c.Name)
		if err != nil {
			return 0, err
		}
		for _, e := range layer.Extents {
			v := uint8(2)
			if e.Chunk == catalog.ZeroChunk {
				v = 1
			}
			for p := e.Page; p < e.End(); p++ {
				if state[p] == 0 {
					state[p] = v
				}
			}
		}
	}
	var zero int64
	for _, v := range state {
		if v != 2 {
			zero++
		}
	}
	return zero, nil
}

// StoreStats summarizes the whole store.
type StoreStats struct {
	Dir       string `json:"dir"`
	Images    int    `json:"images"`
	Snapshots int    `json:"snapshots"`
	Functions int    `json:"functions"`
	Leases    int    `json:"leases"`
	Chunks    int    `json:"chunks"`
	Packs     int    `json:"packs"`
	// PackBytes is the size of the pack files on disk.
	PackBytes int64 `json:"pack_bytes"`
}

// Stats summarizes the store.
func (s *Store) Stats() (*StoreStats, error) {
	st := &StoreStats{Dir: s.dir}
	err := s.cat.View(func(tx *catalog.Tx) error {
		images, err := tx.Images()
		if err != nil {
			return err
		}
		snaps, err := tx.Snapshots()
		if err != nil {
			return err
		}
		fns, err := tx.Functions()
		if err != nil {
			return err
		}
		leases, err := tx.Leases()
		if err != nil {
			return err
		}
		st.Images, st.Snapshots, st.Functions, st.Leases = len(images), len(snaps), len(fns), len(leases)
		st.Chunks = tx.ChunkCount()
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries, _ := os.ReadDir(filepath.Join(s.dir, chunksSubdir))
	for _, e := range entries {
		if _, ok := parsePackName(e.Name()); ok {
			st.Packs++
			if fi, err := e.Info(); err == nil {
				st.PackBytes += fi.Size()
			}
		}
	}
	return st, nil
}

// Remove deletes image or snapshot name from the catalog and returns its
// type. Its chunks stay until gc finds them unreferenced.
func (s *Store) Remove(name string) (string, error) {
	if s.readOnly {
		return "", ErrReadOnly
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var kind string
	err := s.cat.Update(func(tx *catalog.Tx) error {
		switch kind = tx.Exists(name); kind {
		case "image":
			return tx.DeleteImage(name)
		case "snapshot":
			return tx.DeleteSnapshot(name)
		}
		return fmt.Errorf("%q: %w", name, catalog.ErrNotFound)
	})
	return kind, err
}
