//go:build linux

// Command fusebench measures serving a disk image through the store's FUSE
// view (package fusefs) against the same image as a plain file, and a
// squashfs of the same files through squashfuse (and squashfuse_ll, its
// low-level-API sibling from the same package, when installed).
//
//	scripts/fusebench-deps.sh   # squashfuse, squashfs-tools, e2fsprogs
//	go run ./bench/fusebench [-tree /usr/lib] [-max 400M] [-rounds 3] [-out docs/PERFORMANCE.md]
//
// It copies a lexical-order prefix of a real directory tree (-max bytes of
// regular files; symlinks kept, sockets and devices skipped) into a temp
// dir, builds an ext4 image of it with `mkfs.ext4 -d` and a squashfs with
// `mksquashfs` (default compression), imports the ext4 image into a fresh
// store, and then, in the same run, for -rounds rounds:
//
//   - reads the image file itself, as a plain file on the host's file
//     system and as MOUNT/images/rootfs of a fusefs mount: sequentially in
//     1 MiB reads, and with 4 KiB preads at a fixed random sequence of
//     non-zero blocks;
//   - reads every regular file of the tree: the copied tree on the host
//     file system (reference), ext4 loop-mounted read-only from the plain
//     image and from the image on the fusefs mount, and the squashfs
//     through squashfuse and squashfuse_ll;
//
// each cold (OS page cache dropped; every mount, fusefs's store included,
// made afresh so that no user-space cache survives) and warm (repeated at
// once). Readers are separate processes (this binary re-executed), so the
// serving process is never the one reading. With -diag it also counts the
// READ requests the kernel sends to fusefs (go-fuse's debug log), times
// cold reads with the mount's read-ahead raised to 1 MiB, and measures the
// store's chunk decode rate in-process.
//
// Results go to stdout; with -out, a "## FUSE image serving (issue 4)"
// section replaces (or is appended to) that markdown file. Everything is
// unmounted and the temp dir removed on exit, on error and on SIGINT or
// SIGTERM. Needs root, /dev/fuse and the tools above; it says what is
// missing and exits non-zero otherwise.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	perf "github.com/snapfaas/snapfaas/bench/report"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/snapfaas/snapfaas/pagestore"
)

const sectionTitle = "## FUSE image serving (issue 4)"

const usage = "fusebench [-tree /usr/lib] [-max 400M] [-rounds 3] [-reads 5000] [-seed 1] [-diag=true] [-dir TMP] [-out docs/PERFORMANCE.md]"

// imageName is the image's name in the store.
const imageName = "rootfs"

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "fusebench: %v\n", err)
		if errors.Is(err, errMissing) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type params struct {
	tree   string
	max    int64
	rounds int
	reads  int
	seed   uint64
	diag   bool
	dir    string
	out    string
	args   []string
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fusebench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	maxBytes := perf.Size(400 << 20)
	tree := fs.String("tree", "/usr/lib", "directory tree to copy into the images")
	fs.Var(&maxBytes, "max", "cap on the regular-file bytes copied from -tree (e.g. 400M)")
	rounds := fs.Int("rounds", 3, "cold+warm measurement rounds per configuration")
	reads := fs.Int("reads", 5000, "random 4 KiB preads per pass")
	seed := fs.Uint64("seed", 1, "seed of the random pread sequence")
	diag := fs.Bool("diag", true, "also run the fusefs diagnostics (READ sizes, read-ahead, decode rate)")
	dir := fs.String("dir", "", "directory for temporary files (default: the system temp dir)")
	out := fs.String("out", "", "markdown file to write the \""+sectionTitle+"\" section into")
	if help, err := perf.ParseFlags(fs, args, usage, stderr); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q (usage: %s)", fs.Args(), usage)
	}
	if maxBytes < 1<<20 {
		return fmt.Errorf("-max %d: want at least 1M", maxBytes)
	}
	if *rounds <= 0 {
		return fmt.Errorf("-rounds %d: must be positive", *rounds)
	}
	if *reads <= 0 {
		return fmt.Errorf("-reads %d: must be positive", *reads)
	}
	if st, err := os.Stat(*tree); err != nil || !st.IsDir() {
		return fmt.Errorf("-tree %s: not a directory", *tree)
	}
	p := params{tree: *tree, max: int64(maxBytes), rounds: *rounds, reads: *reads, seed: *seed, diag: *diag,
		dir: *dir, out: *out, args: args}
	return bench(p, stdout, stderr)
}

