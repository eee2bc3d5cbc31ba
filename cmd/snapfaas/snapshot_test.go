package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// snapshotFixture is a store holding, without KVM: "base" (8 MiB of random
// and zero pages, with a fake VM state), "fn" (a diff snapshot on top of
// it with its own VM state and a working set) and "novs" (memory alone).
type snapshotFixture struct {
	t                *testing.T
	store, work      string
	baseMem, fnMem   []byte
	baseVS, fnVS     []byte
	ws               []uint32
	snapstoreBinPath string
}

func newSnapshotFixture(t *testing.T) *snapshotFixture {
	t.Helper()
	f := &snapshotFixture{t: t, work: t.TempDir(), snapstoreBinPath: filepath.Join(filepath.Dir(bin), "snapstore")}
	f.store = filepath.Join(f.work, "store")
	rng := rand.New(rand.NewSource(1))
	const pages = 2048
	f.baseMem = make([]byte, pages*4096)
	// Runs of 32 pages, as guest memory tends to come (and few holes: on
	// some file systems removing a file costs time per extent), and a few
	// lone zero pages.
	for p := 0; p < pages; p++ {
		switch {
		case p%97 == 50: // zero
		case (p/32)%4 == 0 || (p/32)%4 == 3: // random
			rng.Read(f.baseMem[p*4096 : (p+1)*4096])
		case (p/32)%4 == 2: // a repeated pattern
			copy(f.baseMem[p*4096:], bytes.Repeat([]byte("snapfaas"), 512))
		}
	}
	f.fnMem = append([]byte(nil), f.baseMem...)
	for _, p := range []int{2, 3, 700, 2047} {
		rng.Read(f.fnMem[p*4096 : (p+1)*4096])
	}
	clear(f.fnMem[5*4096 : 6*4096]) // a page that becomes zero
	f.baseVS = []byte(`{"version":1,"vcpus":[{"rip":4096,"rsp":8192}],"devices":[]}`)
	f.fnVS = []byte(`{"version":1,"vcpus":[{"rip":12288,"rsp":8192}],"devices":["vsock"]}`)
	f.ws = []uint32{700, 3, 2047, 0, 1, 2}

	f.write("base.mem", f.baseMem)
	f.write("fn.mem", f.fnMem)
	f.write("base.vs", f.baseVS)
	f.write("fn.vs", f.fnVS)
	f.write("ws.json", mustJSON(t, f.ws))
	f.snapstore("memory", "import", "--vmstate", f.path("base.vs"), "base", f.path("base.mem"))
	f.snapstore("memory", "import", "--vmstate", f.path("fn.vs"), "--parent", "base", "fn", f.path("fn.mem"))
	f.snapstore("workingset", "set", "fn", f.path("ws.json"))
	f.snapstore("memory", "import", "novs", f.path("base.mem"))
	return f
}

func (f *snapshotFixture) path(name string) string { return filepath.Join(f.work, name) }

func (f *snapshotFixture) write(name string, b []byte) {
	f.t.Helper()
	if err := os.WriteFile(f.path(name), b, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *snapshotFixture) read(name string) []byte {
	f.t.Helper()
	b, err := os.ReadFile(f.path(name))
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// snapstore runs a snapstore command on the fixture's store and returns
// its standard output.
func (f *snapshotFixture) snapstore(args ...string) []byte {
	f.t.Helper()
	cmd := exec.Command(f.snapstoreBinPath, append([]string{"--store", f.store, "-q"}, args...)...)
	var se bytes.Buffer
	cmd.Stderr = &se
	out, err := cmd.Output()
	if err != nil {
		f.t.Fatalf("snapstore %v: %v\n%s", args, err, se.String())
	}
	return out
}

func (f *snapshotFixture) inspect(name string) snapshotInfo {
	f.t.Helper()
	var info snapshotInfo
	if err := json.Unmarshal(f.snapstore("inspect", "--json", name), &info); err != nil {
		f.t.Fatal(err)
	}
	return info
}

func (f *snapshotFixture) workingSet(name string) []uint32 {
	f.t.Helper()
	var ws []uint32
	if err := json.Unmarshal(f.snapstore("workingset", "get", name), &ws); err != nil {
		f.t.Fatal(err)
	}
	return ws
}

// snapfaas runs `snapfaas snapshot ARGS --store STORE` (from the work
// directory, so that relative paths are under it) and returns its exit
// code and combined output.
func (f *snapshotFixture) snapfaas(args ...string) (int, string) {
	f.t.Helper()
	full := append([]string{"snapshot"}, args[0], "--store", f.store)
	cmd := exec.Command(bin, append(full, args[1:]...)...)
	cmd.Dir = f.work
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		f.t.Fatal(err)
	}
	if strings.Contains(string(out), "goroutine") || strings.Contains(string(out), "panic") {
		f.t.Fatalf("snapfaas snapshot %v panicked:\n%s", args, out)
	}
	return code, string(out)
}

// mustFail runs snapfaas and checks that it fails with exit code code and
// one error line containing want.
func (f *snapshotFixture) mustFail(code int, want string, args ...string) {
	f.t.Helper()
	got, out := f.snapfaas(args...)
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "snapfaas: ") {
			errLines = append(errLines, l)
		}
	}
	if got != code || len(errLines) != 1 || !strings.Contains(errLines[0], want) {
		f.t.Fatalf("snapfaas snapshot %v: exit %d, want %d with one error line containing %q:\n%s", args, got, code, want, out)
	}
}

