// Command storebench measures the snapshot store (package pagestore) on a
// guest-like memory image and compares it with reading the raw image file.
//
//	go run ./bench/storebench [-size 128M] [-reads 20000] [-out docs/PERFORMANCE.md]
//
// It captures the memory of a live python3 process (bench/corpus; a
// synthetic image when python3 is missing) into a temporary file and
// measures, in the same run:
//
//   - the baseline: sequential read of the raw file (warm, and cold after
//     dropping the OS page cache when /proc/sys/vm/drop_caches is writable)
//     and random 4 KiB pread latency over the non-zero pages;
//   - for granularity 4, 16 and 64 KiB × codec zstd and s2, each in a fresh
//     store: import throughput (with fsync), stored bytes and ratios, export
//     throughput, and random 4 KiB Memory.Page latency with the chunk cache
//     empty ("cold") and full ("cached"); plus zstd 4 KiB with
//     VerifyHash(true) to show the cost of the SHA-256 check on reads.
//
// Every read pass uses the same sequence: the distinct non-zero pages in one
// random order (the first -reads of them). Results go to stdout as a table;
// with -out, a "## Snapshot store (issue 2)" section with the command,
// machine, tables and conclusions replaces (or is appended to) that file.
// Temporary files are removed on exit.
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
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/pagestore"
)

const sectionTitle = "## Snapshot store (issue 2)"

const usage = "storebench [-size 128M] [-reads 20000] [-out docs/PERFORMANCE.md] [-heap 32M] [-seed 1] [-drop=true] [-dir TMP]"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "storebench: %v\n", err)
		os.Exit(1)
	}
}

type params struct {
	size   int64
	heap   int64
	reads  int
	rounds int
	seed   uint64
	drop   bool
	out    string
	dir    string
	args   []string
}

// config is one store configuration under test.
type config struct {
	gran   int
	codec  string
	verify bool
}

func (c config) String() string {
	s := fmt.Sprintf("%s %dK", c.codec, c.gran>>10)
	if c.verify {
		s += " +hash"
	}
	return s
}

// lat summarizes a set of latencies.
type lat struct {
	n        int
	p50, p99 time.Duration
	mean     time.Duration
}