// env is the prepared content and the serving stacks.
type env struct {
	p      params
	ctx    context.Context
	stderr io.Writer
	logf   func(string, ...any)
	cl     *cleaner
	self   string

	tmp, src, storeDir       string
	fuseMnt, fuseImg         string
	sqMnt, loopMnt, offsFile string
	c                        content
	loopErr                  error // why loop devices cannot be used; nil when they can

	fuse  *fuseServer
	loop  *loop
	sq    *squash
	gflog *goFuseLog
}

// variant is one way of serving what a reader reads.
type variant struct {
	key, label string
	path       func() string
	up, down   func() error
	meter      func() time.Duration // CPU of the user-space server; nil if none
}

// pairs holds the cold and warm samples of one variant, one per round.
type pairs struct{ cold, warm []*sample }

type results struct {
	loadBefore      string // 1-minute load average before and after the run
	loadAfter       string
	raw, rand, tree map[string]*pairs
	rawV, treeV     []variant
	diag            *diagResult
	elapsed         time.Duration
}

func bench(p params, stdout, stderr io.Writer) (err error) {
	var logMu sync.Mutex
	logf := func(format string, a ...any) {
		logMu.Lock()
		fmt.Fprintf(stderr, "fusebench: "+format+"\n", a...)
		logMu.Unlock()
	}
	if err := preflight(); err != nil {
		return err
	}
	started := time.Now()
	// go-fuse logs through the log package; runs after the cleanup below.
	gflog := &goFuseLog{out: stderr}
	log.SetOutput(gflog)
	defer log.SetOutput(os.Stderr)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl := &cleaner{logf: logf, cancel: cancel}
	tmp, err := os.MkdirTemp(p.dir, "fusebench-")
	if err != nil {
		return err
	}
	tmp, _ = filepath.Abs(tmp)
	cl.push("remove "+tmp, func() error { return removeTemp(tmp) })
	defer func() {
		if cerr := cl.runAll(); err == nil && cerr != nil {
			err = cerr
		}
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sigs:
			logf("%v: unmounting and removing %s", s, tmp)
			cl.runAll()
			os.Exit(130)
		case <-done:
		}
	}()

	e := &env{p: p, ctx: ctx, stderr: stderr, logf: logf, cl: cl, self: self, tmp: tmp,
		src: filepath.Join(tmp, "tree"), storeDir: filepath.Join(tmp, "store"),
		fuseMnt: filepath.Join(tmp, "mnt-fusefs"), sqMnt: filepath.Join(tmp, "mnt-squashfuse"),
		loopMnt: filepath.Join(tmp, "mnt-ext4"), offsFile: filepath.Join(tmp, "offsets")}
	e.fuseImg = filepath.Join(e.fuseMnt, "images", imageName)
	e.gflog = gflog
	for _, d := range []string{e.src, e.fuseMnt, e.sqMnt, e.loopMnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	loadBefore := loadAvg()
	if err := e.prepare(); err != nil {
		return err
	}
	r, err := e.measure()
	if err != nil {
		return err
	}
	if p.diag {
		logf("diagnostics")
		if r.diag, err = e.diagnose(r); err != nil {
			return fmt.Errorf("diagnostics: %w", err)
		}
	}
	r.elapsed = time.Since(started)
	r.loadBefore, r.loadAfter = loadBefore, loadAvg()
	printHuman(stdout, e, r)
	if p.out != "" {
		if err := perf.WriteSection(p.out, markdownSection(e, r)); err != nil {
			return err
		}
		logf("wrote %q to %s", sectionTitle, p.out)
	}
	return nil
}

