package pagestore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/catalog"
)

// The crash test runs a write (an import or gc) in a child process, this
// test binary, that kills itself with SIGKILL at one crash point (see
// crashpoint.go), then checks the store the child left. Each point is
// crashed at in two ways:
//
//   - kill: the process dies; what it wrote survives in the page cache.
//   - power: before dying the child throws away what was not durable, as a
//     power cut would: every pack file is cut back to the length it had at
//     its last fsync (or when the child started), and a pack file created
//     since the last fsync of the chunks directory disappears. The catalog
//     is bbolt, which fsyncs each commit itself.
//
// After the crash: the store opens, Verify reports no problem, every object
// committed before the crash exports byte for byte, the object in flight
// is absent (or, after its commit, complete), and gc leaves no debris and
// no unreferenced chunk bytes.

// crashStep is a crash point and which pass of the write through it to
// die at, from 1; lastHit is the last pass.
type crashStep struct {
	point string
	hit   int
}

const lastHit = -1

// importSteps are the crash points of an import, in the order it passes
// them.
var importSteps = []crashStep{
	{"write/lease-committed", 1},
	{"pack/opened", 1}, // the pack the last writer left, debris truncated
	{"pack/dir-synced", 1},
	{"write/record-appended", 1},
	{"write/data-synced", 1},
	{"write/chunks-committed", 1}, // an intermediate commit under the lease
	{"pack/opened", 2},            // that pack is full: a new one
	{"pack/dir-synced", 2},
	{"write/record-appended", lastHit},
	{"write/chunks-committed", lastHit}, // in the new pack
	{"write/data-synced", lastHit},      // before the final commit
	{"write/object-committed", 1},
}

// gcSteps are the crash points of a gc.
var gcSteps = []crashStep{
	{"gc/swept", 1},
	{"gc/pack-deleted", 1},
	{"gc/orphan-deleted", 1},
	{"gc/pack-truncated", 1},
	{"pack/opened", 1}, // the rewrite's new pack
	{"pack/dir-synced", 1},
	{"gc/record-copied", 1},
	{"gc/record-copied", lastHit},
	{"gc/rewrite-synced", 1},
	{"gc/rewrite-committed", 1},
	{"gc/old-pack-removed", 1},
	{"gc/dir-synced", 1},
}

// crashScenario is a store built by the parent and a write the child runs
// on a copy of it.
type crashScenario struct {
	// build makes the store in dir and returns what it committed.
	build func(t *testing.T, dir string) (committed map[string][]byte, removed []string)
	// opts are the child's store options; dir is the store.
	opts func(dir string) []Option
	run  func(s *Store) error
	// object is what run creates ("" for gc), with its content.
	object string
	want   []byte
	// steps are the crash points to die at.
	steps []crashStep
}

const crashObject = "crashed"

// The shared store of the import scenarios: an image, a base snapshot.
var (
	crashKeep = corpus.Generate(51, 128<<10)
	crashBase = corpus.Generate(52, 512<<10)
	// crashDiff changes every other page of crashBase and zeroes some.
	crashDiff = func() []byte {
		m := bytes.Clone(crashBase)
		for p := 0; p < len(m)/pageSize; p++ {
			switch {
			case p%16 == 1:
				clear(m[p*pageSize : (p+1)*pageSize])
			case p%2 == 0:
				m[p*pageSize+11] ^= 0x5a
			}
		}
		return m
	}()
	crashImage = func() []byte {
		d := bytes.Clone(crashKeep[:64<<10]) // stored already
		d = append(d, make([]byte, 64<<10)...)
		return append(d, corpus.Generate(53, 384<<10)...)
	}()
	crashMem = corpus.Generate(54, 512<<10)
)

func buildImportStore(t *testing.T, dir string) (map[string][]byte, []string) {
	s, err := Open(dir, Create())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.ImportImage(context.Background(), "keep", bytes.NewReader(crashKeep), ImportOptions{ChunkSize: rawImport.ChunkSize}); err != nil {
		t.Fatal(err)
	}
	importMem(t, s, "base", crashBase, MemoryOptions{})
	return map[string][]byte{"keep": crashKeep, "base": crashBase}, nil
}

// importOpts makes the child fill the pack it reopens and start a new one.
func importOpts(dir string) []Option {
	packs, _ := filepath.Glob(filepath.Join(dir, chunksSubdir, packPrefix+"*"))
	sort.Strings(packs)
	fi, err := os.Stat(packs[len(packs)-1])
	if err != nil {
		panic(err)
	}
	return []Option{MaxPackSize(fi.Size() + 96<<10)}
}

