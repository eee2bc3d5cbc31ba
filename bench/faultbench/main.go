//go:build linux

// Command faultbench measures the page server (package pageserver) serving
// a guest-like memory image through userfaultfd, against reading the raw
// image and against first-touch faults of plain anonymous memory.
//
//	go run ./bench/faultbench [-size 128M] [-ws 15] [-rounds 3] [-out docs/PERFORMANCE.md]
//
// It captures the memory of a live python3 process (bench/corpus; a
// synthetic image when python3 is missing), imports it into a fresh store
// (default granularity and codec) as snapshot "bench", and stores a working
// set of -ws percent of the pages: runs of 1–16 consecutive pages starting
// mostly at non-zero pages (one run in ten at a zero page), in shuffled run
// order. A pageserver.Server runs in this process on a Unix socket; every
// client is this binary re-executed as a child (FAULTBENCH_CHILD) that maps
// anonymous memory, registers it with a uffd, hands it over with
// pageserver.Connect, touches pages (one byte read each), times that with
// time.Now, checks the bytes (SHA-256, outside the timed region) and
// reports JSON with the session's server-side metrics.
//
// Measured, each for -rounds rounds in the same run:
//
//   - fault-all: every page touched in address order, lazily (no prefetch),
//     with the chunk cache cold (a freshly opened store and server) and warm
//     (a second session on the same server), against os.ReadFile of the raw
//     image (page cache warm) into a fresh process's memory and first
//     touches of a plain anonymous mapping; client-observed per-touch
//     latency for a random quarter of the touches and the server's fault
//     service histogram;
//   - working set: handoff → every working-set page touched in working-set
//     order, cold and warm, for lazy, lazy with fault-around, prefetch with
//     the client touching at once, and prefetch with the client waiting for
//     it to finish (polling Client.Metrics).
//
// Results go to stdout as tables; with -out, a "## Page server (issue 3)"
// section with the command, machine, tables and conclusions replaces (or is
// appended to) that file. Temporary files are removed on exit. -v logs
// every client session.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	perf "github.com/snapfaas/snapfaas/bench/report"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
)

const sectionTitle = "## Page server (issue 3)"

const usage = "faultbench [-size 128M] [-ws 15] [-rounds 3] [-out docs/PERFORMANCE.md] [-heap 32M] [-seed 1] [-dir TMP] [-v]"

const (
	pageSize = 4096
	snapName = "bench"
	// sampleOneIn: one touch in four is timed individually in fault-all.
	sampleOneIn = 4
	// childTimeout bounds one client process.
	childTimeout = 2 * time.Minute
)

// Targets from the issue.
const (
	targetSpeedup   = 5.0  // prefetch vs plain lazy on the working set
	targetInstalled = 0.99 // working-set pages installed before touched
	targetP50       = 5 * time.Microsecond
)

func main() {
	if spec := os.Getenv(childEnv); spec != "" {
		childMain(spec)
		return
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "faultbench: %v\n", err)
		os.Exit(1)
	}
}

type params struct {
	size    int64
	heap    int64
	wsPct   float64
	rounds  int
	seed    uint64
	out     string
	dir     string
	verbose bool
	args    []string
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("faultbench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	size := perf.Size(128 << 20)
	heap := perf.Size(corpus.DefaultHeapSize)
	fs.Var(&size, "size", "guest memory size (e.g. 128M); multiple of 4096")
	fs.Var(&heap, "heap", "approximate python live heap to build before capture")
	ws := fs.Float64("ws", 15, "working set size, percent of the guest's pages")
	rounds := fs.Int("rounds", 3, "rounds of every measurement")
	seed := fs.Uint64("seed", 1, "seed of the working set choice (and of the synthetic corpus)")
	out := fs.String("out", "", "markdown file to write the \""+sectionTitle+"\" section into")
	dir := fs.String("dir", "", "directory for temporary files (default: the system temp dir)")
	verbose := fs.Bool("v", false, "log every client session to stderr")
	if help, err := perf.ParseFlags(fs, args, usage, stderr); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q (usage: %s)", fs.Args(), usage)
	}
	if size <= 0 || size%pageSize != 0 || size > 1<<40 {
		return fmt.Errorf("-size %d: must be a positive multiple of %d", size, pageSize)
	}
	if !(*ws > 0 && *ws <= 100) {
		return fmt.Errorf("-ws %g: must be in (0, 100]", *ws)
	}
	if *rounds <= 0 {
		return fmt.Errorf("-rounds %d: must be positive", *rounds)
	}
	p := params{size: int64(size), heap: int64(heap), wsPct: *ws, rounds: *rounds, seed: *seed, out: *out, dir: *dir, verbose: *verbose, args: args}
	return bench(p, stdout, stderr)
}