// removeTemp removes the temp dir, unless something is still mounted in it.
func removeTemp(tmp string) error {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(unescapeMount(f[4])+"/", tmp+"/") {
			return fmt.Errorf("%s is still mounted; leaving %s in place", unescapeMount(f[4]), tmp)
		}
	}
	return os.RemoveAll(tmp)
}

// prepare builds the content: tree copy, ext4 image, squashfs, store.
func (e *env) prepare() error {
	e.logf("copying up to %s MiB of %s", perf.MiB(e.p.max), e.p.tree)
	if err := copyTree(e.p.tree, e.src, e.p.max, &e.c); err != nil {
		return fmt.Errorf("copy %s: %w", e.p.tree, err)
	}
	if e.c.files == 0 {
		return fmt.Errorf("%s: no regular file copied", e.p.tree)
	}
	syscall.Sync()
	e.logf("copied %d files, %s MiB in %s; building the ext4 image", e.c.files, perf.MiB(e.c.bytes), e.c.copyDur.Round(time.Millisecond))
	if err := buildExt4(e.ctx, e.src, filepath.Join(e.tmp, "rootfs.ext4"), &e.c); err != nil {
		return err
	}
	e.logf("%s (%s MiB, %s); building the squashfs", e.c.mkfsCmd, perf.MiB(e.c.imgSize), e.c.mkfsDur.Round(time.Millisecond))
	if err := buildSquashfs(e.ctx, e.src, filepath.Join(e.tmp, "tree.sqfs"), &e.c); err != nil {
		return err
	}
	e.logf("squashfs %s MiB (%s) in %s; importing the image", perf.MiB(e.c.sqfsSize), e.c.sqfsComp, e.c.sqfsDur.Round(time.Millisecond))
	if err := importImage(e.storeDir, e.c.img, &e.c); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	syscall.Sync()
	e.logf("imported at %.0f MB/s: %d chunks, %s MiB stored", e.c.importMBs, e.c.chunks, perf.MiB(e.c.stored))
	offs, nz, err := randomOffsets(e.c.img, e.p.reads, e.p.seed)
	if err != nil {
		return err
	}
	e.c.nonZero, e.c.seqOffsets = nz, offs
	b := make([]byte, 8*len(offs))
	for i, o := range offs {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(o))
	}
	if err := os.WriteFile(e.offsFile, b, 0o644); err != nil {
		return err
	}

	// Can this machine loop-mount? Try with the plain image.
	if e.loopErr = e.loopUp(e.c.img); e.loopErr == nil {
		if err := e.loopDown(); err != nil {
			return err
		}
	} else {
		e.logf("NOTE: loop-mounting the ext4 image failed, tree reads through ext4 skipped: %v", e.loopErr)
	}

	// The image through fusefs must be byte-identical to the file.
	if err := e.fuseUp(nil); err != nil {
		return err
	}
	if _, err := e.reader(childSpec{Mode: "cmp", Path: e.c.img, Path2: e.fuseImg}, nil); err != nil {
		return fmt.Errorf("fusefs image check: %w", err)
	}
	return e.fuseDown()
}