func summarize(ds []time.Duration) lat {
	if len(ds) == 0 {
		return lat{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return lat{n: len(s), p50: report.Percentile(s, 50), p99: report.Percentile(s, 99), mean: sum / time.Duration(len(s))}
}

// baseline is what reading the raw image file costs.
type baseline struct {
	seqWarmMBs float64
	seqColdMBs float64 // 0 when the cold pass was skipped
	preadWarm  lat
	preadCold  lat     // zero n when skipped
	coldDisk   float64 // fraction of cold preads whose page was not cached; <0 if unknown
}

// pass is one or more read passes over the page sequence, samples pooled.
type pass struct {
	all       lat
	miss      lat // reads that decoded a chunk
	misses    int
	hits      int
	roundMiss []time.Duration // miss p50 of each round
	allDs     []time.Duration
	missDs    []time.Duration
}

// add pools the samples of one more round into ps.
func (ps *pass) add(all, miss []time.Duration) {
	ps.allDs = append(ps.allDs, all...)
	ps.missDs = append(ps.missDs, miss...)
	ps.misses += len(miss)
	ps.hits += len(all) - len(miss)
	ps.roundMiss = append(ps.roundMiss, summarize(miss).p50)
	ps.all, ps.miss = summarize(ps.allDs), summarize(ps.missDs)
}

// missRate is the fraction of reads that decoded a chunk.
func (ps *pass) missRate() float64 { return float64(ps.misses) / float64(ps.misses+ps.hits) }

// spread returns the lowest and highest per-round miss p50.
func (ps *pass) spread() (lo, hi time.Duration) {
	return slices.Min(ps.roundMiss), slices.Max(ps.roundMiss)
}

// result is the measurement of one configuration.
type result struct {
	cfg        config
	importDur  time.Duration
	importMBs  float64
	stored     int64 // bytes added to packs, record headers included
	newRaw     int64
	chunks     int
	dedup      float64
	dataRatio  float64 // non-zero data bytes / stored
	logicRatio float64 // logical size / stored
	exportMBs  float64
	cold       pass  // chunk cache empty, OS page cache warm
	osCold     *pass // chunk cache empty, OS page cache dropped
	cached     pass  // every chunk in the chunk cache
	rounds     int
}

// env is the prepared corpus.
type env struct {
	tmp     string
	raw     string // path of the raw image
	size    int64
	nonZero []int64 // non-zero page numbers
	seq     []int64 // read sequence (distinct non-zero pages, random order)
	desc    string  // corpus description line
	source  string  // "python" or "synthetic"
	dropErr error   // why drop_caches cannot be used (nil when it can)
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("storebench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	size := report.Size(128 << 20)
	heap := report.Size(corpus.DefaultHeapSize)
	fs.Var(&size, "size", "guest memory image size (e.g. 128M); multiple of 4096")
	fs.Var(&heap, "heap", "approximate python live heap to build before capture")
	reads := fs.Int("reads", 20000, "random page reads per pass (at most the number of non-zero pages)")
	rounds := fs.Int("rounds", 3, "read passes per configuration and cache state, each on a freshly opened store; samples are pooled")
	seed := fs.Uint64("seed", 1, "seed of the random page sequence (and of the synthetic corpus)")
	drop := fs.Bool("drop", true, "also measure with the OS page cache dropped (needs a writable /proc/sys/vm/drop_caches)")
	out := fs.String("out", "", "markdown file to write the \""+sectionTitle+"\" section into")
	dir := fs.String("dir", "", "directory for temporary files (default: the system temp dir)")
	if help, err := report.ParseFlags(fs, args, usage, stderr); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q (usage: %s)", fs.Args(), usage)
	}
	if size <= 0 || size%corpus.PageSize != 0 {
		return fmt.Errorf("-size %d: must be a positive multiple of %d", size, corpus.PageSize)
	}
	if *reads <= 0 {
		return fmt.Errorf("-reads %d: must be positive", *reads)
	}
	if *rounds <= 0 {
		return fmt.Errorf("-rounds %d: must be positive", *rounds)
	}
	p := params{size: int64(size), heap: int64(heap), reads: *reads, rounds: *rounds, seed: *seed, drop: *drop,
		out: *out, dir: *dir, args: args}
	return bench(p, stdout, stderr)
}

func bench(p params, stdout, stderr io.Writer) error {
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "storebench: "+format+"\n", a...) }
	started := time.Now()
	tmp, err := os.MkdirTemp(p.dir, "storebench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	e, err := prepare(p, tmp, logf)
	if err != nil {
		return err
	}
	if p.drop {
		e.dropErr = dropCaches()
		if e.dropErr != nil {
			logf("OS-cold passes skipped: %v", e.dropErr)
		}
	} else {
		e.dropErr = errors.New("disabled by -drop=false")
	}

	logf("baseline: raw file")
	base, err := measureBaseline(e, p.rounds)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}

	var cfgs []config
	for _, g := range []int{4 << 10, 16 << 10, 64 << 10} {
		for _, c := range []string{"zstd", "s2"} {
			cfgs = append(cfgs, config{gran: g, codec: c})
		}
	}
	cfgs = append(cfgs, config{gran: 4 << 10, codec: "zstd", verify: true})

	var results []*result
	for i, c := range cfgs {
		logf("config %d/%d: %s", i+1, len(cfgs), c)
		r, err := measureConfig(e, c, p.rounds)
		if err != nil {
			return fmt.Errorf("%s: %w", c, err)
		}
		results = append(results, r)
	}
	elapsed := time.Since(started)

	printHuman(stdout, p, e, base, results, elapsed)
	if p.out != "" {
		sec := markdownSection(p, e, base, results, elapsed)
		if err := report.WriteSection(p.out, sec); err != nil {
			return err
		}
		logf("wrote %q to %s", sectionTitle, p.out)
	}
	return nil
}

// prepare writes the corpus into tmp and computes the page sequence.
func prepare(p params, tmp string, logf func(string, ...any)) (*env, error) {
	e := &env{tmp: tmp, raw: filepath.Join(tmp, "corpus.raw"), size: p.size}
	var err error
	e.source, e.desc, err = corpus.WriteFile(context.Background(), e.raw, p.size, p.heap, int64(p.seed), logf)
	if err != nil {
		return nil, err
	}

	// Find the non-zero pages.
	f, err := os.Open(e.raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var zero [corpus.PageSize]byte
	for off := int64(0); off < p.size; off += int64(len(buf)) {
		n := int(min(int64(len(buf)), p.size-off))
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return nil, fmt.Errorf("read corpus: %w", err)
		}
		for i := 0; i < n; i += corpus.PageSize {
			if !bytes.Equal(buf[i:i+corpus.PageSize], zero[:]) {
				e.nonZero = append(e.nonZero, (off+int64(i))/corpus.PageSize)
			}
		}
	}
	if len(e.nonZero) == 0 {
		return nil, errors.New("corpus has no non-zero page")
	}
	if e.source == "synthetic" {
		pages := p.size / corpus.PageSize
		e.desc = fmt.Sprintf("synthetic image from bench/corpus.Generate (seed %d; python3 unavailable): non-zero pages %d/%d (%.1f%% zero), size %.1f MiB",
			p.seed, len(e.nonZero), pages, 100*float64(pages-int64(len(e.nonZero)))/float64(pages), float64(p.size)/(1<<20))
	}
	rng := rand.New(rand.NewPCG(p.seed, 0x73746f7265)) // "store"
	e.seq = slices.Clone(e.nonZero)
	rng.Shuffle(len(e.seq), func(i, j int) { e.seq[i], e.seq[j] = e.seq[j], e.seq[i] })
	e.seq = e.seq[:min(p.reads, len(e.seq))]
	logf("corpus: %s", e.desc)
	return e, nil
}

