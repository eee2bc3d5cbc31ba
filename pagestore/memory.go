package pagestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
)

// DefaultGranularity is the default memory chunk granularity: the largest
// run of consecutive non-zero guest pages stored as one chunk. See
// docs/PERFORMANCE.md for the measurements behind it.
const DefaultGranularity = 16 << 10

const pageSize = catalog.PageSize

// MemoryOptions configure ImportMemory.
type MemoryOptions struct {
	ImportOptions
	// Parent makes a diff snapshot: only pages that differ from the
	// parent's are recorded. With Kind == KindFull the parent is recorded
	// for information and every page is stored.
	Parent string
	// Kind defaults to base, or diff when Parent is set.
	Kind       catalog.Kind
	VMConfig   []byte
	VMState    []byte
	WorkingSet []uint32
	// Changed, with Parent, names the only pages that may differ from the
	// parent's (dirty tracking); the others are taken as the parent's
	// without being read. Changed pages are still compared with the
	// parent, so a superset is fine.
	Changed func(page uint64) bool
}

// ImportMemory stores a raw guest-memory image (offset = guest physical
// address, Firecracker's format) of size bytes read from r as snapshot name.
func (s *Store) ImportMemory(ctx context.Context, name string, r io.ReaderAt, size int64, o MemoryOptions) (*ImportResult, error) {
	start := time.Now()
	codec, err := o.resolve(DefaultGranularity, s)
	if err != nil {
		return nil, err
	}
	if size <= 0 || size%pageSize != 0 {
		return nil, fmt.Errorf("memory of %d bytes: size must be a positive multiple of 4 KiB: %w", size, ErrBadInput)
	}
	if o.Changed != nil && o.Parent == "" {
		return nil, fmt.Errorf("changed pages without a parent: %w", ErrBadInput)
	}
	if o.Kind == "" {
		o.Kind = catalog.KindBase
		if o.Parent != "" {
			o.Kind = catalog.KindDiff
		}
	}
	if !o.Kind.Valid() || (o.Kind == catalog.KindDiff) != (o.Parent != "") && o.Kind != catalog.KindFull {
		return nil, fmt.Errorf("snapshot kind %q with parent %q: %w", o.Kind, o.Parent, ErrBadInput)
	}
	if err := s.checkFree(name); err != nil {
		return nil, err
	}
	var parent *Memory
	if o.Parent != "" {
		if parent, err = s.OpenMemory(o.Parent); err != nil {
			return nil, fmt.Errorf("parent: %w", err)
		}
		if parent.Info.MemSize != size {
			return nil, fmt.Errorf("memory of %d bytes differs from parent %q's %d: %w", size, o.Parent, parent.Info.MemSize, ErrBadInput)
		}
		if o.Kind == catalog.KindFull {
			parent = nil // stored in full; parent named for information
		}
	}
	w, err := s.beginWrite("memory import "+name, codec)
	if err != nil {
		return nil, err
	}
	snap := &catalog.Snapshot{
		SnapshotInfo: catalog.SnapshotInfo{Name: name, Kind: o.Kind, Parent: o.Parent, MemSize: size,
			Granularity: o.ChunkSize, Created: time.Now().UTC(), Labels: o.Labels},
		VMConfig: o.VMConfig, VMState: o.VMState, WorkingSet: o.WorkingSet,
	}
	index := map[catalog.Hash]int32{}
	var done int64
	err = s.runPipeline(ctx, codec, func(ctx context.Context, emit func(*job) error) error {
		return produceMemory(ctx, r, size, o.ChunkSize, parent, o.Changed, emit)
	}, func(j *job) error {
		done += int64(j.size)
		w.stats.InputBytes += int64(j.size)
		if o.Progress != nil {
			o.Progress(done)
		}
		switch {
		case j.count == 0: // pages that need no record
			if parent != nil {
				w.stats.UnchangedBytes += int64(j.size)
			}
			return nil
		case j.zero:
			w.stats.ZeroBytes += int64(j.count) * pageSize
			if n := len(snap.Extents); n > 0 && snap.Extents[n-1].Chunk == catalog.ZeroChunk && snap.Extents[n-1].End() == j.page {
				snap.Extents[n-1].Count += j.count
				return nil
			}
			snap.Extents = append(snap.Extents, catalog.Extent{Page: j.page, Count: j.count, Chunk: catalog.ZeroChunk})
			return nil
		}
		if err := w.add(j); err != nil {
			return err
		}
		idx, ok := index[j.h]
		if !ok {
			idx = int32(len(snap.Chunks))
			index[j.h] = idx
			snap.Chunks = append(snap.Chunks, j.h)
		}
		snap.Extents = append(snap.Extents, catalog.Extent{Page: j.page, Count: j.count, Chunk: idx})
		return nil
	})
	if err == nil && parent == nil {
		// Zero pages of a complete image are implicit.
		w.stats.ZeroBytes = size - sumData(snap.Extents)
	}
	err = w.end(err, func(tx *catalog.Tx) error { return tx.PutSnapshot(snap) })
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	return &ImportResult{Name: name, Size: size, Stats: w.stats, Duration: time.Since(start)}, nil
}

