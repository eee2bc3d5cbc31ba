package pagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/catalog"
)

func openTestStore(t *testing.T, opts ...Option) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir, append([]Option{Create()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "in.raw")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func importMem(t *testing.T, s *Store, name string, data []byte, o MemoryOptions) *ImportResult {
	t.Helper()
	res, err := s.ImportMemory(context.Background(), name, bytes.NewReader(data), int64(len(data)), o)
	if err != nil {
		t.Fatalf("import memory %s: %v", name, err)
	}
	return res
}

func exportMem(t *testing.T, s *Store, name string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ExportMemory(context.Background(), name, f, nil); err != nil {
		t.Fatalf("export %s: %v", name, err)
	}
	f.Close()
	out, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func packBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	entries, _ := os.ReadDir(filepath.Join(dir, chunksSubdir))
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func mustVerify(t *testing.T, s *Store) *VerifyResult {
	t.Helper()
	res, err := s.Verify(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("verify found problems: %v", res.Problems)
	}
	return res
}

func TestImageRoundTrip(t *testing.T) {
	s, _ := openTestStore(t)
	// An odd size (not a multiple of anything) with zero runs and a
	// repeated block.
	data := corpus.Generate(1, 3<<20)
	data = append(data, make([]byte, 200<<10)...)
	data = append(data, data[:100<<10]...)
	data = append(data, 1, 2, 3)
	for _, chunk := range []int{4 << 10, 64 << 10, 1 << 20} {
		name := fmt.Sprintf("img-%d", chunk)
		res, err := s.ImportImage(context.Background(), name, bytes.NewReader(data), ImportOptions{ChunkSize: chunk})
		if err != nil {
			t.Fatal(err)
		}
		if res.Size != int64(len(data)) {
			t.Fatalf("size %d, want %d", res.Size, len(data))
		}
		var out bytes.Buffer
		if _, err := s.ExportImage(context.Background(), name, &out, nil); err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(out.Bytes()) != sha256.Sum256(data) {
			t.Fatalf("chunk %d: export differs from import", chunk)
		}
		img, err := s.OpenImage(name)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, uint64(chunk)))
		for i := 0; i < 200; i++ {
			off := rng.Int64N(int64(len(data)))
			n := min(rng.IntN(3*chunk), len(data)-int(off))
			buf := make([]byte, n)
			if _, err := img.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, data[off:off+int64(n)]) {
				t.Fatalf("ReadAt(%d, %d) differs", off, n)
			}
		}
	}
	mustVerify(t, s)
}

