package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/bench/report"
	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/internal/progress"
)

// snapfaas bench restore measures the three ways to restore a function VM
// in one run, on the same snapshot: eager (all memory copied first), lazy
// (pages served by the sidecar on fault) and lazy with the recorded
// working set prefetched. The guest's memory is mostly an initrd of
// realistic content (a python3 process's memory, or a synthetic corpus),
// and its one request reads a spread of pages of it (the working set).
func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "benchmarks (restore)",
		Subcommands: []*cli.Command{{
			Name:  "restore",
			Usage: "restore-to-first-response for eager, lazy and lazy + working set, in one run",
			Description: `Boots the test guest with --mem_size MiB of memory, most of it an initrd
holding realistic memory content, stores a base snapshot, records the
working set of a request that reads --ws percent of the guest's pages, and
restores it --rounds times each way (eager: all memory copied in by the
sidecar first; lazy; lazy + WS; interleaved), each from a freshly started
sidecar (a cold chunk cache).
Prints the medians, the ratios between the ways, and the VMM's resident
memory beyond guest memory; --out writes it as a section of a markdown
file (docs/PERFORMANCE.md). Needs /dev/kvm and gcc.`,
			Flags: []cli.Flag{
				&cli.IntFlag{Name: "mem_size", Value: 128, Usage: "guest memory in `MiB`"},
				&cli.Float64Flag{Name: "ws", Value: 15, Usage: "working set, in `PERCENT` of guest memory"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "restores of each kind"},
				&cli.BoolFlag{Name: "synthetic", Usage: "fill the initrd with the synthetic corpus instead of a python3 process's memory"},
				&cli.StringFlag{Name: "store", Usage: "use store `DIR` (default: a scratch store, removed)"},
				&cli.StringFlag{Name: "out", Usage: "write the results as a section of markdown `FILE`"},
				&cli.StringFlag{Name: "snapstore", Usage: "the snapstore `BINARY` (default: next to snapfaas, then PATH)"},
			},
			Action: benchRestore,
		}},
	}
}