// env is the prepared corpus, store and working set.
type env struct {
	tmp      string
	raw      string // raw image
	storeDir string
	exe      string // this binary, for the children
	size     int64
	pages    int64
	nonZero  int64
	desc     string // corpus line
	source   string // "python" or "synthetic"

	ws      []uint32 // working set, in touch (= prefetch) order
	wsZero  int      // zero pages in it
	wsRuns  int
	wsFile  string // ws as a touch file
	sumAll  string // SHA-256 of the image
	sumWS   string // SHA-256 of the ws pages in order
	chunks  int
	stored  int64
	nsocket int
	openMem spread // Store.OpenMemory of the snapshot, on a fresh store
	logf    func(string, ...any)
	verbose bool
}

// wsMode is one way of reaching the working set.
type wsMode struct {
	name                   string
	prefetch, around, wait bool
}

var wsModes = []wsMode{
	{name: "lazy"},
	{name: "lazy + fault-around", around: true},
	{name: "prefetch, touch at once", prefetch: true},
	{name: "prefetch, wait for it", prefetch: true, wait: true},
}

// results holds every measurement, one entry per round.
type results struct {
	readFile []time.Duration
	anon     []childResult
	lazyCold []childResult
	lazyWarm []childResult
	wsCold   [][]childResult // per wsModes index
	wsWarm   [][]childResult
	elapsed  time.Duration
	// measured is the wall time of the measurement rounds, and others the
	// CPU time that other processes used meanwhile (-1: unknown).
	measured time.Duration
	others   time.Duration
}

func bench(p params, stdout, stderr io.Writer) error {
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "faultbench: "+format+"\n", a...) }
	started := time.Now()
	tmp, err := os.MkdirTemp(p.dir, "faultbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	e, err := prepare(p, tmp, logf)
	if err != nil {
		return err
	}
	r := &results{wsCold: make([][]childResult, len(wsModes)), wsWarm: make([][]childResult, len(wsModes))}
	// Warm up, unrecorded: the first large allocations of a fresh machine
	// are slower (the hypervisor backs guest memory on first use).
	if _, err := e.child(childSpec{Mode: "anon", Size: e.size, ReadFile: e.raw}); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	cpu0, cpuErr := othersCPU()
	measureStart := time.Now()
	for round := 0; round < p.rounds; round++ {
		logf("round %d/%d: fault-all", round+1, p.rounds)
		if err := e.faultAllRound(r, round); err != nil {
			return fmt.Errorf("fault-all: %w", err)
		}
		for i, m := range wsModes {
			logf("round %d/%d: working set, %s", round+1, p.rounds, m.name)
			cold, warm, err := e.wsRound(m, round)
			if err != nil {
				return fmt.Errorf("working set, %s: %w", m.name, err)
			}
			r.wsCold[i] = append(r.wsCold[i], cold)
			r.wsWarm[i] = append(r.wsWarm[i], warm)
		}
	}
	r.measured = time.Since(measureStart)
	r.others = -1
	if cpu1, err := othersCPU(); err == nil && cpuErr == nil {
		r.others = max(0, cpu1-cpu0)
	}
	r.elapsed = time.Since(started)
	rep := newReport(p, e, r)
	rep.text(stdout)
	if p.out != "" {
		if err := perf.WriteSection(p.out, rep.markdown()); err != nil {
			return err
		}
		logf("wrote %q to %s", sectionTitle, p.out)
	}
	return nil
}

