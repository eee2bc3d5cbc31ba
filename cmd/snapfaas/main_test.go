package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/vmm/kvm"
)

var bin string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	// An L1 run of this binary (internal/realkvm) uses the host's build,
	// named by SNAPFAAS_CLI_DIR, which realkvm passes on: L1 has no
	// network and building there under QEMU TCG takes minutes.
	dir := os.Getenv("SNAPFAAS_CLI_DIR")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "snapfaas-cli"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		// snapstore next to snapfaas, where run looks for it.
		if out, err := exec.Command("go", "build", "-o", dir+"/", ".", "../snapstore").CombinedOutput(); err != nil {
			os.Stderr.Write(out)
			return 1
		}
		os.Setenv("SNAPFAAS_CLI_DIR", dir)
	}
	bin = filepath.Join(dir, "snapfaas")
	return m.Run()
}

func TestVMMCommand(t *testing.T) {
	// Bad input: one clear line, no stack trace.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vmm", "--kernel", "/nonexistent"}, "no such file"},
		{[]string{"vmm", "--kernel", "/etc/hostname"}, "not an x86_64 ELF vmlinux or bzImage"},
		{[]string{"vmm", "--kernel", "/etc/hostname", "--mem_size", "4"}, "at least 16"},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "goroutine") {
			t.Errorf("%v: %v %q", tc.args, err, out)
		}
	}
	elf := testGuest(t)
	// A guest that triple-faults: the reason and registers, exit 1.
	out, err := exec.Command(bin, "vmm", "--kernel", elf, "--cmdline", "testguest.heap_mb=0 testguest.fault=triple").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "triple fault") || !strings.Contains(string(out), "rip=") {
		t.Fatalf("triple fault: %v\n%s", err, out)
	}
	// A healthy boot prints the banner on stdout; Ctrl-C stops it.
	cmd := exec.Command(bin, "vmm", "--kernel", elf, "--vcpu_count", "2", "--cmdline", "testguest.heap_mb=0")
	var so syncBuf
	cmd.Stdout, cmd.Stderr = &so, &so
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor(t, 2*time.Minute, `the guest's "ready" line`, func() bool { return strings.Contains(so.String(), "ready") }, so.String)
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if !strings.HasPrefix(so.String(), testguest.Banner) || !strings.Contains(so.String(), "interrupted") {
		t.Fatalf("boot output:\n%s", so.String())
	}
}

