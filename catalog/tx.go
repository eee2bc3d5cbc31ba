package catalog

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tx is a catalog transaction. Values returned from a Tx are copies and
// stay valid after it ends.
type Tx struct {
	tx *bolt.Tx
}

func (t *Tx) bucket(name []byte) (*bolt.Bucket, error) {
	b := t.tx.Bucket(name)
	if b == nil {
		return nil, fmt.Errorf("bucket %s missing: %w", name, ErrCorrupt)
	}
	return b, nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

// ---- chunks and packs ----

// Chunk returns the location of chunk h.
func (t *Tx) Chunk(h Hash) (Loc, error) {
	b, err := t.bucket(bktChunks)
	if err != nil {
		return Loc{}, err
	}
	v := b.Get(h[:])
	if v == nil {
		return Loc{}, fmt.Errorf("chunk %s: %w", h.Short(), ErrNotFound)
	}
	return unmarshalLoc(v)
}

// HasChunk reports whether chunk h is recorded.
func (t *Tx) HasChunk(h Hash) bool {
	b := t.tx.Bucket(bktChunks)
	return b != nil && b.Get(h[:]) != nil
}

// PutChunk records (or moves) chunk h.
func (t *Tx) PutChunk(h Hash, l Loc) error {
	b, err := t.bucket(bktChunks)
	if err != nil {
		return err
	}
	return b.Put(h[:], l.marshal())
}

// DeleteChunk forgets chunk h.
func (t *Tx) DeleteChunk(h Hash) error {
	b, err := t.bucket(bktChunks)
	if err != nil {
		return err
	}
	return b.Delete(h[:])
}

// ForEachChunk calls fn for every chunk in hash order.
func (t *Tx) ForEachChunk(fn func(Hash, Loc) error) error {
	b, err := t.bucket(bktChunks)
	if err != nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		var h Hash
		if len(k) != len(h) {
			return fmt.Errorf("chunk key of %d bytes: %w", len(k), ErrCorrupt)
		}
		copy(h[:], k)
		l, err := unmarshalLoc(v)
		if err != nil {
			return fmt.Errorf("chunk %s: %w", h.Short(), err)
		}
		return fn(h, l)
	})
}

// ChunkCount returns the number of chunks recorded.
func (t *Tx) ChunkCount() int {
	b := t.tx.Bucket(bktChunks)
	if b == nil {
		return 0
	}
	return b.Stats().KeyN
}

// Packs returns every pack's committed length.
func (t *Tx) Packs() (map[uint32]int64, error) {
	b, err := t.bucket(bktPacks)
	if err != nil {
		return nil, err
	}
	m := map[uint32]int64{}
	err = b.ForEach(func(k, v []byte) error {
		if len(k) != 4 || len(v) != 8 {
			return fmt.Errorf("pack entry: %w", ErrCorrupt)
		}
		m[binary.BigEndian.Uint32(k)] = int64(binary.BigEndian.Uint64(v))
		return nil
	})
	return m, err
}

// SetPack records that the first length bytes of pack id are durable and
// vouched for.
func (t *Tx) SetPack(id uint32, length int64) error {
	b, err := t.bucket(bktPacks)
	if err != nil {
		return err
	}
	return b.Put(binary.BigEndian.AppendUint32(nil, id), binary.BigEndian.AppendUint64(nil, uint64(length)))
}

// DeletePack forgets pack id.
func (t *Tx) DeletePack(id uint32) error {
	b, err := t.bucket(bktPacks)
	if err != nil {
		return err
	}
	return b.Delete(binary.BigEndian.AppendUint32(nil, id))
}

// ---- names ----

// Exists reports which kind of object holds name: "image", "snapshot" or "".
func (t *Tx) Exists(name string) string {
	if b := t.tx.Bucket(bktImages); b != nil && b.Bucket([]byte(name)) != nil {
		return "image"
	}
	if b := t.tx.Bucket(bktSnapshots); b != nil && b.Bucket([]byte(name)) != nil {
		return "snapshot"
	}
	return ""
}

func (t *Tx) createObject(top []byte, name string) (*bolt.Bucket, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if kind := t.Exists(name); kind != "" {
		return nil, fmt.Errorf("%s %q: %w", kind, name, ErrExists)
	}
	b, err := t.bucket(top)
	if err != nil {
		return nil, err
	}
	return b.CreateBucket([]byte(name))
}