func TestImageDedupSecondImportAddsNothing(t *testing.T) {
	s, dir := openTestStore(t)
	data := corpus.Generate(7, 8<<20)
	r1, err := s.ImportImage(context.Background(), "a", bytes.NewReader(data), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := packBytes(t, dir)
	r2, err := s.ImportImage(context.Background(), "b", bytes.NewReader(data), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Stats.NewChunks != 0 || r2.Stats.NewBytes != 0 || packBytes(t, dir) != before {
		t.Fatalf("second import stored %d chunks / %d bytes (packs %d -> %d)", r2.Stats.NewChunks, r2.Stats.NewBytes, before, packBytes(t, dir))
	}
	if r1.Stats.NewChunks == 0 {
		t.Fatal("first import stored nothing")
	}
	info, err := s.Inspect("b")
	if err != nil {
		t.Fatal(err)
	}
	if info.UniqueChunks != 0 || info.SharedChunks != info.Chunks {
		t.Fatalf("b: unique %d shared %d of %d", info.UniqueChunks, info.SharedChunks, info.Chunks)
	}
}

func TestMemoryRoundTripGranularities(t *testing.T) {
	fixture, err := os.ReadFile("../bench/corpus/testdata/python-256k.raw")
	if err != nil {
		t.Fatal(err)
	}
	mem := append(corpus.Generate(3, 4<<20), fixture...)
	mem = append(mem, make([]byte, 1<<20)...)
	for _, gran := range []int{4 << 10, 16 << 10, 64 << 10} {
		for _, codec := range []string{"zstd", "s2"} {
			s, _ := openTestStore(t)
			res := importMem(t, s, "m", mem, MemoryOptions{ImportOptions: ImportOptions{ChunkSize: gran, Codec: codec}})
			if res.Stats.ZeroBytes == 0 {
				t.Fatal("no zero pages recorded")
			}
			if got := exportMem(t, s, "m"); !bytes.Equal(got, mem) {
				t.Fatalf("gran %d %s: export differs", gran, codec)
			}
			m, err := s.OpenMemory("m")
			if err != nil {
				t.Fatal(err)
			}
			var wantZero int64
			for p := 0; p < len(mem)/pageSize; p++ {
				if isZero(mem[p*pageSize : (p+1)*pageSize]) {
					wantZero++
					if !m.IsZero(int64(p)) {
						t.Fatalf("page %d is zero but not recorded so", p)
					}
				}
			}
			if m.ZeroPages() != wantZero {
				t.Fatalf("zero pages %d, want %d", m.ZeroPages(), wantZero)
			}
			// Fault-around runs hold exactly the memory they cover.
			for p := int64(0); p < m.Pages(); p += 3 {
				first, data, _, err := m.Run(p)
				if err != nil {
					t.Fatal(err)
				}
				if data == nil {
					if !m.IsZero(p) || first != p {
						t.Fatalf("run of page %d: nil data for a data page", p)
					}
					continue
				}
				if first > p || first+int64(len(data)/pageSize) <= p || len(data) > gran {
					t.Fatalf("run of page %d: [%d, +%d) does not cover it or exceeds the granularity", p, first, len(data)/pageSize)
				}
				if !bytes.Equal(data, mem[first*pageSize:first*pageSize+int64(len(data))]) {
					t.Fatalf("run of page %d differs from memory", p)
				}
			}
			mustVerify(t, s)
		}
	}
}

func TestMemoryRejectsBadSize(t *testing.T) {
	s, _ := openTestStore(t)
	_, err := s.ImportMemory(context.Background(), "m", bytes.NewReader(make([]byte, 5000)), 5000, MemoryOptions{})
	if !errors.Is(err, ErrBadInput) {
		t.Fatalf("err = %v, want ErrBadInput", err)
	}
}

func TestDiffSnapshotStoresOnlyChanges(t *testing.T) {
	s, _ := openTestStore(t)
	// Granularity 4 KiB so that new data is proportional to changed pages.
	base := corpus.Generate(11, 32<<20)
	o := MemoryOptions{ImportOptions: ImportOptions{ChunkSize: 4096}}
	r0 := importMem(t, s, "base", base, o)

	mod := bytes.Clone(base)
	rng := rand.New(rand.NewPCG(5, 5))
	pages := len(mod) / pageSize
	changed := map[int]bool{}
	for len(changed) < pages/100 { // 1 % of pages
		p := rng.IntN(pages)
		if changed[p] {
			continue
		}
		changed[p] = true
		pg := mod[p*pageSize : (p+1)*pageSize]
		for i := range 64 {
			pg[rng.IntN(pageSize)] = byte(i + 1)
		}
	}
	// One page becomes zero.
	for p := 0; p < pages; p++ {
		if !isZero(mod[p*pageSize:(p+1)*pageSize]) && !changed[p] {
			clear(mod[p*pageSize : (p+1)*pageSize])
			changed[p] = true
			break
		}
	}
	o.Parent = "base"
	r1 := importMem(t, s, "diff", mod, o)
	if got := exportMem(t, s, "diff"); !bytes.Equal(got, mod) {
		t.Fatal("diff export differs from the modified memory")
	}
	if got := exportMem(t, s, "base"); !bytes.Equal(got, base) {
		t.Fatal("base changed")
	}
	// New data relative to the memory that was modified by 1 %.
	ratio := float64(r1.Stats.NewRaw) / float64(len(mod))
	t.Logf("base stored %d raw bytes, diff %d (%.2f%% of memory); compressed %d vs %d", r0.Stats.NewRaw, r1.Stats.NewRaw, 100*ratio, r0.Stats.NewBytes, r1.Stats.NewBytes)
	if ratio > 0.0125 || ratio < 0.0075 {
		t.Fatalf("diff of 1%% of pages stored %.2f%% of memory as new data", 100*ratio)
	}
	info, err := s.Inspect("diff")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != catalog.KindDiff || info.Parent != "base" || len(info.ParentChain) != 1 {
		t.Fatalf("inspect: %+v", info)
	}
	if info.LayerPages != int64(len(changed)) {
		t.Fatalf("layer pages %d, want %d", info.LayerPages, len(changed))
	}
	// A diff of a diff resolves through two parents.
	mod2 := bytes.Clone(mod)
	copy(mod2[5*pageSize:], bytes.Repeat([]byte{0xAB}, pageSize))
	o.Parent = "diff"
	importMem(t, s, "diff2", mod2, o)
	if got := exportMem(t, s, "diff2"); !bytes.Equal(got, mod2) {
		t.Fatal("diff2 export differs")
	}
	// The parent cannot be removed while children exist.
	if _, err := s.Remove("diff"); !errors.Is(err, catalog.ErrInUse) {
		t.Fatalf("remove parent: err = %v, want ErrInUse", err)
	}
	mustVerify(t, s)
}

func TestNameErrors(t *testing.T) {
	s, _ := openTestStore(t)
	data := corpus.Generate(1, 1<<20)
	importMem(t, s, "x", data, MemoryOptions{})
	if _, err := s.ImportImage(context.Background(), "x", bytes.NewReader(data), ImportOptions{}); !errors.Is(err, catalog.ErrExists) {
		t.Fatalf("import over a snapshot name: %v", err)
	}
	if _, err := s.ImportImage(context.Background(), "../x", bytes.NewReader(data), ImportOptions{}); !errors.Is(err, catalog.ErrInvalidName) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := s.Inspect("nope"); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("inspect unknown: %v", err)
	}
	if _, err := s.Remove("nope"); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("rm unknown: %v", err)
	}
}