// TestRunSnapshotAndRestore drives SnapFaaS's singlevm flow with the test
// guest: boot and store a snapshot at its snapshot point, then restore it
// lazily through the sidecar (recording the working set), with the working
// set prefetched, and eagerly; every run answers the same requests with the
// checksums the guest's model predicts.
func TestRunSnapshotAndRestore(t *testing.T) {
	elf := testGuest(t)
	store := filepath.Join(t.TempDir(), "store")
	stopSidecarAtCleanup(t, store)
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	reqs := []testguest.Request{testguest.TouchRequest(1, 3, 4, 2, false), testguest.TouchRequest(2, 10, 2, 1, true), testguest.TouchRequest(3, 200, 8, 3, false)}
	// run feeds reqs to snapfaas run and checks its answers against the
	// model heap (a fresh one unless given: the state the snapshot holds).
	runIn := func(store string, heap *testguest.Heap, reqs []testguest.Request, args ...string) string {
		t.Helper()
		if heap == nil {
			heap = testguest.NewHeap(cfg.Seed, cfg.HeapMB)
		}
		var in strings.Builder
		var want []string
		for _, r := range reqs {
			b, _ := json.Marshal(r)
			in.Write(append(b, '\n'))
			w, _ := json.Marshal(heap.Apply(r))
			want = append(want, string(w))
		}
		cmd := exec.Command(bin, append([]string{"run", "--store", store}, args...)...)
		cmd.Stdin = strings.NewReader(in.String())
		var so, se syncBuf
		cmd.Stdout, cmd.Stderr = &so, &se
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("snapfaas run %v: %v\n%s", args, err, se.String())
			}
		case <-time.After(3 * time.Minute):
			cmd.Process.Kill()
			t.Fatalf("snapfaas run %v hung:\n%s", args, se.String())
		}
		if got := strings.Split(strings.TrimSpace(so.String()), "\n"); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("snapfaas run %v answered\n%s\nwant\n%s\nstderr:\n%s", args, so.String(), strings.Join(want, "\n"), se.String())
		}
		if !strings.Contains(se.String(), "VM ready in") {
			t.Fatalf("no timing on stderr:\n%s", se.String())
		}
		return se.String()
	}
	run := func(heap *testguest.Heap, reqs []testguest.Request, args ...string) string {
		t.Helper()
		return runIn(store, heap, reqs, args...)
	}
	run(nil, reqs, "--kernel", elf, "--mem_size", "64", "--cmdline", cfg.Cmdline(), "--dump_dir", "tg")
	// Two restores at once, with no sidecar running yet: both start one,
	// one wins the store, and both VMs are served by it.
	var in strings.Builder
	var want strings.Builder
	heap := testguest.NewHeap(cfg.Seed, cfg.HeapMB)
	for _, r := range reqs {
		b, _ := json.Marshal(r)
		in.Write(append(b, '\n'))
		w, _ := json.Marshal(heap.Apply(r))
		want.Write(append(w, '\n'))
	}
	outs := make(chan string, 2)
	for range 2 {
		go func() {
			cmd := exec.Command(bin, "run", "--store", store, "--load_dir", "tg")
			cmd.Stdin = strings.NewReader(in.String())
			var so, se syncBuf
			cmd.Stdout, cmd.Stderr = &so, &se
			if err := cmd.Run(); err != nil {
				outs <- fmt.Sprintf("%v\n%s", err, se.String())
				return
			}
			outs <- so.String()
		}()
	}
	for range 2 {
		if got := <-outs; got != want.String() {
			t.Fatalf("concurrent restore answered:\n%s\nwant:\n%s", got, want.String())
		}
	}
	// A lazy restore answers 100 requests.
	var many []testguest.Request
	for i := uint64(1); i <= 100; i++ {
		many = append(many, testguest.TouchRequest(i, (i*37)%testguest.HeapPages(cfg.HeapMB), 1+i%5, 1+i%3, i%4 == 0))
	}
	run(nil, many, "--load_dir", "tg")
	// The working set is what the restore and the first request touch
	// (200 heap pages here), not what later requests do (heap page 240).
	wsReqs := []testguest.Request{{ID: 1, Op: testguest.OpTouch, Start: 0, Count: 200, Stride: 1, Bytes: 8}, testguest.TouchRequest(2, 240, 1, 1, false)}
	if se := run(nil, wsReqs, "--load_dir", "tg", "--dump_ws"); !strings.Contains(se, "working set: ") {
		t.Fatalf("dump_ws: %s", se)
	}
	out, err := exec.Command(filepath.Join(filepath.Dir(bin), "snapstore"), "--store", store, "workingset", "get", "tg").Output()
	if err != nil {
		t.Fatalf("workingset get: %v", err)
	}
	var ws []uint32
	if err := json.Unmarshal(out, &ws); err != nil {
		t.Fatalf("workingset get: %v\n%s", err, out)
	}
	inWS := map[uint32]bool{}
	for _, p := range ws {
		inWS[p] = true
	}
	const heapBase = 0x200000 / 4096
	for p := uint32(0); p < 200; p++ {
		if !inWS[heapBase+p] {
			t.Fatalf("heap page %d is not in the working set (%d pages)", p, len(ws))
		}
	}
	if inWS[heapBase+240] {
		t.Fatalf("heap page 240, touched by the second request, is in the working set")
	}
	// Prefetched, at least 99 % of it is in before the guest touches it.
	statsPath := filepath.Join(t.TempDir(), "stats.json")
	run(nil, wsReqs, "--load_dir", "tg", "--load_ws", "--stats", statsPath)
	var st struct {
		PageServer struct {
			WorkingSet int `json:"working_set"`
			Prefetched int `json:"prefetched"`
			WSFaults   int `json:"ws_faults"`
			Faults     int `json:"faults"`
		} `json:"page_server"`
	}
	if b, err := os.ReadFile(statsPath); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("stats: %v\n%s", err, b)
	}
	ps := st.PageServer
	t.Logf("working set %d pages: %d prefetched, %d faults on working-set pages, %d faults in all", ps.WorkingSet, ps.Prefetched, ps.WSFaults, ps.Faults)
	if ps.WorkingSet != len(ws) || ps.WSFaults*100 > ps.WorkingSet || ps.Prefetched+ps.WSFaults < ps.WorkingSet*99/100 {
		t.Errorf("with the working set prefetched: %+v", ps)
	}
	run(nil, reqs, "--load_dir", "tg", "--copy_base")

	// A diff snapshot after write requests holds only the changed pages;
	// restored (lazily, or eagerly), the guest carries on from there.
	warm := []testguest.Request{testguest.TouchRequest(1, 20, 10, 3, true), testguest.TouchRequest(2, 21, 1, 1, true)}
	run(nil, warm, "--load_dir", "tg", "--dump_dir", "fn", "--diff")
	out, err = exec.Command(filepath.Join(filepath.Dir(bin), "snapstore"), "--store", store, "inspect", "--json", "fn").CombinedOutput()
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	var info struct {
		Kind       string `json:"kind"`
		Parent     string `json:"parent"`
		LayerPages int64  `json:"layer_pages"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	// 11 heap pages, the guest's stack and vsock buffers, the virtqueues.
	if info.Kind != "diff" || info.Parent != "tg" || info.LayerPages < 11 || info.LayerPages > 100 {
		t.Fatalf("diff snapshot: %+v\n%s", info, out)
	}
	after := func() *testguest.Heap {
		h := testguest.NewHeap(cfg.Seed, cfg.HeapMB)
		for _, r := range warm {
			h.Apply(r)
		}
		return h
	}
	run(after(), reqs, "--load_dir", "fn")
	// Eager: the sidecar copies every page in first; copy_diff: only the
	// diff's own (non-zero) pages.
	copied := func(args ...string) uint64 {
		t.Helper()
		p := filepath.Join(t.TempDir(), "stats.json")
		run(after(), reqs, append(args, "--stats", p)...)
		var st runStats
		if b, err := os.ReadFile(p); err != nil {
			t.Fatal(err)
		} else if err := json.Unmarshal(b, &st); err != nil || st.PageServer == nil {
			t.Fatalf("stats: %v\n%s", err, b)
		}
		return st.PageServer.Copied
	}
	if n := copied("--load_dir", "fn", "--copy_base"); n != 64<<20/4096 {
		t.Errorf("eager restore copied %d pages in, want all %d", n, 64<<20/4096)
	}
	if n := copied("--load_dir", "fn", "--copy_diff"); n == 0 || int64(n) > info.LayerPages {
		t.Errorf("copy_diff copied %d pages in; the diff has %d", n, info.LayerPages)
	}

	// The diff snapshot exported to a directory (parents resolved) and
	// imported into another store restores there, lazily and eagerly, into
	// a VM that carries on from the warmed-up state.
	dir := filepath.Join(t.TempDir(), "fn-export")
	if out, err := exec.Command(bin, "snapshot", "export", "--store", store, "fn", dir).CombinedOutput(); err != nil {
		t.Fatalf("snapshot export: %v\n%s", err, out)
	}
	store2 := filepath.Join(t.TempDir(), "store2")
	stopSidecarAtCleanup(t, store2)
	if out, err := exec.Command(bin, "snapshot", "import", "--store", store2, dir, "fn-copy").CombinedOutput(); err != nil {
		t.Fatalf("snapshot import: %v\n%s", err, out)
	}
	runIn(store2, after(), reqs, "--load_dir", "fn-copy")
	runIn(store2, after(), reqs, "--load_dir", "fn-copy", "--copy_base")
}

// TestRunFailsClearly: a lazily restored VM whose sidecar is killed makes
// snapfaas run exit with an error within seconds, and a snapshot with
// corrupt chunks fails to restore (lazily or eagerly) with an error that
// says so, not a hung or wrong VM.
func TestRunFailsClearly(t *testing.T) {
	elf := testGuest(t)
	store := filepath.Join(t.TempDir(), "store")
	stopSidecarAtCleanup(t, store)
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	req := func(id, start uint64) string {
		b, _ := json.Marshal(testguest.TouchRequest(id, start, 1, 1, false))
		return string(b) + "\n"
	}
	boot := exec.Command(bin, "run", "--store", store, "--kernel", elf, "--mem_size", "64", "--cmdline", cfg.Cmdline(), "--dump_dir", "tg")
	boot.Stdin = strings.NewReader(req(1, 0))
	if out, err := boot.CombinedOutput(); err != nil {
		t.Fatalf("boot: %v\n%s", err, out)
	}

	// Kill the sidecar while the restored VM waits for its next request.
	cmd := exec.Command(bin, "run", "--store", store, "--load_dir", "tg")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var se syncBuf
	cmd.Stderr = &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	io.WriteString(stdin, req(1, 0))
	line := make([]byte, 256)
	if n, err := stdout.Read(line); err != nil || !strings.Contains(string(line[:n]), "checksum") {
		t.Fatalf("first response: %q %v\n%s", line[:n], err, se.String())
	}
	pid := pageserver.SidecarPid(store)
	if pid <= 0 {
		t.Fatal("no sidecar pid in the store's LOCK")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	killed := time.Now()
	io.WriteString(stdin, req(2, 200)) // pages the guest has not touched yet
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(se.String(), "page server") || strings.Contains(se.String(), "goroutine ") {
			t.Fatalf("after the sidecar died: %v\n%s", err, se.String())
		}
		t.Logf("exited %s after the sidecar was killed: %s", time.Since(killed).Round(time.Millisecond), lastLine(se.String()))
	case <-time.After(15 * time.Second):
		t.Fatalf("snapfaas run still running 15s after the sidecar died:\n%s", se.String())
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("the killed sidecar (pid %d) to be gone", pid), func() bool {
		return pageserver.SidecarPid(store) != pid || syscall.Kill(pid, 0) != nil
	}, nil)

	// Corrupt every pack: flip a byte in each 4 KiB.
	packs, _ := filepath.Glob(filepath.Join(store, "chunks", "*"))
	if len(packs) == 0 {
		t.Fatal("no packs in the store")
	}
	for _, p := range packs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i := 100; i < len(b); i += 4096 {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"--load_dir", "tg"}, {"--load_dir", "tg", "--copy_base"}} {
		cmd := exec.Command(bin, append([]string{"run", "--store", store}, args...)...)
		cmd.Stdin = strings.NewReader(req(1, 0))
		var out syncBuf
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Start()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(out.String(), "corrupt") || strings.Contains(out.String(), `"checksum":`) || strings.Contains(out.String(), "goroutine ") {
				t.Fatalf("run %v on a corrupt store: %v\n%s", args, err, out.String())
			}
			t.Logf("run %v: %s", args, lastLine(out.String()))
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			t.Fatalf("run %v on a corrupt store hung:\n%s", args, out.String())
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}

// testGuest builds the test guest, skipping the test (with the reason)
// without KVM or a C compiler.
func testGuest(t *testing.T) string {
	t.Helper()
	if s, err := kvm.Open(); err != nil {
		t.Skipf("no KVM: %v", err)
	} else {
		s.Close()
	}
	elf, err := testguest.Build(filepath.Join(os.TempDir(), "snapfaas-testguest"))
	if errors.Is(err, testguest.ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return elf
}
