package pageserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/pagestore"
	"github.com/snapfaas/snapfaas/uffd"
)

// childSpec tells a client child process what to do.
type childSpec struct {
	Socket       string
	Snapshot     string
	Size         int64
	Firecracker  bool
	Prefetch     bool
	Record       bool
	FaultAround  bool
	SplitRegions bool    // two regions, mapped in reverse order
	Touch        []int64 // pages in order; nil: every page
	WaitPrefetch bool    // wait until prefetch is done before touching
	// HoldAfter > 0: after touching that many pages, print "HOLDING" to
	// stderr and wait for a line (or EOF) on stdin before going on.
	HoldAfter int
	Bye       bool
}

// childResult is what a child prints.
type childResult struct {
	Sum     string  `json:"sum"` // sha256 over the touched pages in order
	Metrics Metrics `json:"metrics"`
}

const childEnv = "PAGESERVER_TEST_CHILD"
const sidecarEnv = "PAGESERVER_TEST_SIDECAR"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		runChild(spec)
		return
	}
	if spec := os.Getenv(sidecarEnv); spec != "" {
		runSidecar(spec)
		return
	}
	os.Exit(m.Run())
}

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "child: "+format+"\n", a...)
	os.Exit(2)
}

// runChild plays a VMM: guest memory is an anonymous mapping registered
// with a uffd that the sidecar serves.
func runChild(specJSON string) {
	var spec childSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		die("spec: %v", err)
	}
	// A goroutine blocked in a page fault cannot be stopped for GC.
	debug.SetGCPercent(-1)
	runtime.GOMAXPROCS(4)
	u, err := uffd.New()
	if err != nil {
		die("uffd: %v", err)
	}
	half := spec.Size / 2 / pageSize * pageSize
	type mapping struct {
		mem []byte
		off int64
	}
	var maps []mapping
	if spec.SplitRegions {
		hi, err1 := unix.Mmap(-1, 0, int(spec.Size-half), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		lo, err2 := unix.Mmap(-1, 0, int(half), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err1 != nil || err2 != nil {
			die("mmap: %v %v", err1, err2)
		}
		maps = []mapping{{hi, half}, {lo, 0}}
	} else {
		m, err := unix.Mmap(-1, 0, int(spec.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			die("mmap: %v", err)
		}
		maps = []mapping{{m, 0}}
	}
	var regions []uffd.Region
	for _, m := range maps {
		addr := uintptr(unsafe.Pointer(&m.mem[0]))
		if _, err := u.Register(addr, uintptr(len(m.mem)), uffd.ModeMissing); err != nil {
			die("register: %v", err)
		}
		regions = append(regions, uffd.Region{BaseHostVirtAddr: uint64(addr), Size: uint64(len(m.mem)), Offset: uint64(m.off), PageSize: pageSize})
	}
	page := func(p int64) []byte {
		for _, m := range maps {
			if p*pageSize >= m.off && p*pageSize < m.off+int64(len(m.mem)) {
				o := p*pageSize - m.off
				return m.mem[o : o+pageSize]
			}
		}
		die("page %d outside memory", p)
		return nil
	}

	var client *Client
	if spec.Firecracker {
		conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: spec.Socket, Net: "unix"})
		if err != nil {
			die("dial: %v", err)
		}
		if err := uffd.Send(conn, u.Fd(), regions); err != nil {
			die("send: %v", err)
		}
		defer conn.Close()
	} else {
		client, _, err = Connect(spec.Socket, u.Fd(), Handoff{Snapshot: spec.Snapshot, Regions: regions,
			Prefetch: spec.Prefetch, Record: spec.Record, FaultAround: spec.FaultAround, Client: "child"})
		if err != nil {
			die("connect: %v", err)
		}
		go func() {
			<-client.Lost()
			fmt.Fprintln(os.Stderr, "child: page server lost; stopping")
			os.Exit(3)
		}()
		if spec.WaitPrefetch {
			deadline := time.Now().Add(20 * time.Second)
			for {
				m, err := client.Metrics()
				if err != nil {
					die("metrics: %v", err)
				}
				if m.PrefetchDone > 0 || m.WorkingSet == 0 {
					break
				}
				if time.Now().After(deadline) {
					die("waited 20s for the prefetch to finish; metrics: %+v", m)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
	}
	touch := spec.Touch
	if touch == nil {
		for p := int64(0); p < spec.Size/pageSize; p++ {
			touch = append(touch, p)
		}
	}
	h := sha256.New()
	for i, p := range touch {
		if spec.HoldAfter > 0 && i == spec.HoldAfter {
			fmt.Fprintln(os.Stderr, "HOLDING")
			bufio.NewReader(os.Stdin).ReadString('\n')
		}
		h.Write(page(p)) // faults on first touch
	}
	res := childResult{Sum: hex.EncodeToString(h.Sum(nil))}
	if client != nil && spec.Bye {
		if res.Metrics, err = client.Close(); err != nil {
			die("bye: %v", err)
		}
	}
	json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

// runSidecar serves a store on a socket until killed.
func runSidecar(spec string) {
	dir, sock, _ := strings.Cut(spec, "|")
	s, err := pagestore.Open(dir)
	if err != nil {
		die("store: %v", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		die("listen: %v", err)
	}
	fmt.Println("READY")
	New(s, slog.New(slog.NewTextHandler(io.Discard, nil))).Serve(context.Background(), ln, "")
}

// syncBuf collects a child's stderr; the test reads it while the child
// runs and can wait for a line.
type syncBuf = testutil.Buffer

// waitFor waits until the child has printed want, failing after timeout.
func waitFor(t *testing.T, s *syncBuf, want string, timeout time.Duration) {
	t.Helper()
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for !strings.Contains(s.String(), want) {
		select {
		case <-s.Written():
		case <-tm.C:
			t.Fatalf("waited %s for the child to print %q; its stderr: %q", timeout, want, s.String())
		}
	}
}

// childProc is a running client child.
type childProc struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	errb   *syncBuf
	stdin  io.WriteCloser
	exited chan error // Wait's result, once
}

// startChild starts a client child; the test's cleanup kills it if the test
// did not wait for it. Its stdin stays open until release (see
// childSpec.HoldAfter).
func startChild(t *testing.T, spec childSpec) *childProc {
	t.Helper()
	b, _ := json.Marshal(spec)
	c := &childProc{cmd: exec.Command(os.Args[0]), errb: &syncBuf{}, exited: make(chan error, 1)}
	c.cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	c.cmd.Stdout, c.cmd.Stderr = &c.out, c.errb
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.stdin.Close()
	})
	return c
}

// release lets a child waiting in HoldAfter go on. A child that exited
// meanwhile (EPIPE, or the pipe already closed by Wait) is left to wait to
// report.
func (c *childProc) release(t *testing.T) {
	t.Helper()
	if _, err := c.stdin.Write([]byte("go\n")); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, os.ErrClosed) {
		t.Fatalf("releasing the child: %v", err)
	}
}

// wait waits for the child to exit and returns what it printed.
func (c *childProc) wait(t *testing.T, timeout time.Duration) (childResult, error) {
	t.Helper()
	select {
	case err := <-c.exited:
		if err != nil {
			return childResult{}, fmt.Errorf("child: %v: %s", err, c.errb.String())
		}
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		<-c.exited
		t.Fatalf("child hung for %s: %s", timeout, c.errb.String())
	}
	var res childResult
	if err := json.Unmarshal(c.out.Bytes(), &res); err != nil {
		return res, fmt.Errorf("child output %q: %v", c.out.String(), err)
	}
	return res, nil
}

func runChildOK(t *testing.T, spec childSpec) childResult {
	t.Helper()
	res, err := startChild(t, spec).wait(t, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// fixture is a store with a base snapshot and a diff on top of it.
type fixture struct {
	dir        string
	store      *pagestore.Store
	base, diff []byte
	srv        *Server
	sock       string
	ended      chan Metrics
}

func skipWithoutUffd(t *testing.T) {
	t.Helper()
	if _, _, err := uffd.SupportedFeatures(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
}

func newFixture(t *testing.T, bound string) *fixture {
	t.Helper()
	skipWithoutUffd(t)
	f := &fixture{dir: t.TempDir(), ended: make(chan Metrics, 16)}
	var err error
	f.store, err = pagestore.Open(filepath.Join(f.dir, "store"), pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	fx, _ := os.ReadFile("../bench/corpus/testdata/python-256k.raw")
	f.base = append(corpus.Generate(5, 4<<20), fx...)
	f.base = append(f.base, make([]byte, 1<<20)...)
	f.diff = bytes.Clone(f.base)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 50; i++ {
		p := rng.IntN(len(f.diff) / pageSize)
		copy(f.diff[p*pageSize:], fmt.Sprintf("diff page %d", i))
	}
	clear(f.diff[10*pageSize : 12*pageSize]) // pages that became zero
	ctx := context.Background()
	if _, err := f.store.ImportMemory(ctx, "base", bytes.NewReader(f.base), int64(len(f.base)), pagestore.MemoryOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.ImportMemory(ctx, "diff", bytes.NewReader(f.diff), int64(len(f.diff)), pagestore.MemoryOptions{Parent: "base"}); err != nil {
		t.Fatal(err)
	}
	f.sock = filepath.Join(f.dir, "pages.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = New(f.store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.srv.OnEnd = func(m Metrics) { f.ended <- m }
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		f.srv.Serve(sctx, ln, bound)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	return f
}

func sumPages(mem []byte, pages []int64) string {
	h := sha256.New()
	if pages == nil {
		h.Write(mem)
	}
	for _, p := range pages {
		h.Write(mem[p*pageSize : (p+1)*pageSize])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (f *fixture) endedMetrics(t *testing.T) Metrics {
	t.Helper()
	select {
	case m := <-f.ended:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("session never ended")
	}
	return Metrics{}
}

func TestServeEveryPage(t *testing.T) {
	f := newFixture(t, "")
	for _, tc := range []struct {
		name string
		spec childSpec
		want []byte
	}{
		{"base", childSpec{Snapshot: "base"}, f.base},
		{"diff-through-parent", childSpec{Snapshot: "diff"}, f.diff},
		{"split-regions", childSpec{Snapshot: "diff", SplitRegions: true}, f.diff},
		{"fault-around", childSpec{Snapshot: "diff", FaultAround: true}, f.diff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Socket, tc.spec.Size, tc.spec.Bye = f.sock, int64(len(tc.want)), true
			res := runChildOK(t, tc.spec)
			if res.Sum != sumPages(tc.want, nil) {
				t.Fatal("memory served differs from the snapshot")
			}
			m := f.endedMetrics(t)
			pages := uint64(len(tc.want) / pageSize)
			if tc.spec.FaultAround {
				if m.AroundPages == 0 || m.Faults >= pages {
					t.Fatalf("fault-around installed nothing extra: %v", m)
				}
			} else if m.Faults != pages {
				t.Fatalf("faults %d, want one per page (%d)", m.Faults, pages)
			}
			if m.ZeroFaults == 0 {
				t.Fatal("no zero pages were served with ZEROPAGE")
			}
			t.Logf("%v", m)
		})
	}
}

func TestRecordThenPrefetch(t *testing.T) {
	f := newFixture(t, "")
	pages := int64(len(f.diff) / pageSize)
	rng := rand.New(rand.NewPCG(7, 7))
	var ws []int64
	for _, p := range rng.Perm(int(pages))[:pages*15/100] {
		ws = append(ws, int64(p))
	}
	// Record: the child touches 15 % of the pages in a random order.
	res := runChildOK(t, childSpec{Socket: f.sock, Snapshot: "diff", Size: int64(len(f.diff)), Record: true, Touch: ws, Bye: true})
	if res.Sum != sumPages(f.diff, ws) {
		t.Fatal("recorded session read wrong bytes")
	}
	if res.Metrics.Recorded != len(ws) {
		t.Fatalf("recorded %d pages, want %d", res.Metrics.Recorded, len(ws))
	}
	f.endedMetrics(t)
	var stored []uint32
	_ = f.store.Catalog().View(func(tx *catalog.Tx) error {
		s, err := tx.Snapshot("diff")
		if err == nil {
			stored = s.WorkingSet
		}
		return err
	})
	if len(stored) != len(ws) {
		t.Fatalf("stored working set has %d pages, want %d", len(stored), len(ws))
	}
	for i := range ws {
		if int64(stored[i]) != ws[i] {
			t.Fatalf("working set order differs at %d: %d != %d", i, stored[i], ws[i])
		}
	}

	// Prefetch: the same pages are installed before the child touches them.
	res = runChildOK(t, childSpec{Socket: f.sock, Snapshot: "diff", Size: int64(len(f.diff)), Prefetch: true, WaitPrefetch: true, Touch: ws, Bye: true})
	if res.Sum != sumPages(f.diff, ws) {
		t.Fatal("prefetched session read wrong bytes")
	}
	m := f.endedMetrics(t)
	t.Logf("%v", m)
	if m.WorkingSet != len(ws) || m.Prefetched < uint64(len(ws))*99/100 {
		t.Fatalf("prefetched %d of %d", m.Prefetched, len(ws))
	}
	if m.WSFaults > uint64(len(ws))/100 {
		t.Fatalf("%d of %d working-set pages still faulted (> 1%%)", m.WSFaults, len(ws))
	}
	// And everything else is still served on demand, byte-exact.
	res = runChildOK(t, childSpec{Socket: f.sock, Snapshot: "diff", Size: int64(len(f.diff)), Prefetch: true, Bye: true})
	if res.Sum != sumPages(f.diff, nil) {
		t.Fatal("prefetch racing demand faults served wrong bytes")
	}
	f.endedMetrics(t)
}

func TestTwoClientsAtOnce(t *testing.T) {
	f := newFixture(t, "")
	c1 := startChild(t, childSpec{Socket: f.sock, Snapshot: "base", Size: int64(len(f.base)), Bye: true})
	c2 := startChild(t, childSpec{Socket: f.sock, Snapshot: "diff", Size: int64(len(f.diff)), FaultAround: true, Bye: true})
	r1, err := c1.wait(t, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c2.wait(t, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Sum != sumPages(f.base, nil) || r2.Sum != sumPages(f.diff, nil) {
		t.Fatal("concurrent clients got wrong bytes")
	}
}

func TestFirecrackerHandoff(t *testing.T) {
	f := newFixture(t, "diff")
	// The message exactly as Firecracker documents it (page_size in bytes),
	// and with the older page_size_kib field.
	res := runChildOK(t, childSpec{Socket: f.sock, Size: int64(len(f.diff)), Firecracker: true})
	if res.Sum != sumPages(f.diff, nil) {
		t.Fatal("Firecracker-format client got wrong bytes")
	}
	h, fc, err := parseHandoff([]byte(`[{"base_host_virt_addr":140000000000000,"size":8192,"offset":0,"page_size_kib":4}]`), "diff")
	if err != nil || !fc || h.Regions[0].PageSize != 4096 || h.Snapshot != "diff" {
		t.Fatalf("page_size_kib form: %+v %v %v", h, fc, err)
	}
}

// What a malformed handoff carries instead of a uffd, or with it.
type passFD int

const (
	noFD   passFD = iota
	pipeFD        // a descriptor that is not a uffd
	uffdFD        // a real uffd, with nothing registered
)

func TestMalformedMessages(t *testing.T) {
	f := newFixture(t, "")
	send := func(body string, pass passFD) Reply {
		t.Helper()
		conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: f.sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		switch pass {
		case pipeFD:
			r, w, _ := os.Pipe()
			defer r.Close()
			defer w.Close()
			if err := uffd.SendRaw(conn, int(r.Fd()), []byte(body)); err != nil {
				t.Fatal(err)
			}
		case uffdFD:
			u, err := uffd.New()
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if err := uffd.SendRaw(conn, u.Fd(), []byte(body)); err != nil {
				t.Fatal(err)
			}
		default:
			if _, err := conn.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadBytes('\n')
		if err == io.EOF && len(line) == 0 {
			return Reply{Error: "closed without reply"}
		}
		if err != nil {
			t.Fatalf("no reply to %q: %v", body, err)
		}
		var rep Reply
		if err := json.Unmarshal(line, &rep); err != nil {
			t.Fatal(err)
		}
		// And after an error the server closes the connection.
		if _, err := conn.Read(make([]byte, 1)); !rep.OK && err != io.EOF {
			t.Fatalf("connection left open after an error: %v", err)
		}
		return rep
	}
	const region = `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`
	for _, tc := range []struct {
		body string
		pass passFD
		want string
	}{
		{`{"snapshot":"base"`, uffdFD, "handoff"},
		{`{"snapshot":"base","regions":[]}`, uffdFD, "no regions"},
		{`{"snapshot":"nope","regions":` + region + `}`, uffdFD, `snapshot "nope": not found`},
		{`{"snapshot":"base","regions":[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":2097152}]}`, uffdFD, "page size"},
		// A pipe is not a uffd.
		{`{"snapshot":"base","regions":` + region + `}`, pipeFD, "not a userfaultfd"},
		// Firecracker's form gets no replies, only a closed connection.
		{region, uffdFD, "closed without reply"},
		{`{"snapshot":"base"}`, noFD, "no file descriptor"},
	} {
		rep := send(tc.body, tc.pass)
		if rep.OK || !strings.Contains(rep.Error, tc.want) {
			t.Errorf("%s: reply %+v, want an error containing %q", tc.body, rep, tc.want)
		}
	}
	// The server still serves.
	res := runChildOK(t, childSpec{Socket: f.sock, Snapshot: "base", Size: int64(len(f.base)), Bye: true})
	if res.Sum != sumPages(f.base, nil) {
		t.Fatal("server broken after malformed messages")
	}
}

func TestClientFailsFastWhenSidecarDies(t *testing.T) {
	skipWithoutUffd(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	s, err := pagestore.Open(store, pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	mem := corpus.Generate(9, 4<<20)
	if _, err := s.ImportMemory(context.Background(), "m", bytes.NewReader(mem), int64(len(mem)), pagestore.MemoryOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	sock := filepath.Join(dir, "pages.sock")
	side := exec.Command(os.Args[0])
	side.Env = append(os.Environ(), sidecarEnv+"="+store+"|"+sock)
	out, _ := side.StdoutPipe()
	if err := side.Start(); err != nil {
		t.Fatal(err)
	}
	defer side.Process.Kill()
	if l, _ := bufio.NewReader(out).ReadString('\n'); l != "READY\n" {
		t.Fatalf("sidecar: %q", l)
	}
	// The child has been served pages when it holds; the sidecar dies.
	// The child notices while holding, or once released, faulting on a
	// page nobody will serve: either way it must stop, not hang.
	c := startChild(t, childSpec{Socket: sock, Snapshot: "m", Size: int64(len(mem)), HoldAfter: 16})
	waitFor(t, c.errb, "HOLDING", 20*time.Second)
	side.Process.Signal(syscall.SIGKILL)
	side.Wait()
	start := time.Now()
	c.release(t)
	_, err = c.wait(t, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "page server lost") {
		t.Fatalf("child after sidecar death: %v", err)
	}
	t.Logf("client stopped %s after the sidecar died", time.Since(start).Round(time.Millisecond))
	// The store is intact.
	s, err = pagestore.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if res, err := s.Verify(context.Background(), nil); err != nil || !res.OK() {
		t.Fatalf("store after sidecar kill: %v %v", err, res.Problems)
	}
}

func TestRunningSessionLeasesItsSnapshot(t *testing.T) {
	f := newFixture(t, "")
	// The child holds after its first pages were served: the session runs.
	c := startChild(t, childSpec{Socket: f.sock, Snapshot: "diff", Size: int64(len(f.diff)), HoldAfter: 16, Bye: true})
	waitFor(t, c.errb, "HOLDING", 20*time.Second)
	// The lease is taken off the fault path; wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		_ = f.store.Catalog().View(func(tx *catalog.Tx) error {
			ls, err := tx.Leases()
			n = len(ls)
			return err
		})
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("waited 10s for the running session to lease its snapshot; no lease in the catalog")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := f.store.Remove("diff"); !errors.Is(err, catalog.ErrInUse) {
		t.Fatalf("removing a snapshot a VM runs on: %v, want ErrInUse", err)
	}
	c.release(t)
	if _, err := c.wait(t, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	f.endedMetrics(t)
	if _, err := f.store.Remove("diff"); err != nil {
		t.Fatalf("remove after the session ended: %v", err)
	}
}
