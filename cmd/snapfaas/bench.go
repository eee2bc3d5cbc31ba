package main

import (
	"errors"
	"fmt"
	"github.com/snapfaas/snapfaas/vmm/kvm"
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
	"github.com/snapfaas/snapfaas/pageserver"
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
Prints the medians, the targets (lazy + WS against lazy and eager on
page-in time and on first response; the VMM's memory beyond guest
memory) with the numbers they are judged on, and the KVM kind found in
/sys/module; --out writes it as a section of a markdown
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

	results := make([][]runStats, len(restoreModes))
	for r := 0; r < rounds; r++ {
		for i, m := range restoreModes {
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

	var b strings.Builder
	fmt.Fprintf(&b, "## Restore (issue 6)\n\nGenerated by `snapfaas bench restore`; every number below was measured or detected in this one run (%s).\n\n", time.Since(t0).Round(time.Second))
	fmt.Fprintf(&b, "- Command: `%s`\n", strings.Join(append([]string{"snapfaas"}, os.Args[1:]...), " "))
	fmt.Fprintf(&b, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- Machine: %s\n", report.Machine())
	fmt.Fprintf(&b, "- KVM: %s\n", kvmKind("/sys/module"))
	fmt.Fprintf(&b, "- Guest: the test guest, %d MiB of memory, of which a %s initrd holding %s\n", memMiB, progress.Bytes(initrdSize), content)
	fmt.Fprintf(&b, "- Snapshot: %s logical, %d zero pages, %s stored\n", progress.Bytes(int64(num(info, "logical_bytes"))), int64(num(info, "zero_pages")), progress.Bytes(int64(num(info, "stored_bytes"))))
	fmt.Fprintf(&b, "- Request: read 8 bytes of each of %d initrd pages, stride %d (%.1f%% of guest memory); recorded working set: %d pages (%.1f%%)\n",
		count, request.Stride, 100*float64(count)/float64(pages), ws, 100*float64(ws)/float64(pages))
	fmt.Fprintf(&b, "- Each way restored %d times, interleaved; medians. Times are from the start of `snapfaas run` (process start excluded). Every restore starts from a fresh sidecar (cold chunk cache; packs in the page cache); eager = the sidecar copies every page in before the VM runs\n\n", rounds)
	restoreResults(&b, results)
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

// restoreModes are the ways bench restore restores, in the order of its
// table; restoreResults expects its results in this order.
var restoreModes = []struct {
	name string
	args []string
}{{"eager", []string{"--copy_base"}}, {"lazy", nil}, {"lazy + WS", []string{"--load_ws"}}}

const (
	eager, lazy, lazyWS = 0, 1, 2 // indexes into restoreModes

	// restoreSpeedup is how much better than plain lazy restore lazy +
	// WS must be, in page-in time and in first response.
	restoreSpeedup = 5
	// vmmPrivateMax bounds the VMM's private memory beyond guest memory.
	vmmPrivateMax = 5 << 20
)

// pageIn is the time the sidecar spent putting a run's memory in place:
// copying it in before the VM ran (eager), prefetching the working set
// (from the handoff until the list was done, while the VM runs) and
// serving faults.
func pageIn(r runStats) time.Duration {
	if r.PageServer == nil {
		return 0
	}
	m := r.PageServer
	return m.CopyTime + m.PrefetchDone + m.FaultTime
}

func firstResponse(r runStats) time.Duration { return r.FirstResponse }

// median is the median of f over rs; 0 without runs.
func median(rs []runStats, f func(runStats) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func medianDur(rs []runStats, f func(runStats) time.Duration) time.Duration {
	return time.Duration(median(rs, func(r runStats) float64 { return float64(f(r)) }))
}

// restoreTarget is one restore target: lazy + WS against base (lazy or
// eager) on one measure, base's median over lazy + WS's at least min.
type restoreTarget struct {
	measure    string // "page-in time", "first response"
	base       string // the mode lazy + WS is compared with
	min        float64
	baseT, wsT time.Duration // medians; 0 when not measured
	v          report.Verdict
}

// restoreTargets judges lazy + WS against lazy (restoreSpeedup× better)
// and against eager (better) on both page-in time and first response,
// from the runs of each mode (indexed as restoreModes). A mode without
// runs, or a median of zero, is not measured.
func restoreTargets(results [][]runStats) []restoreTarget {
	var out []restoreTarget
	at := func(i int) []runStats {
		if i < len(results) {
			return results[i]
		}
		return nil
	}
	for _, m := range []struct {
		name string
		f    func(runStats) time.Duration
	}{{"page-in time", pageIn}, {"first response", firstResponse}} {
		for _, c := range []struct {
			base int
			min  float64
		}{{lazy, restoreSpeedup}, {eager, 1}} {
			t := restoreTarget{measure: m.name, base: restoreModes[c.base].name, min: c.min,
				baseT: medianDur(at(c.base), m.f), wsT: medianDur(at(lazyWS), m.f)}
			if t.baseT > 0 && t.wsT > 0 {
				t.v = report.AtLeast(float64(t.baseT)/float64(t.wsT), c.min)
			}
			out = append(out, t)
		}
	}
	return out
}

// memoryTarget judges "VMM private memory beyond guest memory at most
// vmmPrivateMax" on the largest median over the modes, which it returns
// with the mode's name; no runs, or no memory figures (smaps unreadable),
// is not measured.
func memoryTarget(results [][]runStats) (worst float64, mode string, v report.Verdict) {
	for i, rs := range results {
		if len(rs) == 0 || slices.ContainsFunc(rs, func(r runStats) bool { return r.RSS == 0 }) {
			return 0, "", report.NotMeasured
		}
		if p := median(rs, func(r runStats) float64 { return float64(r.AnonRSS - r.GuestRSS) }); mode == "" || p > worst {
			worst, mode = p, restoreModes[i].name
		}
	}
	return worst, mode, report.AtMost(worst, vmmPrivateMax)
}

// msOrDash formats a median for a target line, "-" when not measured.
func msOrDash(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f ms", float64(d)/1e6)
}

// restoreResults writes the table, the notes and the targets for the runs
// of each mode (indexed as restoreModes).
func restoreResults(b *strings.Builder, results [][]runStats) {
	dur := func(f func(runStats) time.Duration) func(runStats) float64 {
		return func(r runStats) float64 { return float64(f(r)) }
	}
	ps := func(f func(pageserver.Metrics) float64) func(runStats) float64 {
		return func(r runStats) float64 {
			if r.PageServer == nil {
				return 0
			}
			return f(*r.PageServer)
		}
	}
	msCell := func(rs []runStats, f func(runStats) float64) string {
		if len(rs) == 0 {
			return "-"
		}
		return ms(time.Duration(median(rs, f)))
	}
	t := report.Table{Head: []string{"restore", "runs", "VM built", "guest ready", "first response", "page faults", "prefetched", "memory in", "decoded",
		"copy-in time", "prefetch time", "fault time", "page-in time", "RSS beyond guest", "private beyond guest"}}
	for i, m := range restoreModes {
		var rs []runStats
		if i < len(results) {
			rs = results[i]
		}
		t.Rows = append(t.Rows, []string{m.name, fmt.Sprint(len(rs)),
			msCell(rs, dur(func(r runStats) time.Duration { return r.Restore })),
			msCell(rs, dur(func(r runStats) time.Duration { return r.Ready })),
			msCell(rs, dur(firstResponse)),
			fmt.Sprint(int64(median(rs, ps(func(m pageserver.Metrics) float64 { return float64(m.Faults) })))),
			fmt.Sprint(int64(median(rs, ps(func(m pageserver.Metrics) float64 { return float64(m.Prefetched) })))),
			progress.Bytes(int64(median(rs, ps(func(m pageserver.Metrics) float64 {
				return float64(m.Faults+m.Prefetched+m.AroundPages+m.Copied) * 4096
			})))),
			progress.Bytes(int64(median(rs, ps(func(m pageserver.Metrics) float64 { return float64(m.Decompressed) })))),
			msCell(rs, ps(func(m pageserver.Metrics) float64 { return float64(m.CopyTime) })),
			msCell(rs, ps(func(m pageserver.Metrics) float64 { return float64(m.PrefetchDone) })),
			msCell(rs, ps(func(m pageserver.Metrics) float64 { return float64(m.FaultTime) })),
			msCell(rs, dur(pageIn)),
			progress.Bytes(int64(median(rs, func(r runStats) float64 { return float64(r.RSS - r.GuestRSS) }))),
			progress.Bytes(int64(median(rs, func(r runStats) float64 { return float64(r.AnonRSS - r.GuestRSS) })))})
	}
	t.Markdown(b)
	fmt.Fprintf(b, "\n- Page-in time: the sidecar's time putting guest memory in place, copy-in (eager: every page, before the VM runs) + prefetch (lazy + WS: from the handoff until the working set is in, while the VM runs) + fault time (serving the faults); each column is a median over the runs, so the columns need not add up\n")
	fmt.Fprintf(b, "- Memory: \"RSS beyond guest\" is the VMM process's resident memory outside guest memory (including its binary's pages, which every VMM shares); \"private beyond guest\" is its anonymous memory outside guest memory, what each further VM costs\n")
	for _, tg := range restoreTargets(results) {
		x := "-"
		if tg.v != report.NotMeasured {
			x = report.Times(float64(tg.baseT) / float64(tg.wsT))
		}
		fmt.Fprintf(b, "- Target %s %s ÷ lazy + WS ≥ %g×: %s ÷ %s = %s: %s\n", tg.measure, tg.base, tg.min, msOrDash(tg.baseT), msOrDash(tg.wsT), x, tg.v)
	}
	worst, mode, v := memoryTarget(results)
	line := fmt.Sprintf("- Target VMM private memory beyond guest memory ≤ %s in every mode: ", progress.Bytes(vmmPrivateMax))
	if v == report.NotMeasured {
		line += "not measured"
	} else {
		line += fmt.Sprintf("largest median %s (%s): %s", progress.Bytes(int64(worst)), mode, v)
	}
	fmt.Fprintln(b, line)
}

// kvmKind says which KVM this machine has, from the modules loaded
// (sysModule is /sys/module): PVM (kvm_pvm, software virtualization)
// or hardware virtualization (kvm_intel, kvm_amd).
func kvmKind(sysModule string) string {
	kinds := map[string]string{"kvm_pvm": "PVM", "kvm_intel": "hardware (Intel VT-x)", "kvm_amd": "hardware (AMD-V)"}
	if m := kvm.HostModule(sysModule); m != "" {
		return fmt.Sprintf("%s (%s present)", kinds[m], filepath.Join(sysModule, m))
	}
	return fmt.Sprintf("not identified (none of kvm_pvm, kvm_intel, kvm_amd in %s)", sysModule)
}