func getJSON(b *bolt.Bucket, key []byte, v any) error {
	raw := b.Get(key)
	if raw == nil {
		return fmt.Errorf("%s missing: %w", key, ErrCorrupt)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s: %v: %w", key, err, ErrCorrupt)
	}
	return nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// ---- images ----

func (t *Tx) imageBucket(name string) (*bolt.Bucket, error) {
	top, err := t.bucket(bktImages)
	if err != nil {
		return nil, err
	}
	b := top.Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return b, nil
}

// PutImage creates an image. The name must be free.
func (t *Tx) PutImage(img *Image) error {
	if want := chunkCount(img.Size, img.ChunkSize); int64(len(img.Chunks)) != want {
		return fmt.Errorf("image %q: %d chunks for size %d, want %d", img.Name, len(img.Chunks), img.Size, want)
	}
	b, err := t.createObject(bktImages, img.Name)
	if err != nil {
		return err
	}
	if err := putJSON(b, keyInfo, img.ImageInfo); err != nil {
		return err
	}
	return b.Put(keyChunks, marshalHashes(img.Chunks))
}

func chunkCount(size int64, chunkSize int) int64 {
	if chunkSize <= 0 {
		return -1
	}
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// ImageInfo returns an image's description without its chunk list.
func (t *Tx) ImageInfo(name string) (ImageInfo, error) {
	var info ImageInfo
	b, err := t.imageBucket(name)
	if err != nil {
		return info, err
	}
	if err := getJSON(b, keyInfo, &info); err != nil {
		return info, fmt.Errorf("image %q: %w", name, err)
	}
	return info, nil
}

// Image returns an image with its chunk list.
func (t *Tx) Image(name string) (*Image, error) {
	info, err := t.ImageInfo(name)
	if err != nil {
		return nil, err
	}
	b, _ := t.imageBucket(name)
	hs, err := unmarshalHashes(b.Get(keyChunks))
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	if want := chunkCount(info.Size, info.ChunkSize); int64(len(hs)) != want {
		return nil, fmt.Errorf("image %q: %d chunks for size %d, want %d: %w", name, len(hs), info.Size, want, ErrCorrupt)
	}
	return &Image{ImageInfo: info, Chunks: hs}, nil
}

// Images lists every image's description in name order.
func (t *Tx) Images() ([]ImageInfo, error) {
	top, err := t.bucket(bktImages)
	if err != nil {
		return nil, err
	}
	var out []ImageInfo
	err = top.ForEachBucket(func(k []byte) error {
		info, err := t.ImageInfo(string(k))
		if err != nil {
			return err
		}
		out = append(out, info)
		return nil
	})
	return out, err
}

// DeleteImage removes an image unless something still uses it.
func (t *Tx) DeleteImage(name string) error {
	if _, err := t.imageBucket(name); err != nil {
		return err
	}
	if err := t.checkUnused(ImageRef(name)); err != nil {
		return fmt.Errorf("image %q: %w", name, err)
	}
	top, _ := t.bucket(bktImages)
	return top.DeleteBucket([]byte(name))
}

// ---- snapshots ----

func (t *Tx) snapshotBucket(name string) (*bolt.Bucket, error) {
	top, err := t.bucket(bktSnapshots)
	if err != nil {
		return nil, err
	}
	b := top.Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	return b, nil
}

// PutSnapshot creates a snapshot. The name must be free and the parent, if
// any, must exist with the same memory size.
func (t *Tx) PutSnapshot(s *Snapshot) error {
	if !s.Kind.Valid() {
		return fmt.Errorf("snapshot %q: unknown kind %q", s.Name, s.Kind)
	}
	if s.MemSize <= 0 || s.MemSize%PageSize != 0 {
		return fmt.Errorf("snapshot %q: memory size %d is not a positive multiple of %d", s.Name, s.MemSize, PageSize)
	}
	if s.Kind == KindDiff && s.Parent == "" {
		return fmt.Errorf("snapshot %q: a diff snapshot needs a parent", s.Name)
	}
	if s.Parent != "" {
		p, err := t.SnapshotInfo(s.Parent)
		if err != nil {
			return fmt.Errorf("snapshot %q: parent: %w", s.Name, err)
		}
		if p.MemSize != s.MemSize {
			return fmt.Errorf("snapshot %q: memory size %d differs from parent %q's %d", s.Name, s.MemSize, s.Parent, p.MemSize)
		}
	}
	if err := checkExtents(s); err != nil {
		return fmt.Errorf("snapshot %q: %w", s.Name, err)
	}
	b, err := t.createObject(bktSnapshots, s.Name)
	if err != nil {
		return err
	}
	if err := putJSON(b, keyInfo, s.SnapshotInfo); err != nil {
		return err
	}
	for _, kv := range []struct {
		k, v []byte
	}{
		{keyChunks, marshalHashes(s.Chunks)},
		{keyExtents, marshalExtents(s.Extents)},
		{keyVMConfig, s.VMConfig},
		{keyVMState, s.VMState},
		{keyWorkingSet, marshalPages(s.WorkingSet)},
	} {
		if err := b.Put(kv.k, kv.v); err != nil {
			return err
		}
	}
	return nil
}

// checkExtents verifies that extents are sorted, disjoint, inside guest
// memory and point into the chunk table.
func checkExtents(s *Snapshot) error {
	pages := uint64(s.Pages())
	var prevEnd uint64
	for i, e := range s.Extents {
		switch {
		case e.Count == 0:
			return fmt.Errorf("extent %d is empty: %w", i, ErrCorrupt)
		case i > 0 && e.Page < prevEnd:
			return fmt.Errorf("extent %d overlaps or is out of order: %w", i, ErrCorrupt)
		case e.End() > pages:
			return fmt.Errorf("extent %d ends at page %d beyond memory (%d pages): %w", i, e.End(), pages, ErrCorrupt)
		case e.Chunk != ZeroChunk && (e.Chunk < 0 || int(e.Chunk) >= len(s.Chunks)):
			return fmt.Errorf("extent %d names chunk %d of %d: %w", i, e.Chunk, len(s.Chunks), ErrCorrupt)
		}
		prevEnd = e.End()
	}
	return nil
}

// SnapshotInfo returns a snapshot's description.
func (t *Tx) SnapshotInfo(name string) (SnapshotInfo, error) {
	var info SnapshotInfo
	b, err := t.snapshotBucket(name)
	if err != nil {
		return info, err
	}
	if err := getJSON(b, keyInfo, &info); err != nil {
		return info, fmt.Errorf("snapshot %q: %w", name, err)
	}
	return info, nil
}

// Snapshot returns a snapshot layer with everything stored on it.
func (t *Tx) Snapshot(name string) (*Snapshot, error) {
	info, err := t.SnapshotInfo(name)
	if err != nil {
		return nil, err
	}
	b, _ := t.snapshotBucket(name)
	s := &Snapshot{SnapshotInfo: info}
	if s.Chunks, err = unmarshalHashes(b.Get(keyChunks)); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	if s.Extents, err = unmarshalExtents(b.Get(keyExtents)); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	if s.WorkingSet, err = unmarshalPages(b.Get(keyWorkingSet)); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	s.VMConfig = clone(b.Get(keyVMConfig))
	s.VMState = clone(b.Get(keyVMState))
	if err := checkExtents(s); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	return s, nil
}

// Chain returns the snapshot's parent chain, the snapshot first.
func (t *Tx) Chain(name string) ([]SnapshotInfo, error) {
	var chain []SnapshotInfo
	seen := map[string]bool{}
	for n := name; n != ""; {
		if seen[n] {
			return nil, fmt.Errorf("snapshot %q: parent cycle at %q: %w", name, n, ErrCorrupt)
		}
		seen[n] = true
		info, err := t.SnapshotInfo(n)
		if err != nil {
			if len(chain) > 0 {
				return nil, fmt.Errorf("snapshot %q: parent of %q: %w", name, chain[len(chain)-1].Name, err)
			}
			return nil, err
		}
		chain = append(chain, info)
		n = info.Parent
	}
	return chain, nil
}

// Snapshots lists every snapshot's description in name order.
func (t *Tx) Snapshots() ([]SnapshotInfo, error) {
	top, err := t.bucket(bktSnapshots)
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	err = top.ForEachBucket(func(k []byte) error {
		info, err := t.SnapshotInfo(string(k))
		if err != nil {
			return err
		}
		out = append(out, info)
		return nil
	})
	return out, err
}

// SetWorkingSet replaces a snapshot's working set.
func (t *Tx) SetWorkingSet(name string, pages []uint32) error {
	info, err := t.SnapshotInfo(name)
	if err != nil {
		return err
	}
	for _, p := range pages {
		if int64(p) >= info.Pages() {
			return fmt.Errorf("snapshot %q: working-set page %d beyond memory (%d pages)", name, p, info.Pages())
		}
	}
	b, _ := t.snapshotBucket(name)
	return b.Put(keyWorkingSet, marshalPages(pages))
}

// SetVMState replaces a snapshot's VM configuration and state blobs.
func (t *Tx) SetVMState(name string, config, state []byte) error {
	b, err := t.snapshotBucket(name)
	if err != nil {
		return err
	}
	if err := b.Put(keyVMConfig, config); err != nil {
		return err
	}
	return b.Put(keyVMState, state)
}

// DeleteSnapshot removes a snapshot unless it has children, a function
// names it, or a live lease holds it.
func (t *Tx) DeleteSnapshot(name string) error {
	if _, err := t.snapshotBucket(name); err != nil {
		return err
	}
	all, err := t.Snapshots()
	if err != nil {
		return err
	}
	var children []string
	for _, s := range all {
		if s.Parent == name {
			children = append(children, s.Name)
		}
	}
	if len(children) > 0 {
		return fmt.Errorf("snapshot %q is the parent of %s: %w", name, strings.Join(children, ", "), ErrInUse)
	}
	if err := t.checkUnused(SnapshotRef(name)); err != nil {
		return fmt.Errorf("snapshot %q: %w", name, err)
	}
	top, _ := t.bucket(bktSnapshots)
	return top.DeleteBucket([]byte(name))
}

// checkUnused fails with ErrInUse if a function or lease names ref.
func (t *Tx) checkUnused(ref ObjectRef) error {
	fns, err := t.Functions()
	if err != nil {
		return err
	}
	for _, f := range fns {
		for _, r := range f.Refs() {
			if r == ref {
				return fmt.Errorf("function %q uses it: %w", f.Name, ErrInUse)
			}
		}
	}
	leases, err := t.bucket(bktLeases)
	if err != nil {
		return err
	}
	now := time.Now()
	return leases.ForEachBucket(func(id []byte) error {
		lb := leases.Bucket(id)
		var info LeaseInfo
		if err := getJSON(lb, keyInfo, &info); err != nil || !info.Live(now) {
			return nil
		}
		objs := lb.Bucket(keyObjects)
		if objs != nil && objs.Get([]byte(ref)) != nil {
			return fmt.Errorf("lease %s holds it: %w", id, ErrInUse)
		}
		return nil
	})
}

// ---- functions ----

// PutFunction creates or replaces a function. The objects it names must
// exist.
func (t *Tx) PutFunction(f *Function) error {
	if err := ValidName(f.Name); err != nil {
		return err
	}
	for _, r := range f.Refs() {
		kind, name, _ := strings.Cut(string(r), "/")
		if got := t.Exists(name); got != kind {
			return fmt.Errorf("function %q: %s %q: %w", f.Name, kind, name, ErrNotFound)
		}
	}
	b, err := t.bucket(bktFunctions)
	if err != nil {
		return err
	}
	return putJSON(b, []byte(f.Name), f)
}

// Function returns a function.
func (t *Tx) Function(name string) (*Function, error) {
	b, err := t.bucket(bktFunctions)
	if err != nil {
		return nil, err
	}
	if b.Get([]byte(name)) == nil {
		return nil, fmt.Errorf("function %q: %w", name, ErrNotFound)
	}
	var f Function
	if err := getJSON(b, []byte(name), &f); err != nil {
		return nil, fmt.Errorf("function %q: %w", name, err)
	}
	return &f, nil
}

// Functions lists every function in name order.
func (t *Tx) Functions() ([]Function, error) {
	b, err := t.bucket(bktFunctions)
	if err != nil {
		return nil, err
	}
	var out []Function
	err = b.ForEach(func(k, v []byte) error {
		var f Function
		if err := json.Unmarshal(v, &f); err != nil {
			return fmt.Errorf("function %q: %v: %w", k, err, ErrCorrupt)
		}
		out = append(out, f)
		return nil
	})
	return out, err
}

// DeleteFunction removes a function.
func (t *Tx) DeleteFunction(name string) error {
	if _, err := t.Function(name); err != nil {
		return err
	}
	b, _ := t.bucket(bktFunctions)
	return b.Delete([]byte(name))
}

// ---- leases ----

// PutLease creates a lease (or updates its info if it exists).
func (t *Tx) PutLease(info LeaseInfo) error {
	if info.ID == "" {
		return fmt.Errorf("lease without id")
	}
	top, err := t.bucket(bktLeases)
	if err != nil {
		return err
	}
	b, err := top.CreateBucketIfNotExists([]byte(info.ID))
	if err != nil {
		return err
	}
	for _, k := range [][]byte{keyObjects, keyChunks} {
		if _, err := b.CreateBucketIfNotExists(k); err != nil {
			return err
		}
	}
	return putJSON(b, keyInfo, info)
}

func (t *Tx) leaseBucket(id string) (*bolt.Bucket, error) {
	top, err := t.bucket(bktLeases)
	if err != nil {
		return nil, err
	}
	b := top.Bucket([]byte(id))
	if b == nil {
		return nil, fmt.Errorf("lease %s: %w", id, ErrNotFound)
	}
	return b, nil
}

// LeaseObject adds an object to a lease. The object must exist.
func (t *Tx) LeaseObject(id string, ref ObjectRef) error {
	kind, name, _ := strings.Cut(string(ref), "/")
	if got := t.Exists(name); got != kind {
		return fmt.Errorf("lease %s: %s %q: %w", id, kind, name, ErrNotFound)
	}
	b, err := t.leaseBucket(id)
	if err != nil {
		return err
	}
	return b.Bucket(keyObjects).Put([]byte(ref), []byte{1})
}

// LeaseChunks adds chunks to a lease.
func (t *Tx) LeaseChunks(id string, hs []Hash) error {
	b, err := t.leaseBucket(id)
	if err != nil {
		return err
	}
	cb := b.Bucket(keyChunks)
	for _, h := range hs {
		if err := cb.Put(h[:], []byte{1}); err != nil {
			return err
		}
	}
	return nil
}

// Lease returns a lease with what it holds.
func (t *Tx) Lease(id string) (*Lease, error) {
	b, err := t.leaseBucket(id)
	if err != nil {
		return nil, err
	}
	var l Lease
	if err := getJSON(b, keyInfo, &l.LeaseInfo); err != nil {
		return nil, fmt.Errorf("lease %s: %w", id, err)
	}
	if ob := b.Bucket(keyObjects); ob != nil {
		_ = ob.ForEach(func(k, _ []byte) error {
			l.Objects = append(l.Objects, ObjectRef(k))
			return nil
		})
	}
	if cb := b.Bucket(keyChunks); cb != nil {
		_ = cb.ForEach(func(k, _ []byte) error {
			var h Hash
			copy(h[:], k)
			l.Chunks = append(l.Chunks, h)
			return nil
		})
	}
	return &l, nil
}

// Leases returns every lease.
func (t *Tx) Leases() ([]*Lease, error) {
	top, err := t.bucket(bktLeases)
	if err != nil {
		return nil, err
	}
	var ids []string
	_ = top.ForEachBucket(func(k []byte) error {
		ids = append(ids, string(k))
		return nil
	})
	sort.Strings(ids)
	out := make([]*Lease, 0, len(ids))
	for _, id := range ids {
		l, err := t.Lease(id)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// DeleteLease removes a lease; removing one that is gone is not an error.
func (t *Tx) DeleteLease(id string) error {
	top, err := t.bucket(bktLeases)
	if err != nil {
		return err
	}
	if top.Bucket([]byte(id)) == nil {
		return nil
	}
	return top.DeleteBucket([]byte(id))
}

// ---- meta ----

// Created returns when the store was created (RFC 3339).
func (t *Tx) Created() string {
	if b := t.tx.Bucket(bktMeta); b != nil {
		return string(b.Get(keyCreated))
	}
	return ""
}
