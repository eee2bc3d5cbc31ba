package main

import (
	"bytes"
	"encoding/json"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/pagestore"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "snapstore-test")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "snapstore")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, store string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--store", store}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic:") {
		t.Fatalf("snapstore %v crashed:\n%s", args, r.stderr)
	}
	return r
}

func ok(t *testing.T, store string, args ...string) string {
	t.Helper()
	r := run(t, store, args...)
	if r.code != 0 {
		t.Fatalf("snapstore %v: exit %d\n%s", args, r.code, r.stderr)
	}
	return r.stdout
}

// fails runs a command that must fail with one clear line containing want.
func fails(t *testing.T, store, want string, args ...string) {
	t.Helper()
	r := run(t, store, args...)
	if r.code == 0 {
		t.Fatalf("snapstore %v succeeded, want failure %q", args, want)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "snapstore: ") || !strings.Contains(last, want) {
		t.Fatalf("snapstore %v: stderr %q, want one line containing %q", args, r.stderr, want)
	}
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// syncBuf collects a running snapstore's stderr; the test reads it while
// the process writes and can wait for a line.
type syncBuf = testutil.Buffer

// daemon is a snapstore process that runs until signalled (serve, mount).
type daemon struct {
	cmd    *exec.Cmd
	stderr *syncBuf
	exited chan error // Wait's result
	done   bool       // exited was received
}

// startDaemon starts snapstore with args. The test's cleanup kills it if
// it still runs.
func startDaemon(t *testing.T, store string, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(bin, append([]string{"--store", store}, args...)...), stderr: &syncBuf{}, exited: make(chan error, 1)}
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.done {
			return
		}
		// Let it unmount and remove its socket, then insist.
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	return d
}

// waitLog waits until the daemon has logged want, failing if it exits
// first or after timeout.
func (d *daemon) waitLog(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for !strings.Contains(d.stderr.String(), want) {
		select {
		case <-d.stderr.Written():
		case err := <-d.exited:
			d.done = true
			t.Fatalf("snapstore %v exited (%v) before logging %q:\n%s", d.cmd.Args[1:], err, want, d.stderr.String())
		case <-tm.C:
			t.Fatalf("waited %s for snapstore %v to log %q:\n%s", timeout, d.cmd.Args[1:], want, d.stderr.String())
		}
	}
}

// logLine waits for a line of the daemon's log containing msg and returns
// it.
func (d *daemon) logLine(t *testing.T, msg string, timeout time.Duration) string {
	t.Helper()
	d.waitLog(t, msg, timeout)
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if strings.Contains(l, msg) {
			return l
		}
	}
	panic("unreachable: waitLog saw " + msg)
}

