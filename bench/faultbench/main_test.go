//go:build linux

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/uffd"
)

// TestMain lets the test binary serve as the benchmark's client process.
func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		childMain(spec)
		return
	}
	os.Exit(m.Run())
}

// TestRunSmall runs the whole benchmark on a small image and checks the
// report and the markdown section it writes.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the benchmark end to end")
	}
	if _, _, err := uffd.SupportedFeatures(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	tmp := t.TempDir()
	out := filepath.Join(tmp, "docs", "PERFORMANCE.md")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	prior := "# Performance\n\nIntro.\n\n## Earlier\n\nkeep me\n\n" + sectionTitle + "\n\nstale numbers\n\n## Later\n\nkeep me too\n"
	if err := os.WriteFile(out, []byte(prior), 0o644); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"-size", "8M", "-heap", "4M", "-rounds", "1", "-dir", work, "-out", out}
	if err := run(args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	for _, want := range []string{"read raw file into fresh memory", "anonymous mmap, first write per page", "uffd lazy (page server)",
		"lazy + fault-around", "prefetch, touch at once", "prefetch, wait for it", "Target prefetch", "Target fault p50"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	if ents, err := os.ReadDir(work); err != nil || len(ents) != 0 {
		t.Errorf("temporary files left behind: %v %v", ents, err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if strings.Count(doc, sectionTitle) != 1 {
		t.Errorf("want the section once:\n%s", doc)
	}
	for _, want := range []string{"# Performance\n\nIntro.", "## Earlier\n\nkeep me\n", "## Later\n\nkeep me too\n",
		"go run ./bench/faultbench " + strings.Join(args, " "), "| uffd lazy (page server) | warm |", "Conclusions", "nproc "} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q:\n%s", want, doc)
		}
	}
	// Figures this run did not measure are quoted as background, never
	// among the conclusions.
	_, concl, _ := strings.Cut(doc, "Conclusions (from the numbers above):")
	concl, bg, ok := strings.Cut(concl, "\nBackground (from ENVIRONMENT.md, not measured in this run)")
	if !ok || !strings.Contains(bg, "33–80 µs") {
		t.Errorf("no background line after the conclusions:\n%s", doc)
	}
	if strings.Contains(concl, "33–80") || strings.Contains(concl, "~11 µs") {
		t.Errorf("the conclusions quote figures this run did not measure:\n%s", concl)
	}
	if strings.Contains(doc, "stale numbers") {
		t.Errorf("old section content kept:\n%s", doc)
	}
	if i, j := strings.Index(doc, sectionTitle), strings.Index(doc, "## Later"); i > j {
		t.Errorf("section moved after the following one:\n%s", doc)
	}
	t.Logf("\n%s", stdout.String())
}

func TestChooseWorkingSet(t *testing.T) {
	zero := make([]bool, 4096)
	for p := range zero {
		zero[p] = p%7 == 0 || p >= 3000 // scattered zero pages and a zero tail
	}
	ws, runs := chooseWorkingSet(zero, 15, 1)
	if want := 614; len(ws) != want {
		t.Fatalf("%d pages, want %d", len(ws), want)
	}
	seen := map[uint32]bool{}
	nz, breaks := 0, 0
	for i, p := range ws {
		if seen[p] {
			t.Fatalf("page %d twice", p)
		}
		seen[p] = true
		if !zero[p] {
			nz++
		}
		if i > 0 && p != ws[i-1]+1 {
			breaks++
		}
	}
	if breaks+1 != runs {
		t.Errorf("%d runs reported, %d found", runs, breaks+1)
	}
	if mean := float64(len(ws)) / float64(runs); mean < 4 || mean > 12 {
		t.Errorf("mean run length %.1f, want about 8", mean)
	}
	if nz < len(ws)*2/3 || nz == len(ws) {
		t.Errorf("%d of %d pages non-zero: want mostly non-zero, some zero", nz, len(ws))
	}
	if sorted := slices.IsSorted(ws); sorted {
		t.Error("runs are not shuffled")
	}
	again, _ := chooseWorkingSet(zero, 15, 1)
	if !slices.Equal(ws, again) {
		t.Error("not deterministic for a seed")
	}
}

func TestHistogramHelpers(t *testing.T) {
	var h pageserver.Histogram
	h.Buckets[2] = 30  // [2, 3) µs
	h.Buckets[5] = 60  // [5, 6) µs
	h.Buckets[40] = 10 // [40, 41) µs
	if lo, hi := bucketOf(h, 0.5); lo.Microseconds() != 5 || hi.Microseconds() != 6 {
		t.Errorf("p50 bucket [%v, %v), want [5µs, 6µs)", lo, hi)
	}
	for _, tc := range []struct {
		d    time.Duration
		want float64
	}{{3 * time.Microsecond, 0.3}, {6 * time.Microsecond, 0.9}, {4 * time.Millisecond, 1}} {
		if got := below(h, tc.d); got != tc.want {
			t.Errorf("below %v = %v, want %v", tc.d, got, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	var ns []int64
	for i := int64(100); i >= 1; i-- {
		ns = append(ns, i*1000)
	}
	l := summarize(ns)
	if l.n != 100 || l.p50.Microseconds() != 50 || l.p99.Microseconds() != 99 || l.mean.Nanoseconds() != 50500 {
		t.Errorf("summarize = %+v", l)
	}
	if s := spreadOf(nil); s != (spread{}) {
		t.Errorf("empty spread %+v", s)
	}
	s := spreadOf([]time.Duration{3, 1, 2})
	if s.med != 2 || s.lo != 1 || s.hi != 3 {
		t.Errorf("spread %+v", s)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-size", "4097"}, {"-ws", "0"}, {"-ws", "101"}, {"-rounds", "0"}, {"extra"}, {"-nope"}} {
		if err := run(args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q): want an error", args)
		}
	}
}