// Import scenarios store raw chunks so that pack sizes do not depend on
// compression.
var rawImport = ImportOptions{Codec: "raw", ChunkSize: 16 << 10}

var crashScenarios = map[string]*crashScenario{
	"image": {
		steps: importSteps, build: buildImportStore, opts: importOpts, object: crashObject, want: crashImage,
		run: func(s *Store) error {
			_, err := s.ImportImage(context.Background(), crashObject, bytes.NewReader(crashImage), rawImport)
			return err
		},
	},
	"memory": {
		steps: importSteps, build: buildImportStore, opts: importOpts, object: crashObject, want: crashMem,
		run: func(s *Store) error {
			_, err := s.ImportMemory(context.Background(), crashObject, bytes.NewReader(crashMem), int64(len(crashMem)), MemoryOptions{ImportOptions: rawImport})
			return err
		},
	},
	"diff": {
		steps: importSteps, build: buildImportStore, opts: importOpts, object: crashObject, want: crashDiff,
		run: func(s *Store) error {
			_, err := s.ImportMemory(context.Background(), crashObject, bytes.NewReader(crashDiff), int64(len(crashDiff)), MemoryOptions{ImportOptions: rawImport, Parent: "base"})
			return err
		},
	},
	"diff-changed": {
		steps: importSteps, build: buildImportStore, opts: importOpts, object: crashObject, want: crashDiff,
		run: func(s *Store) error {
			changed := func(p uint64) bool { return p%2 == 0 || p%16 == 1 }
			_, err := s.ImportMemory(context.Background(), crashObject, bytes.NewReader(crashDiff), int64(len(crashDiff)), MemoryOptions{ImportOptions: rawImport, Parent: "base", Changed: changed})
			return err
		},
	},
	"gc": {
		steps: gcSteps, build: buildGCStore, opts: func(string) []Option { return nil },
		run: func(s *Store) error {
			_, err := s.GC(context.Background(), GCOptions{})
			return err
		},
	},
}

