package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunSmall runs the whole benchmark on a tiny image and checks the
// report and the markdown section it writes.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the benchmark end to end")
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
	args := []string{"-size", "8M", "-heap", "4M", "-reads", "200", "-rounds", "1", "-drop=false", "-dir", work, "-out", out}
	if err := run(args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	for _, want := range []string{"zstd 4K", "s2 4K", "zstd 16K", "s2 16K", "zstd 64K", "s2 64K", "zstd 4K +hash",
		"page cache warm", "OS-cold measurements skipped", "Trade-off:"} {
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
		"go run ./bench/storebench " + strings.Join(args, " "), "| zstd 16K |", "Conclusions", "nproc "} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q:\n%s", want, doc)
		}
	}
	if strings.Contains(doc, "stale numbers") {
		t.Errorf("old section content kept:\n%s", doc)
	}
	if i, j := strings.Index(doc, sectionTitle), strings.Index(doc, "## Later"); i > j {
		t.Errorf("section moved after the following one:\n%s", doc)
	}
}

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	l := summarize(ds)
	if l.n != 100 || l.p50 != 50*time.Microsecond || l.p99 != 99*time.Microsecond || l.mean != 50500*time.Nanosecond {
		t.Errorf("summarize = %+v", l)
	}
	if ds[0] != 100*time.Microsecond {
		t.Error("summarize reordered its input")
	}
	if l := summarize([]time.Duration{7}); l.p50 != 7 || l.p99 != 7 {
		t.Errorf("one sample: %+v", l)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-size", "4097"}, {"-reads", "0"}, {"-rounds", "0"}, {"extra"}, {"-nope"}} {
		if err := run(args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q): want an error", args)
		}
	}
}
