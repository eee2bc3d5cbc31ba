package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/internal/progress"
)

// snapfaas demo shows the product's main job end to end with the test
// guest: a base snapshot at the guest's snapshot point, a diff snapshot
// of a warmed-up function on top of it, a recorded working set, and three
// restores (eager, lazy, lazy with the working set prefetched) of the
// same request, every answer checked against the guest's model.
func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "build the test guest, snapshot it (base, diff, working set) and restore it three ways",
		Description: `Needs /dev/kvm and gcc (the test guest is freestanding C). Works in a
scratch store that is removed afterwards (unless --store is given), and
drives "snapfaas run" exactly as a user would; the sidecar it starts is
stopped at the end.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Usage: "use store `DIR` and keep it (default: a scratch store, removed)"},
			&cli.IntFlag{Name: "mem_size", Value: 128, Usage: "guest memory in `MiB`"},
			&cli.IntFlag{Name: "heap", Value: 2, Usage: "the guest's heap in `MiB` (filled at boot: about 2.5 s per MiB on an emulating host)"},
			&cli.StringFlag{Name: "snapstore", Usage: "the snapstore `BINARY` (default: next to snapfaas, then PATH)"},
		},
		Action: demoAction,
	}
}

func demoAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{"demo takes no arguments (see --help)"}
	}
	if c.Int("heap") < 1 || c.Int("mem_size") < c.Int("heap")+16 {
		return usageError{"--heap must be at least 1 MiB and --mem_size at least 16 MiB more than it"}
	}
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	t0 := time.Now()
	say("== building the test guest (freestanding C, boots through the 64-bit Linux boot protocol)")
	elf, err := labGuest("the demo")
	if err != nil {
		return err
	}
	l, err := newLab(c)
	if err != nil {
		return err
	}
	defer l.close()

	cfg := testguest.DefaultConfig()
	cfg.HeapMB = uint64(c.Int("heap"))
	pages := testguest.HeapPages(cfg.HeapMB)
	fresh := func() *testguest.Heap { return testguest.NewHeap(cfg.Seed, cfg.HeapMB) }
	// The function's warm-up writes a few pages; its request reads half
	// the heap (8 bytes of each page: this guest computes slowly).
	warm := []testguest.Request{testguest.TouchRequest(1, 1, 32, 7, true)}
	request := testguest.Request{ID: 1, Op: testguest.OpTouch, Start: 0, Count: pages / 2, Stride: 2, Bytes: 8}
	base, fn := "demo-base", "demo-fn"
	for _, n := range []string{fn, base} { // a kept store may hold an earlier demo
		_, _ = snapstoreRun(c.Context, l.snapstore, l.store, "rm", n)
	}

	say("== base snapshot: boot a %d MiB VM, fill a %d MiB heap, snapshot at the guest's snapshot point", c.Int("mem_size"), cfg.HeapMB)
	st, err := l.trial(fresh(), nil, []testguest.Request{testguest.TouchRequest(1, 0, 1, 1, false)},
		"--kernel", elf, "--mem_size", fmt.Sprint(c.Int("mem_size")), "--cmdline", cfg.Cmdline(), "--dump_dir", base)
	if err != nil {
		return err
	}
	info, err := l.inspect(base)
	if err != nil {
		return err
	}
	say("   %q: %s of guest memory, %s stored (zero pages are not), booted and stored in %s", base,
		progress.Bytes(int64(num(info, "logical_bytes"))), progress.Bytes(int64(num(info, "stored_bytes"))), st.Ready.Round(10*time.Millisecond))

	say("== diff snapshot: restore the base, warm the function up (%d page writes), store only the pages it dirtied", warm[0].Count)
	warmed := fresh()
	if _, err := l.trial(warmed, nil, warm, "--load_dir", base, "--dump_dir", fn, "--diff"); err != nil {
		return err
	}
	if info, err = l.inspect(fn); err != nil {
		return err
	}
	say("   %q: %d pages in its own layer (%.2f%% of memory, %s stored) on top of %q", fn, int64(num(info, "layer_pages")),
		100*num(info, "layer_pages")/num(info, "pages"), progress.Bytes(int64(num(info, "unique_stored_bytes"))), base)

	say("== working set: restore %q lazily, serve the function's request, record the pages it touched", fn)
	model := func() *testguest.Heap {
		h := fresh()
		for _, r := range warm {
			h.Apply(r)
		}
		return h
	}
	st, err = l.trial(model(), nil, []testguest.Request{request}, "--load_dir", fn, "--dump_ws")
	if err != nil {
		return err
	}
	say("   %d pages recorded (%.1f%% of memory)", st.PageServer.Recorded, 100*float64(st.PageServer.Recorded)*4096/float64(c.Int("mem_size")<<20))

	say("== restore %q three ways; each serves the same request (%d heap pages touched)", fn, request.Count)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "restore\tVM built\tguest ready\tfirst response\tpage faults\tprefetched\tmemory in\tdecoded\tfault time\t")
	for _, m := range []struct {
		name string
		args []string
	}{{"eager", []string{"--copy_base"}}, {"lazy", nil}, {"lazy + WS", []string{"--load_ws"}}} {
		// Each restore starts with a fresh sidecar (a cold chunk cache).
		if err := l.startSidecar(); err != nil {
			return err
		}
		st, err := l.trial(model(), nil, []testguest.Request{request}, append([]string{"--load_dir", fn}, m.args...)...)
		if err != nil {
			return err
		}
		p := st.PageServer
		faults, pre, dec, ft := fmt.Sprint(p.Faults), fmt.Sprint(p.Prefetched), progress.Bytes(int64(p.Decompressed)), ms(p.FaultTime)
		in := progress.Bytes(int64(p.Faults+p.Prefetched+p.AroundPages+p.Copied) * 4096)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", m.name, ms(st.Restore), ms(st.Ready), ms(st.FirstResponse), faults, pre, in, dec, ft)
	}
	tw.Flush()
	say("memory in: guest memory the sidecar installed, before (eager) or while (lazy) the guest ran; decoded: chunk bytes it decompressed")
	say("every answer matched the guest's model: the restores are identical to each other and to the VM that was snapshotted")
	say("(`snapfaas bench restore` measures these restores of a 128 MiB guest, several times each)")
	say("done in %s", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// num reads a JSON number from m (0 if absent).
func num(m map[string]any, k string) float64 {
	f, _ := m[k].(float64)
	return f
}
