// Command memcorpus writes a guest-like memory image for snapshot store
// benchmarks: either captured from a running python3 workload (default) or
// generated synthetically from a seed.
//
//	memcorpus [-size 128M] [-heap 32M] [-gap 4] [-timeout 2m] OUT
//	memcorpus -synthetic [-seed N] [-size 128M] OUT
//
// Sizes accept plain bytes or a binary suffix: K, KB, KiB, M, MB, MiB, G,
// GB, GiB, T, TB, TiB (all powers of 1024). The image size must be a
// multiple of 4096. A one-line summary of the image goes to stderr.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/snapfaas/snapfaas/bench/report"
	"io"
	"math"
	"os"
	"time"

	"github.com/snapfaas/snapfaas/bench/corpus"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "memcorpus: %v\n", err)
		os.Exit(1)
	}
}

const usage = "memcorpus [-size 128M] [-heap 32M] [-gap 4] [-timeout 2m] [-synthetic -seed N] OUT"

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("memcorpus", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by main
	size := report.Size(128 << 20)
	heap := report.Size(corpus.DefaultHeapSize)
	fs.Var(&size, "size", "image size (e.g. 128M, 64MiB, 1G or bytes); multiple of 4096")
	fs.Var(&heap, "heap", "approximate python live heap to build before capture")
	gap := fs.Int("gap", corpus.DefaultGapPages, "zero pages between captured regions")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up on the python capture after this long")
	synthetic := fs.Bool("synthetic", false, "generate a deterministic synthetic image instead of capturing python3")
	seed := fs.Int64("seed", 1, "seed for -synthetic")
	if help, err := report.ParseFlags(fs, args, usage, stderr); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("expected exactly one OUT argument, got %d (usage: %s)", fs.NArg(), usage)
	}
	out := fs.Arg(0)
	if size <= 0 || size%corpus.PageSize != 0 {
		return fmt.Errorf("-size %d: must be a positive multiple of %d", size, corpus.PageSize)
	}
	if *synthetic && int64(size) > math.MaxInt {
		return fmt.Errorf("-size %d: too large for -synthetic", size)
	}

	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	st, err := write(f, int64(size), int64(heap), *gap, *timeout, *synthetic, *seed)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", out, cerr)
	}
	if err != nil {
		os.Remove(out)
		if errors.Is(err, corpus.ErrNoPython) {
			return fmt.Errorf("python3 not found in PATH (use -synthetic for a python-free image)")
		}
		return err
	}
	mode := "python"
	if *synthetic {
		mode = fmt.Sprintf("synthetic seed=%d", *seed)
	}
	fmt.Fprintf(stderr, "memcorpus: %s: %s %s\n", out, mode, st)
	return nil
}

func write(f *os.File, size, heap int64, gap int, timeout time.Duration, synthetic bool, seed int64) (corpus.Stats, error) {
	if synthetic {
		img := corpus.Generate(seed, size)
		if _, err := f.Write(img); err != nil {
			return corpus.Stats{}, fmt.Errorf("write %s: %w", f.Name(), err)
		}
		st := corpus.Stats{TotalPages: size / corpus.PageSize}
		var zero [corpus.PageSize]byte
		for off := 0; off < len(img); off += corpus.PageSize {
			if bytes.Equal(img[off:off+corpus.PageSize], zero[:]) {
				st.ZeroPages++
			}
		}
		st.DataBytes = (st.TotalPages - st.ZeroPages) * corpus.PageSize
		return st, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return corpus.CapturePython(ctx, f, size, corpus.WithHeapSize(heap), corpus.WithGapPages(gap))
}