func sumData(es []catalog.Extent) int64 {
	var n int64
	for _, e := range es {
		if e.Chunk != catalog.ZeroChunk {
			n += int64(e.Count) * pageSize
		}
	}
	return n
}

// produceMemory cuts memory into runs of granularity bytes and emits, per
// run, one job per maximal range of pages of one class: data (stored as a
// chunk) or, in a diff, pages that became zero. Pages that are zero in a
// complete image, or unchanged from the parent in a diff, emit nothing but
// progress. With changed (a diff only), pages it rejects are unchanged
// without being read, and runs with none it accepts are not read at all.
func produceMemory(ctx context.Context, r io.ReaderAt, size int64, gran int, parent *Memory, changed func(uint64) bool, emit func(*job) error) error {
	const (
		skip = iota
		zero
		data
	)
	buf := make([]byte, gran)
	pbuf := make([]byte, gran)
	cls := make([]int, gran/pageSize)
	for off := int64(0); off < size; off += int64(gran) {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(gran), size-off))
		np := n / pageSize
		first := uint64(off / pageSize)
		if parent != nil && changed != nil {
			any := false
			for i := 0; i < np && !any; i++ {
				any = changed(first + uint64(i))
			}
			if !any {
				if err := emit(&job{zero: true, size: n}); err != nil {
					return err
				}
				continue
			}
		}
		if k, err := r.ReadAt(buf[:n], off); k != n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read at %d: %w", off, err)
		}
		if parent != nil {
			if _, err := parent.ReadAt(pbuf[:n], off); err != nil {
				return fmt.Errorf("parent: %w", err)
			}
		}
		for i := 0; i < np; i++ {
			pg := buf[i*pageSize : (i+1)*pageSize]
			switch {
			case parent != nil && changed != nil && !changed(first+uint64(i)):
				cls[i] = skip
			case parent != nil && bytes.Equal(pg, pbuf[i*pageSize:(i+1)*pageSize]):
				cls[i] = skip
			case isZero(pg):
				cls[i] = zero
				if parent == nil {
					cls[i] = skip
				}
			default:
				cls[i] = data
			}
		}
		emitted := 0
		for a := 0; a < np; {
			b := a + 1
			for b < np && cls[b] == cls[a] {
				b++
			}
			if cls[a] != skip {
				j := &job{page: uint64(off/pageSize) + uint64(a), count: uint32(b - a), size: (b - a) * pageSize}
				if cls[a] == zero {
					j.zero = true
				} else {
					j.data = bytes.Clone(buf[a*pageSize : b*pageSize])
				}
				if err := emit(j); err != nil {
					return err
				}
				emitted += j.size
			}
			a = b
		}
		if emitted < n {
			if err := emit(&job{zero: true, size: n - emitted}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Memory is a read-only view of a memory snapshot with its parent chain
// resolved: for every guest page, the chunk and page within it that hold
// its bytes, or zero.
type Memory struct {
	s *Store
	// Info describes the snapshot (the leaf of the chain).
	Info catalog.SnapshotInfo
	// Chain lists the snapshot and its ancestors, leaf first.
	Chain      []string
	WorkingSet []uint32
	VMConfig   []byte
	VMState    []byte
	chunks     []chunkRef
	pages      []pageRef
	// leafBase is the first of the leaf layer's chunks in chunks.
	leafBase uint32
}

// pageRef locates one guest page: page off of chunks[chunk].
type pageRef struct {
	chunk uint32
	off   uint32
}

const noChunk = ^uint32(0)

var _ io.ReaderAt = (*Memory)(nil)

// OpenMemory resolves snapshot name through its parent chain.
func (s *Store) OpenMemory(name string) (*Memory, error) {
	m := &Memory{s: s}
	err := s.cat.View(func(tx *catalog.Tx) error {
		chain, err := tx.Chain(name)
		if err != nil {
			return err
		}
		m.Info = chain[0]
		m.pages = make([]pageRef, m.Info.Pages())
		for i := range m.pages {
			m.pages[i].chunk = noChunk
		}
		// Apply layers root first so that each child overrides its parent.
		for li := len(chain) - 1; li >= 0; li-- {
			layer, err := tx.Snapshot(chain[li].Name)
			if err != nil {
				return err
			}
			m.Chain = append([]string{layer.Name}, m.Chain...)
			if li == 0 {
				m.WorkingSet, m.VMConfig, m.VMState = layer.WorkingSet, layer.VMConfig, layer.VMState
			}
			if layer.MemSize != m.Info.MemSize {
				return fmt.Errorf("snapshot %q: layer %q has memory size %d, want %d: %w", name, layer.Name, layer.MemSize, m.Info.MemSize, ErrCorrupt)
			}
			base := uint32(len(m.chunks))
			m.leafBase = base
			for _, h := range layer.Chunks {
				loc, err := tx.Chunk(h)
				if err != nil {
					return fmt.Errorf("snapshot %q: layer %q: %w: %w", name, layer.Name, err, ErrCorrupt)
				}
				m.chunks = append(m.chunks, chunkRef{h: h, loc: loc})
			}
			for _, e := range layer.Extents {
				if e.Chunk != catalog.ZeroChunk {
					c := m.chunks[base+uint32(e.Chunk)]
					if int64(e.Off+e.Count)*pageSize > int64(c.loc.ULen) {
						return fmt.Errorf("snapshot %q: layer %q: extent at page %d overruns chunk %s: %w", name, layer.Name, e.Page, c.h.Short(), ErrCorrupt)
					}
				}
				for k := uint32(0); k < e.Count; k++ {
					ref := pageRef{chunk: noChunk}
					if e.Chunk != catalog.ZeroChunk {
						ref = pageRef{chunk: base + uint32(e.Chunk), off: e.Off + k}
					}
					m.pages[e.Page+uint64(k)] = ref
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Pages returns the number of guest pages.
func (m *Memory) Pages() int64 { return int64(len(m.pages)) }

// Size returns the guest memory size in bytes.
func (m *Memory) Size() int64 { return m.Info.MemSize }

// InLeaf reports whether page p's data comes from the snapshot's own
// layer (its diff, for a diff snapshot) rather than a parent's; zero pages
// are in no layer.
func (m *Memory) InLeaf(p int64) bool {
	c := m.pages[p].chunk
	return c != noChunk && c >= m.leafBase
}

// IsZero reports whether page p is a zero page.
func (m *Memory) IsZero(p int64) bool { return m.pages[p].chunk == noChunk }

// ZeroPages counts the zero pages.
func (m *Memory) ZeroPages() int64 {
	var n int64
	for _, r := range m.pages {
		if r.chunk == noChunk {
			n++
		}
	}
	return n
}

// Page returns the 4 KiB of page p, or nil for a zero page. The slice is
// shared with the cache: do not modify it.
func (m *Memory) Page(p int64) ([]byte, error) {
	if p < 0 || p >= int64(len(m.pages)) {
		return nil, fmt.Errorf("snapshot %q: page %d out of range (%d pages)", m.Info.Name, p, len(m.pages))
	}
	r := m.pages[p]
	if r.chunk == noChunk {
		return nil, nil
	}
	c := m.chunks[r.chunk]
	data, err := m.s.Chunk(c.h, c.loc)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: page %d: %w", m.Info.Name, p, err)
	}
	return data[int(r.off)*pageSize : int(r.off+1)*pageSize], nil
}

// Run returns the run of guest pages around page p that are backed by
// consecutive pages of p's chunk, with their bytes: one UFFDIO_COPY can
// install them all (fault-around). For a zero page it returns (p, nil).
// decoded is the number of bytes this call had to decompress (0 when the
// chunk was cached). The data is shared with the cache: do not modify it.
func (m *Memory) Run(p int64) (first int64, data []byte, decoded int, err error) {
	if p < 0 || p >= int64(len(m.pages)) {
		return 0, nil, 0, fmt.Errorf("snapshot %q: page %d out of range (%d pages)", m.Info.Name, p, len(m.pages))
	}
	r := m.pages[p]
	if r.chunk == noChunk {
		return p, nil, 0, nil
	}
	first, last := p, p
	for first > 0 {
		q := m.pages[first-1]
		if q.chunk != r.chunk || q.off+1 != m.pages[first].off {
			break
		}
		first--
	}
	for last+1 < int64(len(m.pages)) {
		q := m.pages[last+1]
		if q.chunk != r.chunk || q.off != m.pages[last].off+1 {
			break
		}
		last++
	}
	c := m.chunks[r.chunk]
	chunk, miss, err := m.s.chunk(c.h, c.loc)
	if err != nil {
		return 0, nil, 0, fmt.Errorf("snapshot %q: page %d: %w", m.Info.Name, p, err)
	}
	if miss {
		decoded = len(chunk)
	}
	lo := int(m.pages[first].off) * pageSize
	hi := int(m.pages[last].off+1) * pageSize
	return first, chunk[lo:hi], decoded, nil
}

// ReadAt reads guest memory at guest physical address off.
func (m *Memory) ReadAt(b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		pos := off + int64(n)
		if pos >= m.Info.MemSize {
			return n, io.EOF
		}
		p := pos / pageSize
		within := int(pos % pageSize)
		k := min(len(b)-n, pageSize-within)
		pg, err := m.Page(p)
		if err != nil {
			return n, err
		}
		if pg == nil {
			clear(b[n : n+k])
		} else {
			copy(b[n:n+k], pg[within:])
		}
		n += k
	}
	return n, nil
}

// ExportMemory writes snapshot name's resolved memory as a raw file of its
// full size; zero pages become holes when w is a file.
func (s *Store) ExportMemory(ctx context.Context, name string, w io.Writer, progress func(int64)) (int64, error) {
	m, err := s.OpenMemory(name)
	if err != nil {
		return 0, err
	}
	sw := newSparseWriter(w)
	const batch = 256 // pages per write
	buf := make([]byte, 0, batch*pageSize)
	flush := func() error {
		err := sw.write(buf)
		buf = buf[:0]
		return err
	}
	for p := int64(0); p < m.Pages(); p++ {
		if p%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			if progress != nil {
				progress(p * pageSize)
			}
		}
		pg, err := m.Page(p)
		if err != nil {
			return 0, err
		}
		if pg == nil {
			if len(buf) > 0 {
				if err := flush(); err != nil {
					return 0, err
				}
			}
			if err := sw.skip(pageSize); err != nil {
				return 0, err
			}
			continue
		}
		buf = append(buf, pg...)
		if len(buf) == cap(buf) {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if len(buf) > 0 {
		if err := flush(); err != nil {
			return 0, err
		}
	}
	if progress != nil {
		progress(m.Info.MemSize)
	}
	return m.Info.MemSize, sw.finish(m.Info.MemSize)
}