// buildGCStore leaves gc one of each kind of work: pack 1 all dead
// (delete), pack 2 half dead (rewrite), pack 3 with debris past its
// committed length (truncate), an orphan pack file, a stale lease.
func buildGCStore(t *testing.T, dir string) (map[string][]byte, []string) {
	ctx := context.Background()
	imgs := map[string][]byte{}
	for i, name := range []string{"x", "y", "z", "w"} {
		n := 128 << 10
		if name == "x" {
			n = 256 << 10
		}
		imgs[name] = corpus.Generate(int64(60+i), int64(n))
	}
	// Raw 64 KiB chunks in packs of 256 KiB: x fills pack 1, y and z
	// pack 2, w starts pack 3.
	s, err := Open(dir, Create(), MaxPackSize(256<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, name := range []string{"x", "y", "z", "w"} {
		if _, err := s.ImportImage(ctx, name, bytes.NewReader(imgs[name]), rawImport); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"x", "y"} {
		if _, err := s.Remove(name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Lease("stale", time.Nanosecond, nil, nil); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(s.packPath(3), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(bytes.Repeat([]byte{0xdb}, 1000))
	f.Close()
	if err := os.WriteFile(s.packPath(9), bytes.Repeat([]byte{0x0f}, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"z": imgs["z"], "w": imgs["w"]}, []string{"x", "y"}
}

const crashEnv = "PAGESTORE_CRASH_CHILD"

type crashOrder struct {
	Dir, Scenario, Point string
	Hit                  int // 0: run to the end, reporting every point
	Power                bool
}

// TestCrashChild is the child: it runs the scenario's write and dies at
// the point it was given.
func TestCrashChild(t *testing.T) {
	env := os.Getenv(crashEnv)
	if env == "" {
		t.Skip("the crash test's child process")
	}
	var o crashOrder
	if err := json.Unmarshal([]byte(env), &o); err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	sc := crashScenarios[o.Scenario]
	commitEvery = 64 << 10
	pc := newPowerCut(filepath.Join(o.Dir, chunksSubdir))
	syncFile = pc.sync
	hits := map[string]int{}
	crashHook = func(p string) {
		hits[p]++
		fmt.Println("HIT", p, hits[p])
		if p == o.Point && hits[p] == o.Hit {
			if o.Power {
				if err := pc.cut(); err != nil {
					fmt.Println("ERR", err)
					os.Exit(2)
				}
			}
			fmt.Println("CRASH", p, hits[p])
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	s, err := Open(o.Dir, sc.opts(o.Dir)...)
	if err == nil {
		err = sc.run(s)
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	fmt.Println("DONE")
	os.Exit(0)
}

// powerCut tracks what of a chunks directory is durable.
type powerCut struct {
	dir     string
	names   map[string]bool  // directory entries made durable
	durable map[string]int64 // file lengths made durable
}

func newPowerCut(dir string) *powerCut {
	pc := &powerCut{dir: dir, names: map[string]bool{}, durable: map[string]int64{}}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			pc.names[e.Name()] = true
			pc.durable[e.Name()] = fi.Size()
		}
	}
	return pc
}

func (pc *powerCut) sync(f *os.File) error {
	if err := f.Sync(); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		pc.durable[filepath.Base(f.Name())] = fi.Size()
		return nil
	}
	entries, err := os.ReadDir(f.Name())
	if err != nil {
		return err
	}
	for _, e := range entries {
		pc.names[e.Name()] = true
	}
	return nil
}

// cut drops what a power cut would: files whose directory entry was not
// synced, and file bytes past the last fsync.
func (pc *powerCut) cut() error {
	entries, err := os.ReadDir(pc.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(pc.dir, e.Name())
		if !pc.names[e.Name()] {
			if err := os.Remove(p); err != nil {
				return err
			}
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if n := pc.durable[e.Name()]; fi.Size() > n {
			if err := os.Truncate(p, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// runCrashChild runs the child on the store in dir and returns the points
// it passed, with how often. With hit > 0 the child must die there.
func runCrashChild(t *testing.T, o crashOrder) map[string]int {
	t.Helper()
	env, _ := json.Marshal(o)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), crashEnv+"="+string(env))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	hits := map[string]int{}
	crashed := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "HIT":
			n, _ := strconv.Atoi(f[2])
			hits[f[1]] = n
		case len(f) == 3 && f[0] == "CRASH":
			crashed = f[1] + " " + f[2]
		case len(f) > 0 && f[0] == "ERR":
			t.Fatalf("child: %s", sc.Text())
		}
	}
	if o.Hit == 0 {
		if err != nil || !bytes.Contains(out, []byte("DONE")) {
			t.Fatalf("child: %v\n%s%s", err, out, stderr.Bytes())
		}
		return hits
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("child was not killed at %s #%d (exit: %v); it passed %v\n%s", o.Point, o.Hit, err, hits, stderr.Bytes())
	}
	if want := fmt.Sprintf("%s %d", o.Point, o.Hit); crashed != want {
		t.Fatalf("child crashed at %q, want %q", crashed, want)
	}
	return hits
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// exportObject returns the bytes of image or snapshot name.
func exportObject(t *testing.T, s *Store, name string) []byte {
	t.Helper()
	var kind string
	_ = s.Catalog().View(func(tx *catalog.Tx) error { kind = tx.Exists(name); return nil })
	var out bytes.Buffer
	var err error
	switch kind {
	case "image":
		_, err = s.ExportImage(context.Background(), name, &out, nil)
	case "snapshot":
		_, err = s.ExportMemory(context.Background(), name, &out, nil)
	default:
		t.Fatalf("%s: not in the store", name)
	}
	if err != nil {
		t.Fatalf("export %s: %v", name, err)
	}
	return out.Bytes()
}

// crashPointsInSource returns the names of the crash points in this
// package's code.
func crashPointsInSource(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	points := map[string]bool{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if id, ok := call.Fun.(*ast.Ident); !ok || id.Name != "crashPoint" {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				t.Fatalf("%s: crashPoint with a name that is not a literal", fset.Position(call.Pos()))
			}
			point, _ := strconv.Unquote(lit.Value)
			points[point] = true
			return true
		})
	}
	return points
}

func TestCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child per crash point")
	}
	// Every crash point in the code has a case, and every case a point.
	code := crashPointsInSource(t)
	tabled := map[string]bool{}
	for name, sc := range crashScenarios {
		for _, st := range sc.steps {
			tabled[st.point] = true
			if !code[st.point] {
				t.Errorf("scenario %s crashes at %s: no such crash point in the code", name, st.point)
			}
		}
	}
	for p := range code {
		if !tabled[p] {
			t.Errorf("crash point %s: no scenario crashes there", p)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Build each scenario's store once and trace its write: every point
	// it passes must be crashed at.
	type built struct {
		dir       string
		committed map[string][]byte
		removed   []string
		hits      map[string]int
	}
	stores := map[string]*built{}
	names := make([]string, 0, len(crashScenarios))
	for name := range crashScenarios {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		sc := crashScenarios[name]
		b := &built{dir: t.TempDir()}
		b.committed, b.removed = sc.build(t, b.dir)
		trace := t.TempDir()
		copyDir(t, b.dir, trace)
		b.hits = runCrashChild(t, crashOrder{Dir: trace, Scenario: name})
		stores[name] = b
		for p := range b.hits {
			found := false
			for _, st := range sc.steps {
				found = found || st.point == p
			}
			if !found {
				t.Errorf("scenario %s passes crash point %s but does not crash there", name, p)
			}
		}
		t.Logf("%s passes %v", name, b.hits)
	}
	if t.Failed() {
		t.FailNow()
	}

	for _, name := range names {
		b, sc := stores[name], crashScenarios[name]
		for _, st := range sc.steps {
			hit := st.hit
			if hit == lastHit {
				hit = b.hits[st.point]
			}
			if hit < 1 || hit > b.hits[st.point] {
				t.Errorf("%s: %s #%d: the write passes it %d times", name, st.point, st.hit, b.hits[st.point])
				continue
			}
			for _, power := range []bool{false, true} {
				mode := "kill"
				if power {
					mode = "power"
				}
				t.Run(fmt.Sprintf("%s/%s#%d/%s", name, st.point, hit, mode), func(t *testing.T) {
					t.Parallel()
					dir := t.TempDir()
					copyDir(t, b.dir, dir)
					runCrashChild(t, crashOrder{Dir: dir, Scenario: name, Point: st.point, Hit: hit, Power: power})
					checkAfterCrash(t, dir, sc, b.committed, b.removed, st.point == "write/object-committed")
				})
			}
		}
	}
}

// checkAfterCrash checks the store a crashed write left in dir.
func checkAfterCrash(t *testing.T, dir string, sc *crashScenario, committed map[string][]byte, removed []string, objectCommitted bool) {
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer s.Close()
	checkObjects := func(when string) {
		t.Helper()
		for name, want := range committed {
			if got := exportObject(t, s, name); !bytes.Equal(got, want) {
				t.Fatalf("%s: %s differs from what was committed", when, name)
			}
		}
		for _, name := range removed {
			if _, err := s.Inspect(name); !errors.Is(err, catalog.ErrNotFound) {
				t.Fatalf("%s: removed %s: %v", when, name, err)
			}
		}
		if sc.object == "" {
			return
		}
		_, err := s.Inspect(sc.object)
		switch {
		case objectCommitted && err != nil:
			t.Fatalf("%s: %s was committed but is gone: %v", when, sc.object, err)
		case objectCommitted:
			if got := exportObject(t, s, sc.object); !bytes.Equal(got, sc.want) {
				t.Fatalf("%s: %s is incomplete", when, sc.object)
			}
		case !errors.Is(err, catalog.ErrNotFound):
			t.Fatalf("%s: %s was never committed but is visible: %v", when, sc.object, err)
		}
	}
	v := mustVerify(t, s)
	t.Logf("after crash: orphan bytes %d, orphan files %v, unreferenced chunks %d", v.OrphanBytes, v.OrphanFiles, v.Unreferenced)
	checkObjects("after crash")

	if _, err := s.GC(context.Background(), GCOptions{RewriteThreshold: -1}); err != nil {
		t.Fatalf("gc after crash: %v", err)
	}
	v = mustVerify(t, s)
	if v.OrphanBytes != 0 || len(v.OrphanFiles) != 0 || v.Unreferenced != 0 {
		t.Fatalf("gc left debris: orphan bytes %d, orphan files %v, unreferenced chunks %d", v.OrphanBytes, v.OrphanFiles, v.Unreferenced)
	}
	var live int64
	_ = s.Catalog().View(func(tx *catalog.Tx) error {
		return tx.ForEachChunk(func(_ catalog.Hash, loc catalog.Loc) error {
			live += headerSize + int64(loc.CLen)
			return nil
		})
	})
	if n := packBytes(t, dir); n != live {
		t.Fatalf("after gc the packs hold %d bytes, the catalog's chunks %d", n, live)
	}
	checkObjects("after gc")

	// The store takes the write again.
	if sc.object != "" && !objectCommitted {
		if err := sc.run(s); err != nil {
			t.Fatalf("write again: %v", err)
		}
		if got := exportObject(t, s, sc.object); !bytes.Equal(got, sc.want) {
			t.Fatalf("%s written again differs", sc.object)
		}
		mustVerify(t, s)
	}
}
