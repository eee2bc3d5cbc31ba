package corpus

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/python-256k.raw from a fresh python3 capture")

const fixturePath = "testdata/python-256k.raw"

func isZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// pageMix counts zero pages and non-zero pages identical to an earlier page.
func pageMix(img []byte) (zero, dup, total int) {
	seen := make(map[string]bool)
	for off := 0; off+PageSize <= len(img); off += PageSize {
		pg := img[off : off+PageSize]
		total++
		switch {
		case isZero(pg):
			zero++
		case seen[string(pg)]:
			dup++
		default:
			seen[string(pg)] = true
		}
	}
	return zero, dup, total
}

func TestGenerateDeterministic(t *testing.T) {
	a := Generate(42, 1<<20)
	b := Generate(42, 1<<20)
	if !bytes.Equal(a, b) {
		t.Fatal("Generate(42) differs between calls")
	}
	if c := Generate(43, 1<<20); bytes.Equal(a, c) {
		t.Fatal("Generate(42) and Generate(43) are identical")
	}
	// A longer image with the same seed extends the shorter one.
	if d := Generate(42, 2<<20); !bytes.Equal(d[:1<<20], a) {
		t.Fatal("Generate(42, 2MiB) does not start with Generate(42, 1MiB)")
	}
}

func TestGenerateLength(t *testing.T) {
	for _, n := range []int64{-1, 0, 1, 4095, 4096, 10000, 1 << 20} {
		want := max(n, 0)
		if got := int64(len(Generate(7, n))); got != want {
			t.Errorf("len(Generate(7, %d)) = %d, want %d", n, got, want)
		}
	}
}

func TestGenerateMix(t *testing.T) {
	const size = 16 << 20
	img := Generate(1, size)
	if len(img) != size {
		t.Fatalf("len = %d, want %d", len(img), size)
	}
	zero, dup, total := pageMix(img)
	zf, df := float64(zero)/float64(total), float64(dup)/float64(total)
	t.Logf("pages=%d zero=%d (%.1f%%) dup=%d (%.1f%%)", total, zero, 100*zf, dup, 100*df)
	if zf < 0.30 || zf > 0.50 {
		t.Errorf("zero page fraction %.3f, want about 0.40", zf)
	}
	if df < 0.05 || df > 0.20 {
		t.Errorf("duplicate page fraction %.3f, want about 0.10", df)
	}

	// Text, code-like and random pages are all present.
	var text, random int
	for off := 0; off < len(img); off += PageSize {
		pg := img[off : off+PageSize]
		if bytes.Contains(pg, []byte(" snapshot ")) || bytes.Contains(pg, []byte(" python ")) {
			text++
		}
		var hist [256]int
		for _, b := range pg {
			hist[b]++
		}
		distinct := 0
		for _, c := range hist {
			if c > 0 {
				distinct++
			}
		}
		if distinct >= 250 {
			random++
		}
	}
	if text == 0 {
		t.Error("no text-like pages")
	}
	if random == 0 || float64(random)/float64(total) > 0.15 {
		t.Errorf("%d high-entropy pages of %d, want a few percent", random, total)
	}
	if !bytes.Contains(img, []byte{0x55, 0x48, 0x89, 0xe5}) {
		t.Error("no code-like pages (push rbp; mov rbp, rsp)")
	}

	// Compressible, but not trivially.
	var buf bytes.Buffer
	zw, _ := flate.NewWriter(&buf, flate.BestSpeed)
	zw.Write(img[:4<<20])
	zw.Close()
	ratio := float64(4<<20) / float64(buf.Len())
	t.Logf("flate -1 ratio on 4 MiB: %.2f", ratio)
	if ratio < 1.5 || ratio > 50 {
		t.Errorf("flate ratio %.2f outside the realistic range [1.5, 50]", ratio)
	}
}

func TestCapturePythonBadSize(t *testing.T) {
	for _, n := range []int64{0, -4096, 1000, 4097} {
		var buf bytes.Buffer
		_, err := CapturePython(context.Background(), &buf, n)
		if err == nil || !strings.Contains(err.Error(), "multiple of 4096") {
			t.Errorf("CapturePython(size=%d) error = %v, want a size error", n, err)
		}
		if buf.Len() != 0 {
			t.Errorf("CapturePython(size=%d) wrote %d bytes", n, buf.Len())
		}
	}
}

func TestCapturePythonMissing(t *testing.T) {
	_, err := CapturePython(context.Background(), &bytes.Buffer{}, PageSize,
		WithPython("python3-definitely-not-installed"))
	if !errors.Is(err, ErrNoPython) {
		t.Fatalf("error = %v, want ErrNoPython", err)
	}
}