// prepare captures the corpus, imports it, chooses and stores the working
// set, and computes the expected checksums.
func prepare(p params, tmp string, logf func(string, ...any)) (*env, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	e := &env{tmp: tmp, raw: filepath.Join(tmp, "corpus.raw"), storeDir: filepath.Join(tmp, "store"), exe: exe,
		size: p.size, pages: p.size / pageSize, wsFile: filepath.Join(tmp, "ws.pages"), logf: logf, verbose: p.verbose}
	e.source, e.desc, err = corpus.WriteFile(context.Background(), e.raw, p.size, p.heap, int64(p.seed), logf)
	if err != nil {
		return nil, err
	}
	img, err := os.ReadFile(e.raw) // also warms the page cache for the baseline
	if err != nil {
		return nil, err
	}
	if int64(len(img)) != p.size {
		return nil, fmt.Errorf("corpus has %d bytes, want %d", len(img), p.size)
	}
	zero := make([]bool, e.pages)
	var zeroPage [pageSize]byte
	for pg := range zero {
		zero[pg] = bytes.Equal(img[pg*pageSize:(pg+1)*pageSize], zeroPage[:])
		if !zero[pg] {
			e.nonZero++
		}
	}
	if e.nonZero == 0 {
		return nil, errors.New("corpus has no non-zero page")
	}
	if e.source == "synthetic" {
		e.desc = fmt.Sprintf("synthetic image from bench/corpus.Generate (seed %d; python3 unavailable): non-zero pages %d/%d (%.1f%% zero), size %.1f MiB",
			p.seed, e.nonZero, e.pages, 100*float64(e.pages-e.nonZero)/float64(e.pages), float64(p.size)/(1<<20))
	}
	logf("corpus: %s", e.desc)

	e.ws, e.wsRuns = chooseWorkingSet(zero, p.wsPct, p.seed)
	for _, pg := range e.ws {
		if zero[pg] {
			e.wsZero++
		}
	}
	if err := writeTouchFile(e.wsFile, e.ws); err != nil {
		return nil, err
	}
	e.sumAll = hex.EncodeToString(sha256Sum(img))
	h := sha256.New()
	for _, pg := range e.ws {
		h.Write(img[int64(pg)*pageSize : int64(pg+1)*pageSize])
	}
	e.sumWS = hex.EncodeToString(h.Sum(nil))

	s, err := pagestore.Open(e.storeDir, pagestore.Create(), pagestore.NoSync())
	if err != nil {
		return nil, err
	}
	res, err := s.ImportMemory(context.Background(), snapName, bytes.NewReader(img), p.size, pagestore.MemoryOptions{})
	if err == nil {
		err = s.SetWorkingSet(snapName, e.ws)
	}
	if err == nil {
		var info *pagestore.ObjectInfo
		if info, err = s.Inspect(snapName); err == nil {
			e.chunks, e.stored = info.Chunks, info.StoredBytes
		}
	}
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	logf("imported in %s: %d chunks, %.1f MiB stored; working set %d pages (%d zero) in %d runs",
		res.Duration.Round(time.Millisecond), e.chunks, float64(e.stored)/(1<<20), len(e.ws), e.wsZero, e.wsRuns)

	// What a cold handoff spends resolving the snapshot.
	img = nil
	var opens []time.Duration
	for i := 0; i < 5; i++ {
		s, err := pagestore.Open(e.storeDir, pagestore.ReadOnly())
		if err != nil {
			return nil, err
		}
		runtime.GC()
		start := time.Now()
		_, err = s.OpenMemory(snapName)
		opens = append(opens, time.Since(start))
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	e.openMem = spreadOf(opens)
	return e, nil
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// chooseWorkingSet picks about pct % of the pages as runs of 1–16
// consecutive pages; nine runs in ten start at a random non-zero page, one
// in ten at a random zero page. Runs never overlap, pages within a run stay
// in ascending order, and the runs are shuffled. It returns the pages in
// that order and the number of runs.
func chooseWorkingSet(zero []bool, pct float64, seed uint64) ([]uint32, int) {
	pages := len(zero)
	target := int(math.Round(float64(pages) * pct / 100))
	target = max(1, min(target, pages))
	var nz, z []int
	for p, isZero := range zero {
		if isZero {
			z = append(z, p)
		} else {
			nz = append(nz, p)
		}
	}
	rng := rand.New(rand.NewPCG(seed, 0x776f726b696e67)) // "working"
	chosen := make([]bool, pages)
	var runs [][]uint32
	n := 0
	for attempts := 0; n < target && attempts < 100*target; attempts++ {
		from := nz
		if len(from) == 0 || (len(z) > 0 && rng.IntN(10) == 0) {
			from = z
		}
		start := from[rng.IntN(len(from))]
		length := 1 + rng.IntN(16)
		var run []uint32
		for p := start; p < pages && len(run) < length && n < target && !chosen[p]; p++ {
			chosen[p] = true
			run = append(run, uint32(p))
			n++
		}
		if len(run) > 0 {
			runs = append(runs, run)
		}
	}
	rng.Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
	out := make([]uint32, 0, n)
	for _, r := range runs {
		out = append(out, r...)
	}
	return out, len(runs)
}

// server is a pageserver.Server on a freshly opened store (chunk cache
// empty) listening on its own socket.
type server struct {
	store  *pagestore.Store
	sock   string
	cancel context.CancelFunc
	done   chan error
}

func (e *env) serve() (*server, error) {
	st, err := pagestore.Open(e.storeDir, pagestore.ReadOnly())
	if err != nil {
		return nil, err
	}
	e.nsocket++
	sock := filepath.Join(e.tmp, fmt.Sprintf("pages-%d.sock", e.nsocket))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		st.Close()
		return nil, err
	}
	srv := pageserver.New(st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{store: st, sock: sock, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, ln, "") }()
	return s, nil
}

func (s *server) stop() error {
	s.cancel()
	var err error
	select {
	case err = <-s.done:
	case <-time.After(30 * time.Second):
		err = errors.New("page server did not stop in 30s")
	}
	if cerr := s.store.Close(); err == nil {
		err = cerr
	}
	os.Remove(s.sock)
	return err
}

// child runs one client process and returns its result.
func (e *env) child(spec childSpec) (childResult, error) {
	return e.clientOf(nil, spec)
}

// clientOf runs one client process of server s (nil: none) and returns its
// result, with the chunks s decoded meanwhile.
func (e *env) clientOf(s *server, spec childSpec) (childResult, error) {
	var before pagestore.CacheStats
	if s != nil {
		before = s.store.CacheStats()
	}
	var res childResult
	b, err := json.Marshal(spec)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.exe)
	// Asynchronous preemption signals would interrupt the faulting thread
	// and make the kernel report its fault twice; a VMM has none.
	cmd.Env = append(os.Environ(), childEnv+"="+string(b), "GODEBUG=asyncpreemptoff=1")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	runtime.GC() // start every session from a quiet server
	if err := cmd.Start(); err != nil {
		return res, err
	}
	// Wait for the client by reading its output, which parks this
	// goroutine in the network poller, and only then reap it: a goroutine
	// blocked in wait(2) for the whole session would hold one of the
	// server process's Ps (GOMAXPROCS is the CPU count, 2 here) the way
	// a second session's fault loop would.
	out, rerr := io.ReadAll(stdout)
	if err := cmd.Wait(); err != nil || rerr != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("client hung for %s: %s", childTimeout, strings.TrimSpace(errb.String()))
		}
		return res, fmt.Errorf("client: %v: %s", errors.Join(err, rerr), strings.TrimSpace(errb.String()))
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("client output %q: %v", out, err)
	}
	if s != nil {
		// Bye was answered; a prefetcher still winding down skips the
		// pages the client installed, so it decodes nothing more.
		after := s.store.CacheStats()
		res.Decoded, res.DecodedBytes = after.Entries-before.Entries, after.Bytes-before.Bytes
	}
	if e.verbose {
		m := res.Metrics
		e.logf("client %s: handoff %v, wait %v (%d polls, session age %v), touch %v, total %v; faults %d, ws %d, ws faults %d, prefetched %d, existed %d, around %d, prefetch done %v, decompressed %d, cache grew %d chunks / %d bytes",
			spec.Mode, time.Duration(res.ConnectNs), time.Duration(res.WaitNs), res.Polls, time.Duration(res.SeenSessionNs), time.Duration(res.TouchNs), time.Duration(res.TotalNs),
			m.Faults, m.WorkingSet, m.WSFaults, m.Prefetched, m.Existed, m.AroundPages, m.PrefetchDone, m.Decompressed, res.Decoded, res.DecodedBytes)
	}
	return res, nil
}