// stop sends sig and waits for a clean exit.
func (d *daemon) stop(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		d.done = true
		if err != nil {
			t.Fatalf("snapstore %v after %v: %v\n%s", d.cmd.Args[1:], sig, err, d.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("snapstore %v did not stop within 10s of %v:\n%s", d.cmd.Args[1:], sig, d.stderr.String())
	}
}

func TestRoundTripsAndListing(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	mem := corpus.Generate(1, 2<<20)
	img := append(corpus.Generate(2, 1<<20), 'x')
	memFile, imgFile := writeTemp(t, "mem.raw", mem), writeTemp(t, "rootfs.ext4", img)

	ok(t, store, "memory", "import", "base", memFile)
	mod := bytes.Clone(mem)
	copy(mod[8192:], "changed page")
	ok(t, store, "memory", "import", "--parent", "base", "fn", writeTemp(t, "mod.raw", mod))
	ok(t, store, "image", "import", "--chunk-size", "16K", "rootfs", imgFile)

	out := filepath.Join(t.TempDir(), "out")
	for _, tc := range []struct {
		kind, name string
		want       []byte
	}{{"memory", "base", mem}, {"memory", "fn", mod}, {"image", "rootfs", img}} {
		p := out + tc.name
		ok(t, store, tc.kind, "export", tc.name, p)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Fatalf("%s %s: export differs", tc.kind, tc.name)
		}
	}

	var list []pagestore.ObjectInfo
	if err := json.Unmarshal([]byte(ok(t, store, "ls", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("ls: %d objects", len(list))
	}
	var info pagestore.ObjectInfo
	if err := json.Unmarshal([]byte(ok(t, store, "inspect", "--json", "fn")), &info); err != nil {
		t.Fatal(err)
	}
	if info.Kind != "diff" || info.Parent != "base" || info.LayerPages != 1 || info.LogicalBytes != int64(len(mem)) {
		t.Fatalf("inspect fn: %+v", info)
	}
	if text := ok(t, store, "inspect", "base"); !strings.Contains(text, "compression ratio") {
		t.Fatalf("inspect text: %s", text)
	}
	if text := ok(t, store, "verify"); !strings.Contains(text, "OK") {
		t.Fatalf("verify: %s", text)
	}
	ok(t, store, "rm", "rootfs")
	if text := ok(t, store, "gc"); !strings.Contains(text, "removed") {
		t.Fatalf("gc: %s", text)
	}
	ok(t, store, "verify")
}

func TestClearErrors(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	memFile := writeTemp(t, "mem.raw", corpus.Generate(3, 1<<20))
	fails(t, store, "no store here", "ls")
	fails(t, store, "no such file", "memory", "import", "m", "/nonexistent/mem.raw")
	fails(t, store, "not a positive multiple of 4 KiB", "memory", "import", "m", writeTemp(t, "odd", make([]byte, 5000)))
	ok(t, store, "memory", "import", "m", memFile)
	fails(t, store, "already exists", "memory", "import", "m", memFile)
	fails(t, store, "already exists", "image", "import", "m", memFile)
	fails(t, store, "no such image or snapshot", "inspect", "nope")
	fails(t, store, "no such image or snapshot", "rm", "nope")
	fails(t, store, "no such image or snapshot", "memory", "import", "--parent", "nope", "d", memFile)
	fails(t, store, "invalid name", "image", "import", "a/b", memFile)
	fails(t, store, "exists (use --force", "memory", "export", "m", memFile)
	if r := run(t, store, "image", "import", "onlyname"); r.code != 2 || !strings.Contains(r.stderr, "needs NAME FILE") {
		t.Fatalf("usage error: exit %d, %q", r.code, r.stderr)
	}

	// A store held by another process.
	s, err := pagestore.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	fails(t, store, "is locked by pid", "ls")
	fails(t, store, "is locked by pid", "memory", "import", "m2", memFile)
	s.Close()

	// A corrupt catalog.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "catalog.db"), bytes.Repeat([]byte("garbage!"), 1024), 0o644); err != nil {
		t.Fatal(err)
	}
	fails(t, bad, "corrupt", "ls")
}

func TestVerifyReportsCorruptChunk(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	ok(t, store, "memory", "import", "m", writeTemp(t, "mem.raw", corpus.Generate(4, 1<<20)))
	packs, _ := filepath.Glob(filepath.Join(store, "chunks", "pack-*"))
	raw, err := os.ReadFile(packs[0])
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/3] ^= 1
	if err := os.WriteFile(packs[0], raw, 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, store, "verify")
	if r.code != 1 || !strings.Contains(r.stdout, "CORRUPT chunk") || !strings.Contains(r.stderr, "store is corrupt") {
		t.Fatalf("verify on a flipped byte: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	fails(t, store, "checksum mismatch", "memory", "export", "m", filepath.Join(t.TempDir(), "out"))
}

func TestServeStartsAndStops(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	ok(t, store, "memory", "import", "m", writeTemp(t, "mem.raw", corpus.Generate(6, 1<<20)))
	fails(t, store, "no such image or snapshot", "serve", "--socket", filepath.Join(dir, "s.sock"), "--firecracker", filepath.Join(dir, "fc.sock")+"=nope")
	fails(t, store, "want PATH=SNAPSHOT", "serve", "--firecracker", "nonsense")

	sock := filepath.Join(dir, "s.sock")
	cmd := exec.Command(bin, "--store", store, "serve", "--socket", sock, "--firecracker", filepath.Join(dir, "fc.sock")+"=m")
	se := &syncBuf{} // read while serve writes
	cmd.Stderr = se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for serve to listen on %s: %s", sock, se.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The sidecar owns the store; a second one is refused with who holds it.
	fails(t, store, "locked by pid", "serve", "--socket", filepath.Join(dir, "other.sock"))
	// Other commands run inside the sidecar, relative paths included.
	mem2 := corpus.Generate(7, 1<<20)
	if err := os.WriteFile(filepath.Join(dir, "rel.raw"), mem2, 0o644); err != nil {
		t.Fatal(err)
	}
	imp := exec.Command(bin, "--store", store, "memory", "import", "m2", "rel.raw")
	imp.Dir = dir
	if out, err := imp.CombinedOutput(); err != nil || !strings.Contains(string(out), `imported snapshot "m2"`) {
		t.Fatalf("import through the sidecar: %v: %s", err, out)
	}
	if out := ok(t, store, "ls"); !strings.Contains(out, "m2") {
		t.Fatalf("ls through the sidecar: %s", out)
	}
	exported := filepath.Join(dir, "m2.out")
	ok(t, store, "memory", "export", "m2", exported)
	if got, _ := os.ReadFile(exported); !bytes.Equal(got, mem2) {
		t.Fatal("export through the sidecar differs")
	}
	fails(t, store, "no such image or snapshot", "inspect", "nope")
	fails(t, store, "serve --mount", "mount", dir)
	ok(t, store, "verify")
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve exited with %v: %s", err, se.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("socket left behind")
	}
	ok(t, store, "ls")
}