func TestLockRefusesSecondWriter(t *testing.T) {
	_, dir := openTestStore(t)
	_, err := Open(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if _, err := Open(dir, ReadOnly()); !errors.Is(err, ErrLocked) {
		t.Fatalf("reader while writing: %v, want ErrLocked", err)
	}
}

func TestConcurrentReaders(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Create())
	if err != nil {
		t.Fatal(err)
	}
	mem := corpus.Generate(2, 4<<20)
	importMem(t, s, "m", mem, MemoryOptions{})
	s.Close()
	r1, err := Open(dir, ReadOnly(), CacheSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := Open(dir, ReadOnly())
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	defer r2.Close()
	m, err := r1.OpenMemory("m")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func(g int) {
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			buf := make([]byte, pageSize)
			for i := 0; i < 2000; i++ {
				p := rng.Int64N(m.Pages())
				if _, err := m.ReadAt(buf, p*pageSize); err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(buf, mem[p*pageSize:(p+1)*pageSize]) {
					errc <- errors.New("page differs")
					return
				}
			}
			errc <- nil
		}(g)
	}
	for g := 0; g < 8; g++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if st := r1.CacheStats(); st.Bytes > 64<<10 {
		t.Fatalf("cache holds %d bytes, bound 64 KiB", st.Bytes)
	}
}

// guardedReader serves mem but fails a read that touches a page outside
// allowed: a diff with Changed must not read unchanged runs.
type guardedReader struct {
	mem     []byte
	allowed func(uint64) bool
	gran    int
}

func (g guardedReader) ReadAt(p []byte, off int64) (int, error) {
	for pg := off / pageSize; pg < (off+int64(len(p))+pageSize-1)/pageSize; pg++ {
		// Reads are whole runs of gran bytes; one allowed page in the run
		// makes the run readable.
		run := pg * pageSize / int64(g.gran) * int64(g.gran) / pageSize
		ok := false
		for q := run; q < run+int64(g.gran/pageSize); q++ {
			ok = ok || g.allowed(uint64(q))
		}
		if !ok {
			return 0, fmt.Errorf("read of unchanged page %d", pg)
		}
	}
	return copy(p, g.mem[off:]), nil
}

func TestDiffSnapshotWithChangedPages(t *testing.T) {
	s, _ := openTestStore(t)
	base := corpus.Generate(12, 8<<20)
	importMem(t, s, "base", base, MemoryOptions{})
	mod := bytes.Clone(base)
	pages := len(mod) / pageSize
	dirty := map[uint64]bool{}
	for p := 3; p < pages; p += 97 {
		dirty[uint64(p)] = true
		mod[p*pageSize+7] ^= 0x5a
	}
	// A superset: pages reported dirty (read by a device, say) that did
	// not change are compared away.
	superset := map[uint64]bool{1: true, 2: true}
	for p := range dirty {
		superset[p] = true
	}
	o := MemoryOptions{Parent: "base", Changed: func(p uint64) bool { return superset[p] }}
	r := guardedReader{mem: mod, allowed: o.Changed, gran: DefaultGranularity}
	if _, err := s.ImportMemory(context.Background(), "diff", r, int64(len(mod)), o); err != nil {
		t.Fatal(err)
	}
	if got := exportMem(t, s, "diff"); !bytes.Equal(got, mod) {
		t.Fatal("diff export differs from the modified memory")
	}
	info, err := s.Inspect("diff")
	if err != nil {
		t.Fatal(err)
	}
	if info.LayerPages != int64(len(dirty)) {
		t.Fatalf("layer pages %d, want %d", info.LayerPages, len(dirty))
	}
	// Changed without a parent is refused.
	if _, err := s.ImportMemory(context.Background(), "x", bytes.NewReader(mod), int64(len(mod)), MemoryOptions{Changed: o.Changed}); !errors.Is(err, ErrBadInput) {
		t.Fatalf("changed without parent: %v", err)
	}
	mustVerify(t, s)
}

// A chunk that recurs after the import committed it is referenced, not
// stored again, although the workers looked it up before that commit.
func TestImportStoresRecurringChunkOnce(t *testing.T) {
	defer func(n int64) { commitEvery = n }(commitEvery)
	commitEvery = 1 // commit after every new chunk
	s, dir := openTestStore(t)
	a, b := corpus.Generate(71, DefaultImageChunk), corpus.Generate(72, DefaultImageChunk)
	var data []byte
	for range 32 {
		data = append(append(data, a...), b...)
	}
	res, err := s.ImportImage(context.Background(), "ab", bytes.NewReader(data), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.NewChunks != 2 || res.Stats.DedupChunks != 62 {
		t.Fatalf("stored %d chunks and deduplicated %d, want 2 and 62", res.Stats.NewChunks, res.Stats.DedupChunks)
	}
	if n := packBytes(t, dir); n != res.Stats.NewBytes {
		t.Fatalf("packs hold %d bytes, the two chunks %d", n, res.Stats.NewBytes)
	}
}
