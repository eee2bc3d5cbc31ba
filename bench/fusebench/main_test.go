//go:build linux

package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMain lets the test binary act as the benchmark's reader child.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// makeTree writes a small tree of mixed files: compressible text, random
// bytes, sparse-ish files, empty files, a symlink and a fifo (skipped).
func makeTree(t *testing.T, dir string) {
	t.Helper()
	write := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rnd := make([]byte, 3<<20)
	rand.Read(rnd)
	write("bin/blob", rnd)
	write("lib/zeros", make([]byte, 1<<20))
	var txt bytes.Buffer
	for i := 0; txt.Len() < 2<<20; i++ {
		fmt.Fprintf(&txt, "line %d: the quick brown fox jumps over the lazy dog\n", i)
	}
	write("share/doc/big.txt", txt.Bytes())
	for i := 0; i < 200; i++ {
		write(fmt.Sprintf("share/many/%02d/f%03d.py", i%10, i), txt.Bytes()[i*97:i*97+1000+i*37])
	}
	write("empty", nil)
	if err := os.Symlink("share/doc/big.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Makes the tree larger than -max: the copy stops before it.
	write("zz/last", make([]byte, 4<<20))
}

// TestRunSmall runs the whole benchmark on a tiny tree and checks the
// report and the markdown section it writes.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the benchmark end to end (mounts, loop devices, drop_caches)")
	}
	if err := preflight(); err != nil {
		if errors.Is(err, errMissing) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	makeTree(t, tree)
	out := filepath.Join(tmp, "docs", "PERFORMANCE.md")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	prior := "# Performance\n\nIntro.\n\n" + sectionTitle + "\n\nstale numbers\n\n## Later\n\nkeep me\n"
	if err := os.WriteFile(out, []byte(prior), 0o644); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"-tree", tree, "-max", "8M", "-rounds", "1", "-reads", "200", "-dir", work, "-out", out}
	if err := run(args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("stdout:\n%s", stdout.String())
	for _, want := range []string{"plain file", "fusefs images/rootfs", "squashfuse", "copied tree", "target", "READ requests"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if ents, err := os.ReadDir(work); err != nil || len(ents) != 0 {
		t.Errorf("temporary files left behind: %v %v", ents, err)
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), work) {
		t.Errorf("mounts left behind under %s:\n%s", work, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if strings.Count(doc, sectionTitle) != 1 || strings.Contains(doc, "stale numbers") {
		t.Errorf("section not replaced exactly once:\n%s", doc)
	}
	for _, want := range []string{"# Performance\n\nIntro.\n\n", "\n## Later\n\nkeep me\n", "Conclusions", "nproc ", "| fusefs images/rootfs |", "within 1.5×"} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q:\n%s", want, doc)
		}
	}
}

func TestReadHist(t *testing.T) {
	h := newReadHist()
	fmt.Fprintf(h, "2026/01/02 15:04:05 rx 10: READ n5 {Fh 1 [0 +131072)  L 0 RDONLY,0x8000}\n")
	fmt.Fprintf(h, "rx 12: READ n5 {Fh 1 [131072 +131072)  L 0 RDONLY}\nrx 13: READ n5 {Fh 1 [4096 +4096)  L 0 RDONLY}\n")
	fmt.Fprintf(h, "rx 14: LOOKUP n1 [\"images\"] 7b\n")
	if h.n != 3 || h.bytes != 2*131072+4096 || h.other["LOOKUP"] != 1 {
		t.Fatalf("hist = %d reads, %d bytes, %v", h.n, h.bytes, h.other)
	}
	if s := h.summary(); !strings.Contains(s, "3 READs") || !strings.Contains(s, "128 KiB ×2") {
		t.Errorf("summary = %q", s)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-max", "1K"}, {"-rounds", "0"}, {"-reads", "0"}, {"-tree", "/nonexistent"}, {"extra"}, {"-nope"}} {
		if err := run(args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q): want an error", args)
		}
	}
}