// uffdSpec is the spec of a client of server s.
func (e *env) uffdSpec(s *server) childSpec {
	return childSpec{Mode: "uffd", Socket: s.sock, Snapshot: snapName, Size: e.size}
}

// faultAllRound measures one round of the fault-all comparison.
func (e *env) faultAllRound(r *results, round int) error {
	// Baselines, in a fresh process like the clients; the raw image is in
	// the page cache (prepare read it).
	anon, err := e.child(childSpec{Mode: "anon", Size: e.size, SampleOneIn: sampleOneIn, SampleSeed: uint64(round), ReadFile: e.raw})
	if err != nil {
		return fmt.Errorf("baselines: %w", err)
	}
	r.anon = append(r.anon, anon)
	r.readFile = append(r.readFile, time.Duration(anon.ReadFileNs))

	s, err := e.serve()
	if err != nil {
		return err
	}
	var res [2]childResult
	for i := range res {
		spec := e.uffdSpec(s)
		spec.SampleOneIn, spec.SampleSeed = sampleOneIn, uint64(round*2+i)
		if res[i], err = e.clientOf(s, spec); err != nil {
			break
		}
		if res[i].Sum != e.sumAll {
			err = errors.New("the client read different bytes than the image")
			break
		}
		if m := res[i].Metrics; m.Faults != uint64(e.pages) {
			err = fmt.Errorf("%d faults served for %d pages touched", m.Faults, e.pages)
			break
		}
	}
	if serr := s.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	r.lazyCold = append(r.lazyCold, res[0])
	r.lazyWarm = append(r.lazyWarm, res[1])
	return nil
}