func (e *env) nonZeroBytes() int64 { return int64(len(e.nonZero)) * corpus.PageSize }

func (e *env) canDrop() bool { return e.dropErr == nil }

func mbs(bytes int64, d time.Duration) float64 {
	return float64(bytes) / 1e6 / d.Seconds()
}

// seqRead reads the whole file sequentially in 1 MiB reads.
func seqRead(path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for {
		_, err := f.Read(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// preadPass reads the page sequence from the raw file with pread and
// returns the latency of each read and how many of the pages were not in
// the OS page cache just before their read (-1 if that cannot be told).
func preadPass(path string, seq []int64) ([]time.Duration, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	res := newResidency(f)
	uncached := 0
	if res == nil {
		uncached = -1
	} else {
		defer res.close()
	}
	buf := make([]byte, corpus.PageSize)
	ds := make([]time.Duration, len(seq))
	runtime.GC()
	for i, pg := range seq {
		if res != nil && uncached >= 0 {
			in, err := res.resident(pg * corpus.PageSize)
			switch {
			case err != nil:
				uncached = -1
			case !in:
				uncached++
			}
		}
		t := time.Now()
		_, err := f.ReadAt(buf, pg*corpus.PageSize)
		ds[i] = time.Since(t)
		if err != nil {
			return nil, 0, err
		}
	}
	return ds, uncached, nil
}

// measureBaseline reads the raw file: rounds pread passes with the page
// cache dropped before each (when possible) and warm, pooled.
func measureBaseline(e *env, rounds int) (baseline, error) {
	var b baseline
	if e.canDrop() {
		var cold []time.Duration
		disk := 0
		for i := 0; i < rounds; i++ {
			if err := dropCaches(); err != nil {
				return b, err
			}
			ds, n, err := preadPass(e.raw, e.seq)
			if err != nil {
				return b, err
			}
			cold = append(cold, ds...)
			if n < 0 || disk < 0 {
				disk = -1
			} else {
				disk += n
			}
		}
		b.preadCold = summarize(cold)
		b.coldDisk = float64(disk) / float64(len(cold))
		if disk < 0 {
			b.coldDisk = -1
		}
		if err := dropCaches(); err != nil {
			return b, err
		}
		d, err := seqRead(e.raw)
		if err != nil {
			return b, err
		}
		b.seqColdMBs = mbs(e.size, d)
	}
	// Warm: the first read fills the page cache; keep the best of three.
	var best time.Duration
	for i := 0; i < 4; i++ {
		d, err := seqRead(e.raw)
		if err != nil {
			return b, err
		}
		if i > 0 && (best == 0 || d < best) {
			best = d
		}
	}
	b.seqWarmMBs = mbs(e.size, best)
	var warm []time.Duration
	for i := 0; i < rounds; i++ {
		ds, _, err := preadPass(e.raw, e.seq)
		if err != nil {
			return b, err
		}
		warm = append(warm, ds...)
	}
	b.preadWarm = summarize(warm)
	return b, nil
}

func (c config) open(dir string, cache int64, extra ...pagestore.Option) (*pagestore.Store, error) {
	opts := append([]pagestore.Option{pagestore.CacheSize(cache), pagestore.VerifyHash(c.verify)}, extra...)
	return pagestore.Open(dir, opts...)
}

const snapName = "bench"

func measureConfig(e *env, c config, rounds int) (*result, error) {
	r := &result{cfg: c, rounds: rounds}
	dir, err := os.MkdirTemp(e.tmp, "store-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// The chunk cache must hold every chunk for the "cached" pass.
	cache := max(int64(256<<20), 2*e.nonZeroBytes())

	// Import (the corpus file is in the OS page cache from the baseline).
	s, err := c.open(dir, cache, pagestore.Create())
	if err != nil {
		return nil, err
	}
	f, err := os.Open(e.raw)
	if err != nil {
		s.Close()
		return nil, err
	}
	runtime.GC()
	start := time.Now()
	res, err := s.ImportMemory(context.Background(), snapName, f, e.size, pagestore.MemoryOptions{
		ImportOptions: pagestore.ImportOptions{ChunkSize: c.gran, Codec: c.codec}})
	r.importDur = time.Since(start)
	f.Close()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("import: %w", err)
	}
	r.importMBs = mbs(e.size, r.importDur)
	r.stored = res.Stats.NewBytes
	r.newRaw = res.Stats.NewRaw
	info, err := s.Inspect(snapName)
	if err != nil {
		s.Close()
		return nil, err
	}
	if info.StoredBytes != r.stored {
		s.Close()
		return nil, fmt.Errorf("inspect says %d stored bytes, import added %d", info.StoredBytes, r.stored)
	}
	if info.ReferencedBytes != e.nonZeroBytes() {
		s.Close()
		return nil, fmt.Errorf("snapshot references %d bytes, corpus has %d non-zero bytes", info.ReferencedBytes, e.nonZeroBytes())
	}
	r.chunks = info.Chunks
	r.dedup = info.DedupRatio
	r.dataRatio = float64(e.nonZeroBytes()) / float64(r.stored)
	r.logicRatio = float64(e.size) / float64(r.stored)
	if err := s.Close(); err != nil {
		return nil, err
	}

	// Export to a temporary file (fresh store, no fsync), then check it.
	exp := filepath.Join(e.tmp, "export.raw")
	if r.exportMBs, err = exportOnce(dir, c, cache, exp); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if err := sameFile(e.raw, exp, e.size); err != nil {
		os.Remove(exp)
		return nil, fmt.Errorf("export: %w", err)
	}
	if err := os.Remove(exp); err != nil {
		return nil, err
	}

	// Cold (chunk cache empty, packs in the OS page cache) and cached reads,
	// then cold with the OS page cache dropped too; each round on a freshly
	// opened store.
	raw, err := os.Open(e.raw)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	for i := 0; i < rounds; i++ {
		if err := readRound(dir, c, cache, e, raw, &r.cold, &r.cached); err != nil {
			return nil, err
		}
	}
	if r.cached.misses != 0 {
		return nil, fmt.Errorf("cached passes missed the chunk cache %d times", r.cached.misses)
	}
	if e.canDrop() {
		r.osCold = &pass{}
		for i := 0; i < rounds; i++ {
			if err := dropCaches(); err != nil {
				return nil, err
			}
			if err := readRound(dir, c, cache, e, raw, r.osCold, nil); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// readRound opens the store afresh, reads the sequence once into cold and,
// if cached is not nil, once more into cached.
func readRound(dir string, c config, cache int64, e *env, raw *os.File, cold, cached *pass) error {
	s, err := c.open(dir, cache, pagestore.ReadOnly())
	if err != nil {
		return err
	}
	m, err := s.OpenMemory(snapName)
	if err == nil {
		err = pagePass(s, m, e.seq, raw, cold)
	}
	if err == nil && cached != nil {
		err = pagePass(s, m, e.seq, raw, cached)
	}
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

func exportOnce(dir string, c config, cache int64, path string) (float64, error) {
	s, err := c.open(dir, cache, pagestore.ReadOnly())
	if err != nil {
		return 0, err
	}
	defer s.Close()
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	runtime.GC()
	start := time.Now()
	n, err := s.ExportMemory(context.Background(), snapName, f, nil)
	d := time.Since(start)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return mbs(n, d), nil
}

// sameFile checks that two files hold the same size bytes.
func sameFile(a, b string, size int64) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	st, err := fb.Stat()
	if err != nil {
		return err
	}
	if st.Size() != size {
		return fmt.Errorf("exported file has %d bytes, want %d", st.Size(), size)
	}
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(ba)) {
		n := int(min(int64(len(ba)), size-off))
		if _, err := fa.ReadAt(ba[:n], off); err != nil {
			return err
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil {
			return err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			return fmt.Errorf("exported bytes differ from the corpus in [%d, %d)", off, off+int64(n))
		}
	}
	return nil
}

// pagePass reads every page of seq with Memory.Page, timing each call, adds
// the samples to ps, and checks each page against the raw file (outside the
// timed region).
func pagePass(s *pagestore.Store, m *pagestore.Memory, seq []int64, raw *os.File, ps *pass) error {
	all := make([]time.Duration, len(seq))
	miss := make([]time.Duration, 0, len(seq))
	want := make([]byte, corpus.PageSize)
	runtime.GC()
	before := s.CacheStats().Misses
	for i, pg := range seq {
		t := time.Now()
		b, err := m.Page(pg)
		d := time.Since(t)
		if err != nil {
			return err
		}
		all[i] = d
		after := s.CacheStats().Misses
		if after != before {
			miss = append(miss, d)
		}
		before = after
		if _, err := raw.ReadAt(want, pg*corpus.PageSize); err != nil {
			return err
		}
		if !bytes.Equal(b, want) {
			return fmt.Errorf("page %d: store returned different bytes than the corpus", pg)
		}
	}
	ps.add(all, miss)
	return nil
}

// ---- reporting ----

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

type table = report.Table

func baselineTable(e *env, b baseline) table {
	t := table{Head: []string{"raw file", "seq read MB/s", "pread p50 / p99 / mean µs", "pread page not cached"}}
	t.Rows = append(t.Rows, []string{"page cache warm", fmt.Sprintf("%.0f", b.seqWarmMBs),
		report.US(b.preadWarm.p50) + " / " + report.US(b.preadWarm.p99) + " / " + report.US(b.preadWarm.mean), "-"})
	if e.canDrop() {
		disk := "unknown"
		if b.coldDisk >= 0 {
			disk = fmt.Sprintf("%.0f%%", 100*b.coldDisk)
		}
		t.Rows = append(t.Rows, []string{"page cache dropped", fmt.Sprintf("%.0f", b.seqColdMBs),
			report.US(b.preadCold.p50) + " / " + report.US(b.preadCold.p99) + " / " + report.US(b.preadCold.mean), disk})
	} else {
		t.Rows = append(t.Rows, []string{"page cache dropped", "skipped", "skipped", "skipped"})
	}
	return t
}

func storageTable(e *env, b baseline, rs []*result) table {
	t := table{Head: []string{"config", "import MB/s (×raw)", "export MB/s (×raw)", "chunks", "stored MiB", "data/stored", "logical/stored", "dedup"}}
	for _, r := range rs {
		t.Rows = append(t.Rows, []string{
			r.cfg.String(),
			fmt.Sprintf("%.0f (%s)", r.importMBs, report.Times(r.importMBs/b.seqWarmMBs)),
			fmt.Sprintf("%.0f (%s)", r.exportMBs, report.Times(r.exportMBs/b.seqWarmMBs)),
			strconv.Itoa(r.chunks),
			report.MiB(r.stored),
			fmt.Sprintf("%.2f", r.dataRatio),
			fmt.Sprintf("%.2f", r.logicRatio),
			fmt.Sprintf("%.3f", r.dedup),
		})
	}
	return t
}

func latencyTable(e *env, b baseline, rs []*result) table {
	t := table{Head: []string{"config", "cold p50 / p99", "cold mean", "misses", "cold miss p50 / p99 (p50 ×pread)", "cached p50 / p99 (p50 ×pread)"}}
	if e.canDrop() {
		t.Head = append(t.Head, "OS-cold p50 / p99 / mean", "OS-cold miss p50 / p99 / mean (mean ×cold pread mean)")
	}
	for _, r := range rs {
		row := []string{
			r.cfg.String(),
			report.US(r.cold.all.p50) + " / " + report.US(r.cold.all.p99),
			report.US(r.cold.all.mean),
			fmt.Sprintf("%.0f%%", 100*r.cold.missRate()),
			fmt.Sprintf("%s / %s (%s)", report.US(r.cold.miss.p50), report.US(r.cold.miss.p99), report.Times(ratio(r.cold.miss.p50, b.preadWarm.p50))),
			fmt.Sprintf("%s / %s (%s)", report.US(r.cached.all.p50), report.US(r.cached.all.p99), report.Times(ratio(r.cached.all.p50, b.preadWarm.p50))),
		}
		if e.canDrop() {
			row = append(row,
				report.US(r.osCold.all.p50)+" / "+report.US(r.osCold.all.p99)+" / "+report.US(r.osCold.all.mean),
				fmt.Sprintf("%s / %s / %s (%s)", report.US(r.osCold.miss.p50), report.US(r.osCold.miss.p99), report.US(r.osCold.miss.mean), report.Times(ratio(r.osCold.miss.mean, b.preadCold.mean))))
		}
		t.Rows = append(t.Rows, row)
	}
	return t
}

func printHuman(w io.Writer, p params, e *env, b baseline, rs []*result, elapsed time.Duration) {
	fmt.Fprintf(w, "corpus: %s\n", e.desc)
	fmt.Fprintf(w, "reads: %d distinct non-zero pages in random order (seed %d), same sequence for every pass; %d rounds per cache state, pooled\n", len(e.seq), p.seed, p.rounds)
	if !e.canDrop() {
		fmt.Fprintf(w, "OS-cold measurements skipped: %v\n", e.dropErr)
	}
	fmt.Fprintln(w)
	baselineTable(e, b).Text(w)
	fmt.Fprintln(w)
	storageTable(e, b, rs).Text(w)
	fmt.Fprintln(w)
	latencyTable(e, b, rs).Text(w)
	fmt.Fprintln(w)
	for _, c := range conclusions(e, b, rs) {
		fmt.Fprintf(w, "- %s\n", c)
	}
	fmt.Fprintf(w, "\nrun took %s\n", elapsed.Round(100*time.Millisecond))
}

// find returns the result for config c, or nil.
func find(rs []*result, gran int, codec string, verify bool) *result {
	for _, r := range rs {
		if r.cfg.gran == gran && r.cfg.codec == codec && r.cfg.verify == verify {
			return r
		}
	}
	return nil
}

func plain(rs []*result) []*result {
	var out []*result
	for _, r := range rs {
		if !r.cfg.verify {
			out = append(out, r)
		}
	}
	return out
}

func faster(a, b time.Duration) string {
	if a <= b {
		return "faster"
	}
	return "slower"
}

// conclusions derives plain-language findings from the measurements.
func conclusions(e *env, b baseline, rs []*result) []string {
	ps := plain(rs)
	if len(ps) == 0 {
		return nil
	}
	var out []string

	// 1. Ratio.
	best, worst := ps[0], ps[0]
	for _, r := range ps {
		if r.dataRatio > best.dataRatio {
			best = r
		}
		if r.dataRatio < worst.dataRatio {
			worst = r
		}
	}
	z4, z64 := find(ps, 4<<10, "zstd", false), find(ps, 64<<10, "zstd", false)
	var s2extra []string
	for _, g := range []int{4 << 10, 16 << 10, 64 << 10} {
		z, s := find(ps, g, "zstd", false), find(ps, g, "s2", false)
		if z != nil && s != nil {
			s2extra = append(s2extra, fmt.Sprintf("%+.0f%%", 100*(float64(s.stored)/float64(z.stored)-1)))
		}
	}
	line := fmt.Sprintf("Size: %s stores the %s MiB of non-zero pages best, in %s MiB (%.2f× the data, %.1f× the %s MiB logical image); %s is the worst at %.2f×.",
		best.cfg, report.MiB(e.nonZeroBytes()), report.MiB(best.stored), best.dataRatio, best.logicRatio, report.MiB(e.size), worst.cfg, worst.dataRatio)
	if z4 != nil && z64 != nil {
		line += fmt.Sprintf(" Going from 4 KiB to 64 KiB chunks takes zstd from %.2f× to %.2f×", z4.dataRatio, z64.dataRatio)
		if len(s2extra) == 3 {
			line += fmt.Sprintf("; s2 stores %s / %s / %s bytes relative to zstd at 4 / 16 / 64 KiB.", s2extra[0], s2extra[1], s2extra[2])
		} else {
			line += "."
		}
	}
	out = append(out, line)

	// 2. Fault path.
	fast := ps[0]
	for _, r := range ps {
		if r.cold.miss.p50 < fast.cold.miss.p50 {
			fast = r
		}
	}
	var perGran []string
	sLo, sHi := math.Inf(1), math.Inf(-1)
	for _, g := range []int{4 << 10, 16 << 10, 64 << 10} {
		z, s := find(ps, g, "zstd", false), find(ps, g, "s2", false)
		if z != nil && s != nil {
			perGran = append(perGran, fmt.Sprintf("%s/%s µs at %d KiB", report.US(z.cold.miss.p50), report.US(s.cold.miss.p50), g>>10))
			q := ratio(s.cold.miss.p50, z.cold.miss.p50)
			sLo, sHi = min(sLo, q), max(sHi, q)
		}
	}
	line = fmt.Sprintf("Fault path: a read that has to decode its chunk (cold miss, pack in the OS page cache) costs p50 %s (zstd/s2), against %s µs for a pread of the raw file; s2 takes %.0f–%.0f%% of zstd's time, and the fastest, %s, is %s the raw pread.",
		strings.Join(perGran, ", "), report.US(b.preadWarm.p50), 100*sLo, 100*sHi, fast.cfg, report.Times(ratio(fast.cold.miss.p50, b.preadWarm.p50)))
	if z4 != nil && z64 != nil {
		line += fmt.Sprintf(" Bigger chunks cost more per miss but serve neighbours: at 64 KiB only %.0f%% of cold reads missed and the mean cold read took %s µs (zstd 4 KiB: %.0f%%, %s µs).",
			100*z64.cold.missRate(), report.US(z64.cold.all.mean), 100*z4.cold.missRate(), report.US(z4.cold.all.mean))
	}
	lo, hi := ps[0].cached.all.p50, ps[0].cached.all.p50
	for _, r := range ps {
		lo, hi = min(lo, r.cached.all.p50), max(hi, r.cached.all.p50)
	}
	line += fmt.Sprintf(" Cached pages cost p50 %s–%s µs in every configuration (%s–%s the raw pread).", report.US(lo), report.US(hi), report.Times(ratio(lo, b.preadWarm.p50)), report.Times(ratio(hi, b.preadWarm.p50)))
	if e.canDrop() && z4 != nil && z64 != nil && z4.osCold != nil && z64.osCold != nil {
		line += fmt.Sprintf(" With the OS page cache dropped a miss costs on average %s µs (zstd 4 KiB) to %s µs (zstd 64 KiB) against %s µs for a cold raw pread",
			report.US(z4.osCold.miss.mean), report.US(z64.osCold.miss.mean), report.US(b.preadCold.mean))
		if b.coldDisk >= 0 {
			line += fmt.Sprintf(" (%.0f%% of whose pages were not cached just before the read", 100*b.coldDisk)
			if b.coldDisk < 0.9 {
				line += "; the rest came in with readahead for earlier reads, so cold latencies are bimodal and means compare better than p50s"
			}
			line += ")"
		}
		line += "."
	}
	out = append(out, line)

	// 3. Trade-off: the fastest miss among configs within 10% of the best ratio.
	var pick *result
	for _, r := range ps {
		if r.dataRatio >= 0.9*best.dataRatio && (pick == nil || r.cold.miss.p50 < pick.cold.miss.p50) {
			pick = r
		}
	}
	def := find(ps, pagestore.DefaultGranularity, "zstd", false)
	line = fmt.Sprintf("Trade-off: among configurations within 10%% of the best ratio, %s has the lowest cold-miss p50 (%s µs at %.2f×)", pick.cfg, report.US(pick.cold.miss.p50), pick.dataRatio)
	if def != nil && def != pick {
		line += fmt.Sprintf("; the current default (zstd %d KiB) gives %s µs at %.2f×", pagestore.DefaultGranularity>>10, report.US(def.cold.miss.p50), def.dataRatio)
		if def.dataRatio < 0.9*best.dataRatio {
			line += ", outside that band"
		}
		line += "."
	} else if def != nil {
		line += fmt.Sprintf(", which is the current default (zstd %d KiB).", pagestore.DefaultGranularity>>10)
	} else {
		line += "."
	}
	other := "s2"
	if pick.cfg.codec == "s2" {
		other = "zstd"
	}
	if o := find(ps, pick.cfg.gran, other, false); o != nil {
		line += fmt.Sprintf(" %s at the same granularity gives %s µs (%+.0f%%) at %.2f× (%+.0f%% stored bytes).",
			o.cfg, report.US(o.cold.miss.p50), 100*(ratio(o.cold.miss.p50, pick.cold.miss.p50)-1), o.dataRatio,
			100*(float64(o.stored)/float64(pick.stored)-1))
	}
	if pick != fast {
		line += fmt.Sprintf(" %s has the lowest miss latency overall but only %.2f×.", fast.cfg, fast.dataRatio)
	}
	out = append(out, line)

	// 4. VerifyHash.
	if v, z := find(rs, 4<<10, "zstd", true), z4; v != nil && z != nil {
		vlo, vhi := v.cold.spread()
		zlo, zhi := z.cold.spread()
		line = fmt.Sprintf("VerifyHash(true) (SHA-256 of each decoded chunk) moves the zstd 4 KiB cold-miss p50 from %s to %s µs (%+.2f µs, %+.0f%%; per-round p50 %s–%s vs %s–%s µs over %d rounds)",
			report.US(z.cold.miss.p50), report.US(v.cold.miss.p50), float64(v.cold.miss.p50-z.cold.miss.p50)/1e3,
			100*(ratio(v.cold.miss.p50, z.cold.miss.p50)-1), report.US(vlo), report.US(vhi), report.US(zlo), report.US(zhi), v.rounds)
		if v.rounds > 1 && vlo <= zhi && zlo <= vhi {
			line += ", a difference within the round-to-round spread"
		}
		line += fmt.Sprintf("; cached reads are not re-hashed (p50 %s vs %s µs).", report.US(v.cached.all.p50), report.US(z.cached.all.p50))
		if v.osCold != nil && z.osCold != nil {
			line += fmt.Sprintf(" OS-cold miss p50: %s vs %s µs (means %s vs %s µs)", report.US(v.osCold.miss.p50), report.US(z.osCold.miss.p50), report.US(v.osCold.miss.mean), report.US(z.osCold.miss.mean))
			vlo, vhi := v.osCold.spread()
			zlo, zhi := z.osCold.spread()
			if v.rounds > 1 && vlo <= zhi && zlo <= vhi {
				line += fmt.Sprintf(", within the round-to-round spread (%s–%s vs %s–%s µs)", report.US(vlo), report.US(vhi), report.US(zlo), report.US(zhi))
			}
			line += "."
		}
		out = append(out, line)
	}

	// 5. Throughput.
	iLo, iHi, xLo, xHi := ps[0], ps[0], ps[0], ps[0]
	for _, r := range ps {
		if r.importMBs < iLo.importMBs {
			iLo = r
		}
		if r.importMBs > iHi.importMBs {
			iHi = r
		}
		if r.exportMBs < xLo.exportMBs {
			xLo = r
		}
		if r.exportMBs > xHi.exportMBs {
			xHi = r
		}
	}
	out = append(out, fmt.Sprintf("Throughput (MB/s of logical image): import with fsync %.0f (%s) to %.0f (%s), export %.0f (%s) to %.0f (%s), against %.0f MB/s for reading the raw file from the page cache; zero pages are skipped on both sides, so these scale with the non-zero share (%.0f%% here).",
		iLo.importMBs, iLo.cfg, iHi.importMBs, iHi.cfg, xLo.exportMBs, xLo.cfg, xHi.exportMBs, xHi.cfg, b.seqWarmMBs,
		100*float64(e.nonZeroBytes())/float64(e.size)))
	return out
}

func markdownSection(p params, e *env, b baseline, rs []*result, elapsed time.Duration) string {
	var w strings.Builder
	fmt.Fprintf(&w, "%s\n\n", sectionTitle)
	fmt.Fprintf(&w, "Generated by `bench/storebench`; every number below was measured in this one run (%s).\n\n", elapsed.Round(time.Second))
	fmt.Fprintf(&w, "- Command: `go run ./bench/storebench %s`\n", strings.Join(p.args, " "))
	fmt.Fprintf(&w, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&w, "- Machine: %s\n", report.Machine())
	fmt.Fprintf(&w, "- Temp files and stores: %s\n", report.FSOf(e.tmp))
	fmt.Fprintf(&w, "- Corpus: %s\n", e.desc)
	fmt.Fprintf(&w, "- Reads: %d distinct non-zero pages in one random order (seed %d), the same sequence for the raw file and every configuration; %d rounds per configuration and cache state, each on a freshly opened store, samples pooled; each read checked against the corpus outside the timed region. Latencies in µs.\n", len(e.seq), p.seed, p.rounds)
	w.WriteString("\n")
	w.WriteString("Method. MB/s are decimal megabytes of the logical image per second. *Raw file*: sequential 1 MiB reads (warm: best of three after a first read; dropped: after `echo 3 > /proc/sys/vm/drop_caches`) and 4 KiB `pread` of the read sequence. The zero tail of the captured image is a hole in the file. *Import*: `ImportMemory` from the raw file (in the page cache) into a fresh store, fsync and catalog commit included. *Export*: `ExportMemory` from a freshly opened store to a temporary file (zero pages as holes, no fsync). *Cold*: a freshly opened store (one per round), chunk cache empty, pack files still in the OS page cache (they were just written); each `Memory.Page` call is timed; a *miss* is a read that decoded a chunk (the others found a chunk that an earlier read of a neighbouring page decoded). *Cached*: the same sequence again, every chunk in the decompressed cache. ")
	if e.canDrop() {
		w.WriteString("*OS-cold*: as cold, after dropping the OS page cache before each round; kernel readahead still serves many reads from memory, so these distributions are bimodal: compare means (ratio: miss mean ÷ cold raw pread mean). *pread page not cached*: share of cold preads whose page `mincore` reported absent just before the read.")
	} else {
		fmt.Fprintf(&w, "OS-cold passes skipped: %v.", e.dropErr)
	}
	w.WriteString(" *data/stored*: non-zero bytes ÷ stored bytes (compressed records with headers, after dedup); *logical/stored*: image size ÷ stored bytes; *dedup*: referenced ÷ distinct chunk bytes. `+hash` is zstd 4 KiB opened with `VerifyHash(true)`.\n\n")
	baselineTable(e, b).Markdown(&w)
	w.WriteString("\n")
	storageTable(e, b, rs).Markdown(&w)
	w.WriteString("\n")
	latencyTable(e, b, rs).Markdown(&w)
	w.WriteString("\nConclusions (from the numbers above):\n\n")
	for _, c := range conclusions(e, b, rs) {
		fmt.Fprintf(&w, "- %s\n", c)
	}
	return w.String()
}