func capture(t *testing.T, w interface{ Write([]byte) (int, error) }, size int64, opts ...Option) Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := CapturePython(ctx, w, size, opts...)
	if errors.Is(err, ErrNoPython) {
		t.Skipf("skipping: %v", err)
	}
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func checkCapture(t *testing.T, img []byte, size int64, st Stats) {
	t.Helper()
	t.Logf("stats: %s", st)
	if int64(len(img)) != size {
		t.Fatalf("image is %d bytes, want %d", len(img), size)
	}
	if st.TotalPages != size/PageSize {
		t.Errorf("TotalPages = %d, want %d", st.TotalPages, size/PageSize)
	}
	if st.DataBytes <= 1<<20 {
		t.Errorf("DataBytes = %d, want > 1 MiB", st.DataBytes)
	}
	if st.Regions < 2 {
		t.Errorf("Regions = %d, want several", st.Regions)
	}
	if !bytes.Contains(img, []byte("__main__")) && !bytes.Contains(img, []byte("python")) {
		t.Error("image contains neither \"__main__\" nor \"python\"")
	}
	zero, _, _ := pageMix(img)
	if int64(zero) != st.ZeroPages {
		t.Errorf("ZeroPages = %d, counted %d", st.ZeroPages, zero)
	}
	// Everything after the captured data and its gaps is zero.
	used := st.DataBytes + int64(st.Regions-1)*DefaultGapPages*PageSize
	if used >= size {
		t.Fatalf("capture filled the image (%d of %d bytes); no tail to check", used, size)
	}
	if !isZero(img[used:]) {
		t.Errorf("tail after %d bytes is not zero", used)
	}
	if isZero(img[:PageSize]) {
		t.Error("first page is zero; want captured data at offset 0")
	}
}

func TestCapturePython(t *testing.T) {
	const size = 96 << 20
	var buf bytes.Buffer
	st := capture(t, &buf, size, WithHeapSize(4<<20))
	checkCapture(t, buf.Bytes(), size, st)
}

func TestCapturePythonFile(t *testing.T) {
	// Writing to a file exercises the sparse (Truncate) tail.
	const size = 96 << 20
	path := filepath.Join(t.TempDir(), "img.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := capture(t, f, size, WithHeapSize(1<<20))
	if pos, err := f.Seek(0, 1); err != nil || pos != size {
		t.Errorf("file offset after capture = %d, %v; want %d", pos, err, size)
	}
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkCapture(t, img, size, st)
}

func TestCapturePythonTruncates(t *testing.T) {
	// A small image is filled entirely with captured data.
	const size = 1 << 20
	var buf bytes.Buffer
	st := capture(t, &buf, size, WithHeapSize(0))
	if buf.Len() != size {
		t.Fatalf("image is %d bytes, want %d", buf.Len(), size)
	}
	// The image ends inside a region or inside the gap after one.
	used := st.DataBytes + int64(st.Regions-1)*DefaultGapPages*PageSize
	if used > size || used <= size-DefaultGapPages*PageSize {
		t.Errorf("data+gaps = %d bytes, want the whole image (%d)", used, size)
	}
}

func TestCapturePythonCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := CapturePython(ctx, &bytes.Buffer{}, PageSize)
	if errors.Is(err, ErrNoPython) {
		t.Skipf("skipping: %v", err)
	}
	if err == nil {
		t.Fatal("CapturePython with a canceled context succeeded")
	}
}

// buildFixture picks 60 distinct non-zero pages from a capture (pages
// mentioning python or __main__ first, then an even spread over the rest of
// the data, which covers code, rodata and heap) and places 4 zero pages
// among them: 64 pages, 256 KiB.
func buildFixture(img []byte) []byte {
	const nonZeroPages, zeroEvery = 60, 16
	var marked, other []int
	seen := make(map[string]bool)
	for off := 0; off+PageSize <= len(img); off += PageSize {
		pg := img[off : off+PageSize]
		if isZero(pg) || seen[string(pg)] {
			continue
		}
		seen[string(pg)] = true
		if bytes.Contains(pg, []byte("__main__")) || bytes.Contains(pg, []byte("python")) {
			marked = append(marked, off)
		} else {
			other = append(other, off)
		}
	}
	marked = marked[:min(len(marked), 8)]
	pick := append([]int(nil), marked...)
	need := nonZeroPages - len(pick)
	for i := 0; i < need && len(other) > 0; i++ {
		pick = append(pick, other[i*len(other)/need])
	}
	out := make([]byte, 0, 64*PageSize)
	for i, off := range pick {
		if i%(zeroEvery-1) == zeroEvery-2 {
			out = append(out, zeroPage[:]...)
		}
		out = append(out, img[off:off+PageSize]...)
	}
	for len(out) < 64*PageSize {
		out = append(out, zeroPage[:]...)
	}
	return out[:64*PageSize]
}

func TestFixture(t *testing.T) {
	if *update {
		var buf bytes.Buffer
		capture(t, &buf, 64<<20, WithHeapSize(4<<20))
		fx := buildFixture(buf.Bytes())
		if err := os.MkdirAll(filepath.Dir(fixturePath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fixturePath, fx, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fx, err := os.ReadFile(fixturePath)
	if err != nil {
		t.Fatalf("%v (regenerate with: go test ./bench/corpus -run TestFixture -update)", err)
	}
	if len(fx) != 256<<10 {
		t.Fatalf("fixture is %d bytes, want %d", len(fx), 256<<10)
	}
	zero, _, total := pageMix(fx)
	if zero == 0 || total-zero < 56 {
		t.Errorf("fixture has %d zero and %d non-zero pages, want a few zero and ~60 non-zero", zero, total-zero)
	}
	if !bytes.Contains(fx, []byte("__main__")) && !bytes.Contains(fx, []byte("python")) {
		t.Error("fixture contains neither \"__main__\" nor \"python\"")
	}
}