func (f *snapshotFixture) mustRun(args ...string) string {
	f.t.Helper()
	code, out := f.snapfaas(args...)
	if code != 0 {
		f.t.Fatalf("snapfaas snapshot %v: exit %d\n%s", args, code, out)
	}
	return out
}

func (f *snapshotFixture) manifest(dir string) snapshotManifest {
	f.t.Helper()
	var m snapshotManifest
	if err := json.Unmarshal(f.read(filepath.Join(dir, manifestFile)), &m); err != nil {
		f.t.Fatal(err)
	}
	return m
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// holesWork reports whether the file system under dir keeps holes.
func holesWork(t *testing.T, dir string) bool {
	p := filepath.Join(dir, "hole-probe")
	defer os.Remove(p)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	return diskUsage(st) < 1<<20
}

// TestSnapshotExportImport round-trips a diff snapshot with VM state and a
// working set through a directory: export, check the files, import under a
// new name (a base snapshot), export again and compare.
func TestSnapshotExportImport(t *testing.T) {
	f := newSnapshotFixture(t)
	out := f.mustRun("export", "fn", "d1")
	if !strings.Contains(out, "exporting snapshot") || !strings.Contains(out, `exported snapshot "fn" to d1`) {
		t.Errorf("export output:\n%s", out)
	}
	if got := f.read("d1/memory"); !bytes.Equal(got, f.fnMem) {
		t.Fatal("d1/memory differs from the memory imported as fn (parents resolved)")
	}
	if got := f.read("d1/vmstate.json"); !bytes.Equal(got, f.fnVS) {
		t.Fatalf("d1/vmstate.json = %q, want %q", got, f.fnVS)
	}
	if holesWork(t, f.work) {
		st, _ := os.Stat(f.path("d1/memory"))
		if du := diskUsage(st); du >= st.Size() {
			t.Errorf("d1/memory is not sparse: %d bytes on disk of %d", du, st.Size())
		}
	}
	m := f.manifest("d1")
	fnInfo := f.inspect("fn")
	want := snapshotManifest{Version: 1, Name: "fn", Kind: "diff", Parent: "base", Created: fnInfo.Created, Exported: m.Exported,
		MemorySize: int64(len(f.fnMem)), MemorySHA256: sha(f.fnMem), VMStateSize: int64(len(f.fnVS)), VMStateSHA256: sha(f.fnVS), WorkingSet: f.ws}
	if !m.Created.Equal(want.Created) || m.Exported.IsZero() {
		t.Errorf("manifest times: created %v (want %v), exported %v", m.Created, want.Created, m.Exported)
	}
	m.Created = want.Created
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("manifest\n%+v\nwant\n%+v", m, want)
	}
	// No temporary directories left next to DIR.
	if left, _ := filepath.Glob(f.path("d1.*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	out = f.mustRun("import", "d1", "copy")
	if !strings.Contains(out, `imported snapshot "copy" from d1`) {
		t.Errorf("import output:\n%s", out)
	}
	if info := f.inspect("copy"); info.Kind != "base" || info.Parent != "" || info.WorkingSetPages != len(f.ws) || info.LogicalBytes != int64(len(f.fnMem)) {
		t.Fatalf("imported snapshot: %+v", info)
	}
	if ws := f.workingSet("copy"); !reflect.DeepEqual(ws, f.ws) {
		t.Fatalf("imported working set %v, want %v", ws, f.ws)
	}
	f.snapstore("memory", "vmstate", "copy", f.path("copy.vs"))
	if got := f.read("copy.vs"); !bytes.Equal(got, f.fnVS) {
		t.Fatalf("imported VM state %q, want %q", got, f.fnVS)
	}

	// Exported again: the same bytes, and a base snapshot now.
	f.mustRun("export", "-q", "copy", "d2")
	for _, name := range []string{memoryFile, vmstateFile} {
		if !bytes.Equal(f.read("d1/"+name), f.read("d2/"+name)) {
			t.Errorf("%s differs between the export of fn and of its import", name)
		}
	}
	m2 := f.manifest("d2")
	if m2.Name != "copy" || m2.Kind != "base" || m2.Parent != "" || m2.MemorySHA256 != m.MemorySHA256 || m2.VMStateSHA256 != m.VMStateSHA256 || !reflect.DeepEqual(m2.WorkingSet, f.ws) {
		t.Fatalf("manifest of the re-export: %+v", m2)
	}

	// A snapshot with neither VM state nor working set; exported into an
	// empty directory that exists already.
	if err := os.Mkdir(f.path("d3"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.mustRun("export", "novs", "d3")
	if _, err := os.Stat(f.path("d3/vmstate.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("d3/vmstate.json: %v, want none", err)
	}
	m3 := f.manifest("d3")
	if m3.Kind != "base" || m3.VMStateSHA256 != "" || m3.VMStateSize != 0 || m3.WorkingSet != nil || m3.MemorySHA256 != sha(f.baseMem) {
		t.Fatalf("manifest of novs: %+v", m3)
	}
	if raw := string(f.read("d3/snapshot.json")); strings.Contains(raw, "vmstate") || strings.Contains(raw, "working_set") {
		t.Errorf("manifest of novs names what it lacks:\n%s", raw)
	}
	f.mustRun("import", "d3", "novs2")
	if info := f.inspect("novs2"); info.WorkingSetPages != 0 || info.LogicalBytes != int64(len(f.baseMem)) {
		t.Fatalf("novs2: %+v", info)
	}
	f.mustRun("export", "novs2", "d4")
	if !bytes.Equal(f.read("d4/memory"), f.baseMem) {
		t.Fatal("d4/memory differs from base's memory")
	}
}

func TestSnapshotExportErrors(t *testing.T) {
	f := newSnapshotFixture(t)
	f.mustFail(2, "needs NAME DIR", "export", "fn")
	if out, err := exec.Command(bin, "snapshot", "bogus").CombinedOutput(); err == nil || !strings.Contains(string(out), "use export or import") {
		t.Errorf("snapshot bogus: %v %s", err, out)
	}
	f.mustFail(1, `"nope": no such image or snapshot`, "export", "nope", "d")
	if _, err := os.Stat(f.path("d")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed export left d: %v", err)
	}
	f.mustFail(1, "no such directory to create", "export", "fn", "missing/d")
	f.write("afile", []byte("x"))
	f.mustFail(1, "afile exists and is not a directory", "export", "fn", "afile")
	f.mustFail(1, "afile exists and is not a directory", "export", "--force", "fn", "afile")
	f.mustFail(1, "--snapstore", "export", "--snapstore", f.path("nobin"), "fn", "d")
	f.mustFail(1, "no store here", "export", "--store", f.path("nostore"), "fn", "d")

	// A failure half way (here: the VM state) leaves nothing behind.
	script := "#!/bin/sh\ncase \"$*\" in *\"memory vmstate\"*) echo 'snapstore: memory vmstate: boom' >&2; exit 1;; esac\nexec " + f.snapstoreBinPath + " \"$@\"\n"
	if err := os.WriteFile(f.path("failing-snapstore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f.mustFail(1, "snapshot export: snapstore: memory vmstate: boom", "export", "--snapstore", f.path("failing-snapstore"), "fn", "d")
	if left, _ := filepath.Glob(f.path("d*")); len(left) > 0 {
		t.Errorf("a failed export left %v", left)
	}

	// An existing non-empty directory is kept, unless --force.
	if err := os.Mkdir(f.path("full"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.write("full/keep", []byte("mine"))
	f.mustFail(1, "full exists and is not empty (use --force", "export", "fn", "full")
	if string(f.read("full/keep")) != "mine" {
		t.Fatal("a refused export changed the directory")
	}
	f.mustRun("export", "--force", "fn", "full")
	if _, err := os.Stat(f.path("full/keep")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--force kept the old contents: %v", err)
	}
	if !bytes.Equal(f.read("full/memory"), f.fnMem) || f.manifest("full").Name != "fn" {
		t.Fatal("--force export: wrong contents")
	}
	if left, _ := filepath.Glob(f.path("full.*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestSnapshotImportErrors(t *testing.T) {
	f := newSnapshotFixture(t)
	f.mustRun("export", "-q", "fn", "good")
	// clone copies the good export into a new directory to damage.
	clone := func(dir string) {
		t.Helper()
		if err := os.Mkdir(f.path(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{memoryFile, vmstateFile, manifestFile} {
			f.write(dir+"/"+n, f.read("good/"+n))
		}
	}
	// ls lists the store's objects (not its chunk counts: a rolled-back
	// import leaves chunks for gc).
	ls := func() string {
		out := strings.TrimSpace(string(f.snapstore("ls")))
		return out[:strings.LastIndexByte(out, '\n')]
	}
	before := ls()

	f.mustFail(2, "needs DIR NAME", "import", "good")
	f.mustFail(2, "invalid name", "import", "good", "bad/name")
	f.mustFail(1, "already exists in the store", "import", "good", "fn")
	f.mustFail(1, "nodir: no such directory", "import", "nodir", "x")

	clone("tampered")
	mem := f.read("tampered/memory")
	mem[4096*700+17] ^= 1
	f.write("tampered/memory", mem)
	f.mustFail(1, "tampered/memory: SHA-256 mismatch", "import", "tampered", "x")

	clone("badvs")
	f.write("badvs/vmstate.json", bytes.Replace(f.fnVS, []byte("12288"), []byte("12289"), 1))
	f.mustFail(1, "badvs/vmstate.json: SHA-256 mismatch", "import", "badvs", "x")

	clone("novs")
	os.Remove(f.path("novs/vmstate.json"))
	f.mustFail(1, "novs/vmstate.json is missing", "import", "novs", "x")

	clone("short")
	f.write("short/memory", f.fnMem[:len(f.fnMem)-4096])
	f.mustFail(1, "short/memory: 8384512 bytes, the manifest says 8388608", "import", "short", "x")

	clone("nomanifest")
	os.Remove(f.path("nomanifest/snapshot.json"))
	f.mustFail(1, "nomanifest has no snapshot.json", "import", "nomanifest", "x")

	clone("v2")
	f.write("v2/snapshot.json", bytes.Replace(f.read("good/snapshot.json"), []byte(`"version": 1`), []byte(`"version": 2`), 1))
	f.mustFail(1, "format version 2, this snapfaas reads version 1", "import", "v2", "x")

	clone("garbled")
	f.write("garbled/snapshot.json", []byte("{not json"))
	f.mustFail(1, "garbled/snapshot.json: not a valid manifest", "import", "garbled", "x")

	clone("wsrange")
	var m map[string]any
	if err := json.Unmarshal(f.read("good/snapshot.json"), &m); err != nil {
		t.Fatal(err)
	}
	m["working_set"] = []int{1, 2048}
	f.write("wsrange/snapshot.json", mustJSON(t, m))
	f.mustFail(1, "working-set page 2048 beyond memory", "import", "wsrange", "x")

	// The working set cannot be stored: the imported snapshot goes again.
	script := "#!/bin/sh\ncase \"$*\" in *\"workingset set\"*) echo 'snapstore: workingset set: boom' >&2; exit 1;; esac\nexec " + f.snapstoreBinPath + " \"$@\"\n"
	if err := os.WriteFile(f.path("failing-snapstore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f.mustFail(1, `workingset set: boom; "x" was removed again`, "import", "--snapstore", f.path("failing-snapstore"), "good", "x")

	if after := ls(); after != before {
		t.Fatalf("failed imports changed the store:\n%s\nwas\n%s", after, before)
	}
	// The store's own check of working sets (snapstore workingset set).
	f.write("ws-bad.json", []byte("[0, 99999]"))
	cmd := exec.Command(f.snapstoreBinPath, "--store", f.store, "workingset", "set", "fn", f.path("ws-bad.json"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "beyond memory") {
		t.Fatalf("workingset set out of range: %v %s", err, out)
	}
	if ws := f.workingSet("fn"); !reflect.DeepEqual(ws, f.ws) {
		t.Fatalf("a refused workingset set changed it: %v", ws)
	}
}
