package pagestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"golang.org/x/sys/unix"
)

// holeBlockSize probes whether the file system under dir reports holes
// (SEEK_HOLE/SEEK_DATA) and returns its block size, or skips the test.
func holeBlockSize(t *testing.T, dir string) int64 {
	t.Helper()
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	hole, herr := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	data, derr := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	if herr != nil || derr != nil || hole != 0 || data == 0 {
		t.Skipf("file system under %s does not report holes (SEEK_HOLE 0 -> %d, %v; SEEK_DATA 0 -> %d, %v)", dir, hole, herr, data, derr)
	}
	bs := int64(st.Blksize)
	if bs < pageSize || bs > 64<<10 || bs%pageSize != 0 {
		t.Skipf("file system block size %d: holes cannot be checked at page or chunk granularity", bs)
	}
	return bs
}

// dataBlocks reports, per block of bs bytes of the file at p, whether the
// file system holds data there (true) or a hole.
func dataBlocks(t *testing.T, p string, bs int64) []bool {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	size := fi.Size()
	blocks := make([]bool, (size+bs-1)/bs)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA %d: %v", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE %d: %v", data, err)
		}
		for b := data / bs; b < (hole+bs-1)/bs && b < int64(len(blocks)); b++ {
			blocks[b] = true
		}
		off = hole
	}
	return blocks
}

// checkSparse compares the export at p with want byte for byte, then
// block for block with the layout the writer should have produced: unit
// is what the exporter writes or skips whole (a chunk for images, a page
// for memory), a unit of zeros must be a hole and any other unit data.
func checkSparse(t *testing.T, p string, want []byte, unit int, bs int64) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("export differs (%d bytes, want %d)", len(got), len(want))
	}
	blocks := dataBlocks(t, p, bs)
	if int64(len(blocks)) != (int64(len(want))+bs-1)/bs {
		t.Fatalf("%d blocks for %d bytes", len(blocks), len(want))
	}
	holes := 0
	for b, isData := range blocks {
		// A block is data if any unit overlapping it has data.
		lo, hi := int64(b)*bs, min(int64(b+1)*bs, int64(len(want)))
		lo, hi = lo/int64(unit)*int64(unit), min((hi+int64(unit)-1)/int64(unit)*int64(unit), int64(len(want)))
		wantData := !isZero(want[lo:hi])
		switch {
		case wantData && !isData:
			t.Fatalf("block %d (offset %d) should hold data but is a hole", b, int64(b)*bs)
		case !wantData && isData:
			t.Fatalf("block %d (offset %d) is all zeros but was written as data, not left a hole", b, int64(b)*bs)
		}
		if !isData {
			holes++
		}
	}
	t.Logf("%d of %d blocks of %d bytes are holes", holes, len(blocks), bs)
}

func exportTo(t *testing.T, export func(w *os.File) error) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := export(f); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImageExportToFileIsSparseAndExact(t *testing.T) {
	bs := holeBlockSize(t, t.TempDir())
	s, _ := openTestStore(t)
	// Chunk 0 data, chunks 1-15 zero, chunk 16 partly data (written
	// whole), zero to the end: a trailing hole the writer must size.
	data := make([]byte, 4<<20)
	copy(data, corpus.Generate(3, DefaultImageChunk))
	copy(data[1<<20:], bytes.Repeat([]byte("snapfaas"), 1000))
	if _, err := s.ImportImage(context.Background(), "sparse", bytes.NewReader(data), ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	p := exportTo(t, func(f *os.File) error {
		_, err := s.ExportImage(context.Background(), "sparse", f, nil)
		return err
	})
	checkSparse(t, p, data, DefaultImageChunk, bs)
}

func TestMemoryExportToFileIsSparseAndExact(t *testing.T) {
	bs := holeBlockSize(t, t.TempDir())
	s, _ := openTestStore(t)
	// About 40% zero pages, scattered, and a zero tail.
	mem := append(corpus.Generate(4, 2<<20), make([]byte, 1<<20)...)
	importMem(t, s, "m", mem, MemoryOptions{})
	p := exportTo(t, func(f *os.File) error {
		_, err := s.ExportMemory(context.Background(), "m", f, nil)
		return err
	})
	checkSparse(t, p, mem, pageSize, bs)
}
