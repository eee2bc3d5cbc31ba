package pagestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/catalog"
)

func imageChunks(t *testing.T, s *Store, name string) map[catalog.Hash]bool {
	t.Helper()
	set := map[catalog.Hash]bool{}
	err := s.Catalog().View(func(tx *catalog.Tx) error {
		img, err := tx.Image(name)
		if err != nil {
			return err
		}
		for _, h := range img.Chunks {
			if !h.IsZero() {
				set[h] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestGCRemovesExactlyUnreferencedAndKeepsLeased(t *testing.T) {
	s, dir := openTestStore(t)
	ctx := context.Background()
	a := corpus.Generate(21, 4<<20)
	b := append(bytes.Clone(a[:2<<20]), corpus.Generate(22, 2<<20)...) // shares half of a
	c := corpus.Generate(23, 2<<20)
	for name, data := range map[string][]byte{"a": a, "b": b, "c": c} {
		if _, err := s.ImportImage(ctx, name, bytes.NewReader(data), ImportOptions{ChunkSize: 16 << 10}); err != nil {
			t.Fatal(err)
		}
	}
	ca, cb, cc := imageChunks(t, s, "a"), imageChunks(t, s, "b"), imageChunks(t, s, "c")
	var onlyA []catalog.Hash
	for h := range ca {
		if !cb[h] && !cc[h] {
			onlyA = append(onlyA, h)
		}
	}
	sort.Slice(onlyA, func(i, j int) bool { return bytes.Compare(onlyA[i][:], onlyA[j][:]) < 0 })
	if len(onlyA) < 10 {
		t.Fatalf("a has only %d unique chunks", len(onlyA))
	}
	leased := onlyA[:5]
	if _, err := s.Lease("test", 0, nil, leased); err != nil {
		t.Fatal(err)
	}
	// An expired lease protects nothing and is dropped.
	if _, err := s.Lease("expired", time.Nanosecond, nil, onlyA[5:6]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	if _, err := s.Remove("a"); err != nil {
		t.Fatal(err)
	}

	before, chunksBefore := packBytes(t, dir), chunkCount(t, s)
	dry, err := s.GC(ctx, GCOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.DeadChunks != len(onlyA)-len(leased) {
		t.Fatalf("dry run: %d dead, want %d", dry.DeadChunks, len(onlyA)-len(leased))
	}
	if packBytes(t, dir) != before || chunkCount(t, s) != chunksBefore {
		t.Fatal("dry run changed the store")
	}

	res, err := s.GC(ctx, GCOptions{RewriteThreshold: -1})
	if err != nil {
		t.Fatal(err)
	}
	want := map[catalog.Hash]bool{}
	for _, h := range onlyA[5:] {
		want[h] = true
	}
	if len(res.Dead) != len(want) {
		t.Fatalf("gc removed %d chunks, want %d", len(res.Dead), len(want))
	}
	for _, h := range res.Dead {
		if !want[h] {
			t.Fatalf("gc removed %s, which is referenced or leased", h.Short())
		}
	}
	if res.StaleLeases != 1 {
		t.Fatalf("stale leases %d, want 1", res.StaleLeases)
	}
	if after := packBytes(t, dir); after >= before || res.ReclaimedBytes <= 0 {
		t.Fatalf("packs %d -> %d bytes, reclaimed %d", before, after, res.ReclaimedBytes)
	}
	for _, h := range leased {
		if _, err := s.ChunkByHash(h); err != nil {
			t.Fatalf("leased chunk %s: %v", h.Short(), err)
		}
	}
	for name, data := range map[string][]byte{"b": b, "c": c} {
		var out bytes.Buffer
		if _, err := s.ExportImage(ctx, name, &out, nil); err != nil {
			t.Fatalf("export %s after gc: %v", name, err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("%s differs after gc", name)
		}
	}
	v := mustVerify(t, s)
	if v.Unreferenced != 0 {
		// The leased chunks count as referenced by their lease.
		t.Fatalf("verify: %d unreferenced chunks after gc", v.Unreferenced)
	}
	// A second gc finds nothing.
	res2, err := s.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.DeadChunks != 0 || res2.ReclaimedBytes != 0 {
		t.Fatalf("second gc: %+v", res2)
	}
}

func chunkCount(t *testing.T, s *Store) int {
	var n int
	_ = s.Catalog().View(func(tx *catalog.Tx) error { n = tx.ChunkCount(); return nil })
	return n
}

func TestVerifyCatchesFlippedByte(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Create())
	if err != nil {
		t.Fatal(err)
	}
	mem := corpus.Generate(31, 2<<20)
	importMem(t, s, "m", mem, MemoryOptions{})
	mustVerify(t, s)
	s.Close()

	packs, _ := filepath.Glob(filepath.Join(dir, chunksSubdir, "pack-*"))
	if len(packs) != 1 {
		t.Fatalf("packs: %v", packs)
	}
	raw, err := os.ReadFile(packs[0])
	if err != nil {
		t.Fatal(err)
	}
	pos := len(raw) / 2
	raw[pos] ^= 0x40
	if err := os.WriteFile(packs[0], raw, 0o644); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.Verify(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() {
		t.Fatalf("verify missed a flipped byte at %d", pos)
	}
	t.Logf("verify: %v", res.Problems)
	// Reading the whole snapshot fails with ErrCorrupt, never wrong bytes.
	var out bytes.Buffer
	_, err = s.ExportMemory(context.Background(), "m", &out, nil)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("export of corrupt store: %v, want ErrCorrupt", err)
	}
}