func (e *env) variants() (raw, tree []variant) {
	nop := func() error { return nil }
	fuseMeter := selfCPU
	sqMeter := func() time.Duration {
		if e.sq == nil {
			return 0
		}
		return procCPU(e.sq.cmd.Process.Pid)
	}
	plain := variant{key: "plain", label: "plain file (" + perf.FSOf(e.c.img) + ")", path: func() string { return e.c.img }, up: nop, down: nop}
	fuse := variant{key: "fusefs", label: "fusefs images/" + imageName, path: func() string { return e.fuseImg },
		up: func() error { return e.fuseUp(nil) }, down: e.fuseDown, meter: fuseMeter}
	raw = []variant{plain, fuse}
	tree = []variant{{key: "host", label: "copied tree on the host fs (no image)", path: func() string { return e.src }, up: nop, down: nop}}
	if e.loopErr == nil {
		tree = append(tree, variant{key: "loop-plain", label: "ext4 loop ro ← plain image", path: func() string { return e.loopMnt },
			up: func() error { return e.loopUp(e.c.img) }, down: e.loopDown})
	}
	tree = append(tree, variant{key: "squashfuse", label: "squashfuse ← squashfs", path: func() string { return e.sqMnt },
		up: func() error { return e.squashUp("squashfuse") }, down: e.squashDown, meter: sqMeter})
	if _, err := exec.LookPath("squashfuse_ll"); err == nil {
		tree = append(tree, variant{key: "squashfuse_ll", label: "squashfuse_ll ← squashfs", path: func() string { return e.sqMnt },
			up: func() error { return e.squashUp("squashfuse_ll") }, down: e.squashDown, meter: sqMeter})
	}
	if e.loopErr == nil {
		tree = append(tree, variant{key: "loop-fusefs", label: "ext4 loop ro ← fusefs image", path: func() string { return e.loopMnt },
			up: func() error {
				if err := e.fuseUp(nil); err != nil {
					return err
				}
				return e.loopUp(e.fuseImg)
			},
			down: func() error {
				err := e.loopDown()
				if ferr := e.fuseDown(); err == nil {
					err = ferr
				}
				return err
			}, meter: fuseMeter})
	}
	return raw, tree
}

