package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/pagestore"
)

const page = 4096

// dataRegions lists f's data regions as [start, end) byte offsets
// (SEEK_DATA/SEEK_HOLE).
func dataRegions(t *testing.T, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]int64
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, [2]int64{data, hole})
		off = hole
	}
	return out
}

func inspect(t *testing.T, store, name string) pagestore.ObjectInfo {
	t.Helper()
	var info pagestore.ObjectInfo
	if err := json.Unmarshal([]byte(ok(t, store, "inspect", "--json", name)), &info); err != nil {
		t.Fatal(err)
	}
	return info
}

func exportMemory(t *testing.T, store, name string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".out")
	ok(t, store, "memory", "export", name, p)
	return readFile(t, p)
}

// firstPageDiff names the first page where got and want differ.
func firstPageDiff(got, want []byte) int {
	for p := 0; p*page < min(len(got), len(want)); p++ {
		if !bytes.Equal(got[p*page:(p+1)*page], want[p*page:(p+1)*page]) {
			return p
		}
	}
	return -1
}

// TestChangedOnlyImport checks the documented semantics of `memory import
// --parent P --changed-only`: FILE's holes are P's pages; its written
// regions are compared with P and recorded where they differ, written
// zeros included.
func TestChangedOnlyImport(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	const pages = 256
	base := corpus.Generate(21, pages*page)
	fill := func(p int, b byte) { copy(base[p*page:(p+1)*page], bytes.Repeat([]byte{b}, page)) }
	fill(10, 0x5a) // non-zero parent pages the diff overwrites
	fill(11, 0x5b)
	ok(t, store, "memory", "import", "base", writeTemp(t, "base.raw", base))

	t.Run("sparse", func(t *testing.T) {
		// Written: page 3 (new data), 10 and 11 (zeros), 20 (the
		// parent's own bytes), 100-101 (new data). The rest is holes,
		// which read as zeros but mean "the parent's page".
		path := filepath.Join(t.TempDir(), "dirty.sparse")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(base)
		write := func(p int, b []byte) {
			if _, err := f.WriteAt(b, int64(p*page)); err != nil {
				t.Fatal(err)
			}
		}
		put := func(p int, b []byte) {
			write(p, b)
			copy(want[p*page:], b)
		}
		put(3, bytes.Repeat([]byte("new page 3 "), page/11+1)[:page])
		put(10, make([]byte, 2*page))
		write(20, base[20*page:21*page])
		put(100, bytes.Repeat([]byte{0xc3}, 2*page))
		if err := f.Truncate(pages * page); err != nil {
			t.Fatal(err)
		}
		f.Close()
		wantRegions := [][2]int64{{3 * page, 4 * page}, {10 * page, 12 * page}, {20 * page, 21 * page}, {100 * page, 102 * page}}
		if got := dataRegions(t, path); !slices.Equal(got, wantRegions) {
			t.Skipf("the temporary directory's file system reports data regions %v for pages written at %v (no 4 KiB holes); cannot test sparse files here", got, wantRegions)
		}

		ok(t, store, "memory", "import", "--parent", "base", "--changed-only", "dirty", path)
		if got := exportMemory(t, store, "dirty"); !bytes.Equal(got, want) {
			p := firstPageDiff(got, want)
			t.Fatalf("exported dirty differs at page %d (zero: %v, parent's: %v); want written pages, and the parent's pages in holes",
				p, isZero(got[p*page:(p+1)*page]), bytes.Equal(got[p*page:(p+1)*page], base[p*page:(p+1)*page]))
		}
		// Only the written pages that differ are recorded: 3, 10, 11,
		// 100, 101 (page 20 equals the parent's).
		if info := inspect(t, store, "dirty"); info.LayerPages != 5 || info.Parent != "base" {
			t.Fatalf("inspect dirty: %d layer pages, parent %q; want 5 (pages 3, 10, 11, 100, 101) on base", info.LayerPages, info.Parent)
		}
	})

	t.Run("written-zeros", func(t *testing.T) {
		// A file of written zeros, no holes: every page is written,
		// so the snapshot is all zeros, not the parent.
		path := writeTemp(t, "zeros.raw", make([]byte, pages*page))
		if got := dataRegions(t, path); !slices.Equal(got, [][2]int64{{0, pages * page}}) {
			t.Skipf("the file system made holes of written zeros (%v); cannot test it here", got)
		}
		ok(t, store, "memory", "import", "--parent", "base", "--changed-only", "zeros", path)
		got := exportMemory(t, store, "zeros")
		if p := firstPageDiff(got, make([]byte, len(base))); p >= 0 {
			t.Fatalf("exported zeros has data at page %d (the parent's: %v); want every page zero",
				p, bytes.Equal(got[p*page:(p+1)*page], base[p*page:(p+1)*page]))
		}
		var nonzero int64
		for p := 0; p < pages; p++ {
			if !isZero(base[p*page : (p+1)*page]) {
				nonzero++
			}
		}
		if info := inspect(t, store, "zeros"); info.LayerPages != nonzero || info.ZeroPages != pages {
			t.Fatalf("inspect zeros: %d layer pages, %d zero pages; want %d (the parent's non-zero pages) and %d", info.LayerPages, info.ZeroPages, nonzero, pages)
		}
	})
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