func benchRestore(c *cli.Context) error {
	memMiB, wsPct, rounds := c.Int("mem_size"), c.Float64("ws"), c.Int("rounds")
	if memMiB < 32 || wsPct <= 0 || wsPct > 50 || rounds < 1 {
		return usageError{"need --mem_size ≥ 32, 0 < --ws ≤ 50 and --rounds ≥ 1"}
	}
	t0 := time.Now()
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...) }
	elf, err := labGuest("the benchmark")
	if err != nil {
		return err
	}
	l, err := newLab(c)
	if err != nil {
		return err
	}
	defer l.close()

	// The initrd: all of memory but 16 MiB (kernel, heap, page tables).
	initrdSize := int64(memMiB-16) << 20
	initrdPath := filepath.Join(l.work, "initrd")
	f, err := os.Create(initrdPath)
	if err != nil {
		return err
	}
	var content string
	synthetic := c.Bool("synthetic")
	if !synthetic {
		logf("capturing %s of a python3 process's memory for the initrd", progress.Bytes(initrdSize))
		var st corpus.Stats
		st, err = corpus.CapturePython(c.Context, f, initrdSize)
		content = "a python3 process's memory (bench/corpus.CapturePython): " + st.String()
		if errors.Is(err, corpus.ErrNoPython) {
			logf("no python3: using the synthetic corpus")
			f.Truncate(0)
			f.Seek(0, 0)
			err = nil
			synthetic = true
		}
	}
	if err == nil && synthetic {
		_, err = f.Write(corpus.Generate(1, initrdSize))
		content = "the synthetic corpus (bench/corpus.Generate, seed 1)"
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	initrd, err := os.ReadFile(initrdPath)
	if err != nil {
		return err
	}

	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	heap := func() *testguest.Heap { return testguest.NewHeap(cfg.Seed, cfg.HeapMB) }
	pages := uint64(memMiB) << 20 / 4096
	count := uint64(float64(pages) * wsPct / 100)
	initrdPages := uint64(initrdSize / 4096)
	if count > initrdPages {
		return usageError{"--ws is larger than the initrd"}
	}
	request := testguest.ReadRequest(1, 0, count, initrdPages/count, 8)

	logf("booting a %d MiB guest with a %s initrd and storing its base snapshot", memMiB, progress.Bytes(initrdSize))
	if _, err := l.trial(heap(), initrd, []testguest.Request{testguest.TouchRequest(1, 0, 1, 1, false)},
		"--kernel", elf, "--initrd", initrdPath, "--mem_size", fmt.Sprint(memMiB), "--cmdline", cfg.Cmdline(), "--dump_dir", "bench"); err != nil {
		return err
	}
	info, err := l.inspect("bench")
	if err != nil {
		return err
	}
	logf("recording the working set of a request that reads %d pages (8 bytes of each)", count)
	st, err := l.trial(heap(), initrd, []testguest.Request{request}, "--load_dir", "bench", "--dump_ws")
	if err != nil {
		return err
	}
	ws := st.PageServer.Recorded

	modes := []struct {
		name string
		args []string
	}{{"eager", []string{"--copy_base"}}, {"lazy", nil}, {"lazy + WS", []string{"--load_ws"}}}
	results := make([][]runStats, len(modes))
	for r := 0; r < rounds; r++ {
		for i, m := range modes {
			logf("round %d/%d: %s restore", r+1, rounds, m.name)
			if err := l.startSidecar(); err != nil {
				return err
			}
			st, err := l.trial(heap(), initrd, []testguest.Request{request}, append([]string{"--load_dir", "bench"}, m.args...)...)
			if err != nil {
				return err
			}
			results[i] = append(results[i], st)
		}
	}

	// Medians per mode.
	med := func(rs []runStats, f func(runStats) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	dur := func(f func(runStats) time.Duration) func(runStats) float64 {
		return func(r runStats) float64 { return float64(f(r)) }
	}
	ps := func(f func(runStats) float64) func(runStats) float64 {
		return func(r runStats) float64 {
			if r.PageServer == nil {
				return 0
			}
			return f(r)
		}
	}
	first := func(i int) float64 {
		return med(results[i], dur(func(r runStats) time.Duration { return r.FirstResponse }))
	}
	faultTime := func(i int) float64 {
		return med(results[i], ps(func(r runStats) float64 { return float64(r.PageServer.FaultTime) }))
	}
	t := report.Table{Head: []string{"restore", "VM built", "guest ready", "first response", "page faults", "prefetched", "memory in", "decoded", "fault time", "RSS beyond guest", "private beyond guest"}}
	for i, m := range modes {
		rs := results[i]
		row := []string{m.name,
			ms(time.Duration(med(rs, dur(func(r runStats) time.Duration { return r.Restore })))),
			ms(time.Duration(med(rs, dur(func(r runStats) time.Duration { return r.Ready })))),
			ms(time.Duration(first(i))),
			fmt.Sprint(int64(med(rs, ps(func(r runStats) float64 { return float64(r.PageServer.Faults) })))),
			fmt.Sprint(int64(med(rs, ps(func(r runStats) float64 { return float64(r.PageServer.Prefetched) })))),
			progress.Bytes(int64(med(rs, ps(func(r runStats) float64 {
				return float64(r.PageServer.Faults+r.PageServer.Prefetched+r.PageServer.AroundPages+r.PageServer.Copied) * 4096
			})))),
			progress.Bytes(int64(med(rs, ps(func(r runStats) float64 { return float64(r.PageServer.Decompressed) })))),
			ms(time.Duration(faultTime(i))),
			progress.Bytes(int64(med(rs, func(r runStats) float64 { return float64(r.RSS - r.GuestRSS) }))),
			progress.Bytes(int64(med(rs, func(r runStats) float64 { return float64(r.AnonRSS - r.GuestRSS) })))}
		t.Rows = append(t.Rows, row)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "## Restore (issue 6)\n\nGenerated by `snapfaas bench restore`; every number below was measured in this one run (%s).\n\n", time.Since(t0).Round(time.Second))
	fmt.Fprintf(&b, "- Command: `%s`\n", strings.Join(append([]string{"snapfaas"}, os.Args[1:]...), " "))
	fmt.Fprintf(&b, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- Machine: %s; KVM is PVM here: the guest's instructions are emulated (about 2 M/s), so its own work is slow and dominates first-response times\n", report.Machine())
	fmt.Fprintf(&b, "- Guest: the test guest, %d MiB of memory, of which a %s initrd holding %s\n", memMiB, progress.Bytes(initrdSize), content)
	fmt.Fprintf(&b, "- Snapshot: %s logical, %d zero pages, %s stored\n", progress.Bytes(int64(num(info, "logical_bytes"))), int64(num(info, "zero_pages")), progress.Bytes(int64(num(info, "stored_bytes"))))
	fmt.Fprintf(&b, "- Request: read 8 bytes of each of %d initrd pages, stride %d (%.1f%% of guest memory); recorded working set: %d pages (%.1f%%)\n",
		count, request.Stride, 100*float64(count)/float64(pages), ws, 100*float64(ws)/float64(pages))
	fmt.Fprintf(&b, "- Each way restored %d times, interleaved; medians. Times are from the start of `snapfaas run` (process start excluded). Every restore starts from a fresh sidecar (cold chunk cache; packs in the page cache); eager = the sidecar copies every page in before the VM runs\n\n", rounds)
	t.Markdown(&b)
	fmt.Fprintf(&b, "\n- Fault time (time the sidecar spent serving faults): lazy %s, lazy + WS %s: **%.1f×** less with the working set prefetched\n",
		ms(time.Duration(faultTime(1))), ms(time.Duration(faultTime(2))), faultTime(1)/max(faultTime(2), 1))
	fmt.Fprintf(&b, "- First response: eager %s, lazy %s, lazy + WS %s; lazy + WS is %.2f× faster than lazy and %.2f× faster than eager\n",
		ms(time.Duration(first(0))), ms(time.Duration(first(1))), ms(time.Duration(first(2))), first(1)/first(2), first(0)/first(2))
	fmt.Fprintf(&b, "- Memory: \"RSS beyond guest\" is the VMM process's resident memory outside guest memory (including its binary's pages, which every VMM shares); \"private beyond guest\" is its anonymous memory outside guest memory, what each further VM costs\n")
	priv := med(results[2], func(r runStats) float64 { return float64(r.AnonRSS - r.GuestRSS) })
	total := med(results[2], func(r runStats) float64 { return float64(r.RSS - r.GuestRSS) })
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Fprintf(&b, "- Targets: lazy + WS at least 5× less fault time than lazy: %s (%.0f×). VMM memory beyond guest memory at most 5 MiB: %s for the private part (%s); the whole resident set beyond guest memory is %s, the difference being the snapfaas binary's file pages, mapped once in the page cache for all VMMs\n",
		verdict(faultTime(1) >= 5*faultTime(2)), faultTime(1)/max(faultTime(2), 1), verdict(priv <= 5<<20), progress.Bytes(int64(priv)), progress.Bytes(int64(total)))
	out := b.String()
	fmt.Print(out)
	if p := c.String("out"); p != "" {
		if err := report.WriteSection(p, out); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		logf("wrote the section to %s", p)
	}
	return nil
}