// pair measures v once cold (everything remounted after dropping the
// page cache) and once warm (again at once), appending to into.
func (e *env) pair(v variant, spec childSpec, into *pairs) error {
	if err := v.down(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	if err := v.up(); err != nil {
		return fmt.Errorf("%s: %w", v.label, err)
	}
	spec.Path = v.path()
	var ss [2]*sample
	for i := range ss {
		s, err := e.reader(spec, v.meter)
		if err != nil {
			v.down()
			return fmt.Errorf("%s: %w", v.label, err)
		}
		if err := e.check(spec.Mode, s); err != nil {
			v.down()
			return fmt.Errorf("%s: %w", v.label, err)
		}
		ss[i] = s
	}
	into.cold = append(into.cold, ss[0])
	into.warm = append(into.warm, ss[1])
	return v.down()
}

// check verifies a reader read everything it should have.
func (e *env) check(mode string, s *sample) error {
	switch mode {
	case "seq":
		if s.bytes != e.c.imgSize {
			return fmt.Errorf("read %d bytes of the image, want %d", s.bytes, e.c.imgSize)
		}
	case "rand":
		if s.bytes != int64(len(e.c.seqOffsets))*4096 {
			return fmt.Errorf("random reads returned %d bytes, want %d", s.bytes, len(e.c.seqOffsets)*4096)
		}
	case "tree":
		if s.files != e.c.files || s.bytes != e.c.bytes {
			return fmt.Errorf("tree read found %d files, %d bytes; the tree has %d files, %d bytes", s.files, s.bytes, e.c.files, e.c.bytes)
		}
	}
	return nil
}

func (e *env) measure() (*results, error) {
	r := &results{raw: map[string]*pairs{}, rand: map[string]*pairs{}, tree: map[string]*pairs{}}
	r.rawV, r.treeV = e.variants()
	for _, v := range r.rawV {
		r.raw[v.key], r.rand[v.key] = &pairs{}, &pairs{}
	}
	for _, v := range r.treeV {
		r.tree[v.key] = &pairs{}
	}
	for i := 0; i < e.p.rounds; i++ {
		e.logf("round %d/%d: image sequential reads", i+1, e.p.rounds)
		for _, v := range r.rawV {
			if err := e.pair(v, childSpec{Mode: "seq"}, r.raw[v.key]); err != nil {
				return nil, err
			}
		}
		e.logf("round %d/%d: image random 4 KiB preads", i+1, e.p.rounds)
		for _, v := range r.rawV {
			if err := e.pair(v, childSpec{Mode: "rand", Offsets: e.offsFile}, r.rand[v.key]); err != nil {
				return nil, err
			}
		}
		e.logf("round %d/%d: whole-tree reads", i+1, e.p.rounds)
		for _, v := range r.treeV {
			if err := e.pair(v, childSpec{Mode: "tree"}, r.tree[v.key]); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// ---- diagnostics ----

type diagResult struct {
	maxRead      string             // fusefs mount options
	raDefault    string             // the mount's read_ahead_kb
	raErr        error              // why the read-ahead experiment was skipped
	hist         []histRow          // READ requests per workload
	seqRA        map[int]*pairs     // read_ahead_kb → cold seq samples (cold only)
	treeRA       map[int]*pairs     // read_ahead_kb → cold tree samples via loop (cold only)
	decode       map[int]decodeRate // workers → rate
	openCold     map[string]time.Duration
	openWarm     map[string]time.Duration
	folios       map[string]*childResult // plain, fusefs → page-cache folios after a cold sequential read
	foliosErr    error
	serverPerMiB time.Duration // fusefs CPU per MiB of cold sequential image read
	spliceLogs   map[int]int   // read_ahead_kb → go-fuse "trySplice" log lines in the timed passes
	mainLogs     int           // the same over the main measurements
}

type histRow struct{ workload, summary string }

type decodeRate struct {
	mbs      float64 // MB/s of decoded chunk bytes
	perChunk time.Duration
	chunks   uint64
}

var raSizes = []int{128, 1024}

func (e *env) diagnose(r *results) (*diagResult, error) {
	d := &diagResult{seqRA: map[int]*pairs{}, treeRA: map[int]*pairs{}, decode: map[int]decodeRate{}, openCold: map[string]time.Duration{},
		openWarm: map[string]time.Duration{}, folios: map[string]*childResult{},
		spliceLogs: map[int]int{}, mainLogs: e.gflog.take()}
	for _, k := range []string{"plain", "fusefs"} {
		var ds []time.Duration
		for _, s := range r.raw[k].cold {
			ds = append(ds, s.open)
		}
		for _, s := range r.rand[k].cold {
			ds = append(ds, s.open)
		}
		d.openCold[k] = median(ds)
		ds = nil
		for _, s := range r.raw[k].warm {
			ds = append(ds, s.open)
		}
		for _, s := range r.rand[k].warm {
			ds = append(ds, s.open)
		}
		d.openWarm[k] = median(ds)
	}

	// Page-cache folio sizes after a cold sequential read.
	e.logf("diagnostics: page-cache folios")
	for _, v := range r.rawV {
		if err := dropCaches(); err != nil {
			return nil, err
		}
		if err := v.up(); err != nil {
			return nil, err
		}
		if _, err := e.reader(childSpec{Mode: "seq", Path: v.path()}, nil); err != nil {
			v.down()
			return nil, err
		}
		if d.foliosErr == nil {
			s, err := e.reader(childSpec{Mode: "folios", Path: v.path()}, nil)
			if err != nil {
				d.foliosErr = err
			} else {
				d.folios[v.key] = &s.res
			}
		}
		if err := v.down(); err != nil {
			return nil, err
		}
	}
	var cpu time.Duration
	for _, s := range r.raw["fusefs"].cold {
		cpu += s.serverCPU
	}
	d.serverPerMiB = time.Duration(float64(cpu) / (float64(e.c.imgSize) * float64(len(r.raw["fusefs"].cold)) / (1 << 20)))

	// READ requests, from go-fuse's debug log (timings not taken: the log
	// itself costs time).
	h := newReadHist()
	logged := func(name string, ra int, withLoop bool, spec childSpec) error {
		if err := dropCaches(); err != nil {
			return err
		}
		h.reset()
		if err := e.fuseUp(h); err != nil {
			return err
		}
		if d.maxRead == "" {
			d.maxRead = mountOptions(e.fuseMnt)
		}
		if ra != 0 {
			if err := e.setRA(ra); err != nil {
				e.fuseDown()
				return err
			}
		}
		spec.Path = e.fuseImg
		if withLoop {
			if err := e.loopUp(e.fuseImg); err != nil {
				e.fuseDown()
				return err
			}
			spec.Path = e.loopMnt
		}
		_, err := e.reader(spec, nil)
		if lerr := e.loopDown(); err == nil {
			err = lerr
		}
		if ferr := e.fuseDown(); err == nil {
			err = ferr
		}
		d.hist = append(d.hist, histRow{name, h.summary()})
		return err
	}
	if err := e.fuseUp(nil); err != nil {
		return nil, err
	}
	if p := bdiReadAhead(e.fuseMnt); p != "" {
		b, _ := os.ReadFile(p)
		d.raDefault = strings.TrimSpace(string(b))
	} else {
		d.raErr = errors.New("no /sys/class/bdi entry for the fusefs mount")
	}
	if err := e.fuseDown(); err != nil {
		return nil, err
	}
	e.logf("diagnostics: READ request sizes")
	if err := logged("cold sequential read of images/"+imageName+" (1 MiB reads)", 0, false, childSpec{Mode: "seq"}); err != nil {
		return nil, err
	}
	if err := logged(fmt.Sprintf("cold random 4 KiB preads (%d)", len(e.c.seqOffsets)), 0, false, childSpec{Mode: "rand", Offsets: e.offsFile}); err != nil {
		return nil, err
	}
	if e.loopErr == nil {
		if err := logged("cold whole-tree read, ext4 loop ← fusefs image", 0, true, childSpec{Mode: "tree"}); err != nil {
			return nil, err
		}
	}
	if d.raErr == nil {
		if err := logged("cold sequential read, read_ahead_kb=1024", 1024, false, childSpec{Mode: "seq"}); err != nil {
			return nil, err
		}
		if e.loopErr == nil {
			if err := logged("cold whole-tree read via loop, read_ahead_kb=1024", 1024, true, childSpec{Mode: "tree"}); err != nil {
				return nil, err
			}
		}
	}

	// Read-ahead: cold reads with the mount's read_ahead_kb at the default
	// and at 1 MiB, alternating, rounds times.
	if d.raErr == nil {
		e.logf("diagnostics: read-ahead")
		for _, ra := range raSizes {
			d.seqRA[ra], d.treeRA[ra] = &pairs{}, &pairs{}
		}
		for i := 0; i < e.p.rounds; i++ {
			for _, ra := range raSizes {
				e.gflog.take()
				s, err := e.coldRA(ra, false)
				if err != nil {
					return nil, err
				}
				d.seqRA[ra].cold = append(d.seqRA[ra].cold, s)
				if e.loopErr == nil {
					s, err := e.coldRA(ra, true)
					if err != nil {
						return nil, err
					}
					d.treeRA[ra].cold = append(d.treeRA[ra].cold, s)
				}
				d.spliceLogs[ra] += e.gflog.take()
			}
		}
	}

	// Chunk decode rate, in-process, pack files in the page cache.
	e.logf("diagnostics: decode rate")
	for _, w := range []int{1, runtime.NumCPU()} {
		if _, ok := d.decode[w]; ok {
			continue
		}
		dr, err := e.decodeRate(w)
		if err != nil {
			return nil, err
		}
		d.decode[w] = dr
	}
	return d, nil
}

func (e *env) setRA(kb int) error {
	p := bdiReadAhead(e.fuseMnt)
	if p == "" {
		return errors.New("no read_ahead_kb for the fusefs mount")
	}
	return os.WriteFile(p, []byte(strconv.Itoa(kb)+"\n"), 0o644)
}

// coldRA reads the image sequentially (or, with tree, the tree through
// ext4 on a loop device on it) cold, with the mount's read_ahead_kb at ra.
func (e *env) coldRA(ra int, tree bool) (*sample, error) {
	if err := dropCaches(); err != nil {
		return nil, err
	}
	if err := e.fuseUp(nil); err != nil {
		return nil, err
	}
	defer e.fuseDown()
	if err := e.setRA(ra); err != nil {
		return nil, err
	}
	spec := childSpec{Mode: "seq", Path: e.fuseImg}
	if tree {
		if err := e.loopUp(e.fuseImg); err != nil {
			return nil, err
		}
		defer e.loopDown()
		spec = childSpec{Mode: "tree", Path: e.loopMnt}
	}
	s, err := e.reader(spec, selfCPU)
	if err != nil {
		return nil, err
	}
	if err := e.check(spec.Mode, s); err != nil {
		return nil, err
	}
	if err := e.loopDown(); err != nil {
		return nil, err
	}
	return s, e.fuseDown()
}

// decodeRate decodes every non-zero chunk of the image through a freshly
// opened store (empty chunk cache) with the pack files in the page cache,
// with workers goroutines.
func (e *env) decodeRate(workers int) (decodeRate, error) {
	var dr decodeRate
	if err := filepath.WalkDir(e.storeDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(io.Discard, f)
		return err
	}); err != nil {
		return dr, err
	}
	s, err := pagestore.Open(e.storeDir, pagestore.ReadOnly())
	if err != nil {
		return dr, err
	}
	defer s.Close()
	img, err := s.OpenImage(imageName)
	if err != nil {
		return dr, err
	}
	cs := int64(img.Info.ChunkSize)
	n := (img.Size() + cs - 1) / cs
	errs := make(chan error, workers)
	runtime.GC()
	start := time.Now()
	for w := 0; w < workers; w++ {
		go func(w int) {
			buf := make([]byte, cs)
			for i := int64(w); i < n; i += int64(workers) {
				off := i * cs
				if img.ZeroChunk(off) {
					continue
				}
				if _, err := img.ReadAt(buf[:min(cs, img.Size()-off)], off); err != nil && !errors.Is(err, io.EOF) {
					errs <- err
					return
				}
			}
			errs <- nil
		}(w)
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			return dr, err
		}
	}
	d := time.Since(start)
	dr.chunks = s.CacheStats().Misses
	if dr.chunks == 0 {
		return dr, errors.New("decoded no chunk")
	}
	dr.mbs = mbs(int64(dr.chunks)*cs, d)
	dr.perChunk = d * time.Duration(workers) / time.Duration(dr.chunks)
	return dr, nil
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "unknown"
}

// ---- numbers ----

func mbs(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / 1e6 / d.Seconds()
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// lat pools the latencies of samples and returns p50 and p99.
func lat(ss []*sample) (p50, p99 time.Duration) {
	var all []time.Duration
	for _, s := range ss {
		all = append(all, s.lat...)
	}
	slices.Sort(all)
	return perf.Percentile(all, 50), perf.Percentile(all, 99)
}

// walls returns the median wall time of samples, and the lowest and highest.
func walls(ss []*sample) (med, lo, hi time.Duration) {
	var ds []time.Duration
	for _, s := range ss {
		ds = append(ds, s.wall)
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	return median(ds), slices.Min(ds), slices.Max(ds)
}

func serverCPU(ss []*sample) time.Duration {
	var ds []time.Duration
	for _, s := range ss {
		if s.serverCPU < 0 {
			return -1
		}
		ds = append(ds, s.serverCPU)
	}
	return median(ds)
}

func readerCPU(ss []*sample) time.Duration {
	var ds []time.Duration
	for _, s := range ss {
		ds = append(ds, s.cpu)
	}
	return median(ds)
}