// wsRound measures mode once with the chunk cache cold (a fresh store and
// server) and once warm (a second session on the same server).
func (e *env) wsRound(m wsMode, round int) (cold, warm childResult, err error) {
	s, err := e.serve()
	if err != nil {
		return cold, warm, err
	}
	var res [2]childResult
	for i := range res {
		spec := e.uffdSpec(s)
		spec.TouchFile, spec.Prefetch, spec.FaultAround, spec.WaitPrefetch = e.wsFile, m.prefetch, m.around, m.wait
		if res[i], err = e.clientOf(s, spec); err != nil {
			break
		}
		if res[i].Sum != e.sumWS {
			err = errors.New("the client read different bytes than the image")
			break
		}
		if m.prefetch && res[i].Metrics.WorkingSet != len(e.ws) {
			err = fmt.Errorf("the server prefetches %d pages, want the working set's %d", res[i].Metrics.WorkingSet, len(e.ws))
			break
		}
	}
	if serr := s.stop(); err == nil {
		err = serr
	}
	return res[0], res[1], err
}

// ---- statistics ----

// spread is the median, minimum and maximum of per-round values.
type spread struct{ med, lo, hi time.Duration }

func spreadOf(ds []time.Duration) spread {
	if len(ds) == 0 {
		return spread{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med: med, lo: s[0], hi: s[len(s)-1]}
}

func field(rs []childResult, f func(childResult) int64) spread {
	ds := make([]time.Duration, len(rs))
	for i, r := range rs {
		ds[i] = time.Duration(f(r))
	}
	return spreadOf(ds)
}

func total(r childResult) int64   { return r.TotalNs }
func touchNs(r childResult) int64 { return r.TouchNs }

// lat summarizes pooled latency samples.
type lat struct {
	n              int
	p50, p99, mean time.Duration
}

func summarize(ns []int64) lat {
	if len(ns) == 0 {
		return lat{}
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	var sum int64
	for _, v := range s {
		sum += v
	}
	at := func(p float64) time.Duration {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return time.Duration(s[max(0, min(i, len(s)-1))])
	}
	return lat{n: len(s), p50: at(50), p99: at(99), mean: time.Duration(sum / int64(len(s)))}
}

func pooledSamples(rs []childResult) lat {
	var all []int64
	for _, r := range rs {
		all = append(all, r.SamplesNs...)
	}
	return summarize(all)
}

// hist merges the server's fault histograms of rs.
func hist(rs []childResult) pageserver.Histogram {
	var h pageserver.Histogram
	for _, r := range rs {
		for i, c := range r.Metrics.Latency.Buckets {
			h.Buckets[i] += c
		}
	}
	return h
}

// bucketOf returns the bounds [lo, hi) of the histogram bucket holding the
// q-quantile (1 µs buckets below 64 µs, powers of two above).
func bucketOf(h pageserver.Histogram, q float64) (lo, hi time.Duration) {
	return h.QuantileBucket(q)
}

// below returns the share of observations under d (d a bucket boundary).
func below(h pageserver.Histogram, d time.Duration) float64 { return h.Below(d) }

func sumMetrics(rs []childResult, f func(pageserver.Metrics) uint64) uint64 {
	var n uint64
	for _, r := range rs {
		n += f(r.Metrics)
	}
	return n
}

// othersCPU returns the CPU time (user, system, interrupts, steal) all
// processes have used since boot, less this process's and its reaped
// children's: compared before and after, it shows how much other work ran
// on the machine meanwhile.
func othersCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += v
	}
	const userHZ = 100 // the unit of /proc/stat on Linux
	all := time.Duration(ticks) * time.Second / userHZ
	var self, children unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &self); err != nil {
		return 0, err
	}
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &children); err != nil {
		return 0, err
	}
	tv := func(t unix.Timeval) time.Duration { return time.Duration(t.Nano()) }
	own := tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
	return all - own, nil
}
