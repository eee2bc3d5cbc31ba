//go:build linux

package uffd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var ps = os.Getpagesize()

// newOrSkip opens a uffd, skipping the test if userfaultfd is unavailable.
func newOrSkip(tb testing.TB, opts ...Option) *FD {
	tb.Helper()
	u, err := New(opts...)
	if errors.Is(err, ErrUnsupported) {
		tb.Skipf("userfaultfd unavailable: %v", err)
	}
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { u.Close() })
	return u
}

func skipIfUnsupported(tb testing.TB, need Features) {
	tb.Helper()
	f, _, err := SupportedFeatures()
	if err != nil {
		tb.Skipf("userfaultfd unavailable: %v", err)
	}
	if !f.Has(need) {
		tb.Skipf("kernel lacks uffd features %v", need&^f)
	}
}

// mmapRegion maps pages anonymous private pages. The unmap is registered as
// a cleanup before the caller registers u.Close, so it runs after the uffd
// is closed (munmap of a range registered for EVENT_UNMAP would otherwise
// wait for nobody to read the event).
func mmapRegion(tb testing.TB, pages int) []byte {
	tb.Helper()
	mem, err := unix.Mmap(-1, 0, pages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		tb.Fatalf("mmap: %v", err)
	}
	tb.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// pattern returns the expected content of a region of n pages; pages with
// index%4 == 3 are zero pages.
func pattern(n int) []byte {
	b := make([]byte, n*ps)
	for p := 0; p < n; p++ {
		if isZeroPage(p) {
			continue
		}
		for j := 0; j < ps; j++ {
			b[p*ps+j] = byte(p*31 + j*7 + j>>8 + 1)
		}
	}
	return b
}

func isZeroPage(p int) bool { return p%4 == 3 }

// faulter reads mem on a locked OS thread and delivers the copy. Its
// cleanup closes u (which wakes a blocked fault) and waits for the goroutine
// before the region is unmapped, so a failing test cannot crash or hang.
func faulter(tb testing.TB, u *FD, mem []byte) (done <-chan []byte, tid <-chan int) {
	needTwoPs(tb)
	d := make(chan []byte, 1)
	t := make(chan int, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t <- unix.Gettid()
		// A Go loop, not copy(): a fault taken inside memmove (assembly)
		// cannot be preempted, so a GC started by the serving goroutine
		// would wait for this thread forever (see the package doc).
		out := make([]byte, len(mem))
		for i := range mem {
			out[i] = mem[i]
		}
		d <- out
	}()
	tb.Cleanup(func() {
		u.Close()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			panic("faulting goroutine still blocked after Close")
		}
	})
	return d, t
}

// needTwoPs raises GOMAXPROCS to 2 for the test: a goroutine blocked on a
// fault in Go code holds its P, so with a single P the serving goroutine only
// runs after the faulter is preempted, which withdraws the fault (see the
// package doc).
func needTwoPs(tb testing.TB) {
	if prev := runtime.GOMAXPROCS(0); prev < 2 {
		runtime.GOMAXPROCS(2)
		tb.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
}

func TestIoctlNumbers(t *testing.T) {
	// Values of the C macros in include/uapi/linux/userfaultfd.h on
	// asm-generic ioctl architectures.
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"USERFAULTFD_IOC_NEW", iocUserfaultfdNew, 0xaa00},
		{"UFFDIO_API", iocAPI, 0xc018aa3f},
		{"UFFDIO_REGISTER", iocRegister, 0xc020aa00},
		{"UFFDIO_UNREGISTER", iocUnregister, 0x8010aa01},
		{"UFFDIO_WAKE", iocWake, 0x8010aa02},
		{"UFFDIO_COPY", iocCopy, 0xc028aa03},
		{"UFFDIO_ZEROPAGE", iocZeropage, 0xc020aa04},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestNewHandshake(t *testing.T) {
	for _, m := range []struct {
		name   string
		method OpenMethod
	}{{"auto", OpenAuto}, {"device", OpenDevice}, {"syscall", OpenSyscall}} {
		t.Run(m.name, func(t *testing.T) {
			skipIfUnsupported(t, DefaultFeatures)
			u, err := New(WithOpenMethod(m.method), WithOptionalFeatures(FeatureThreadID|FeatureEventFork))
			if errors.Is(err, ErrUnsupported) {
				t.Skipf("open method unavailable: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if !u.Features().Has(DefaultFeatures | FeatureThreadID) {
				t.Errorf("features = %v, want at least %v", u.Features(), DefaultFeatures|FeatureThreadID)
			}
			if !u.Ioctls().Has(IoctlAPI | IoctlRegister | IoctlUnregister) {
				t.Errorf("ioctls = %#x", uint64(u.Ioctls()))
			}
			fl, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFL, 0)
			if err != nil || fl&unix.O_NONBLOCK == 0 {
				t.Errorf("fd flags %#x, %v: want O_NONBLOCK", fl, err)
			}
			fdfl, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFD, 0)
			if err != nil || fdfl&unix.FD_CLOEXEC == 0 {
				t.Errorf("fd flags %#x, %v: want FD_CLOEXEC", fdfl, err)
			}
			if err := u.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := u.Close(); !errors.Is(err, ErrClosed) {
				t.Errorf("second Close = %v, want ErrClosed", err)
			}
			if _, err := u.Copy(0, make([]byte, ps), 0); !errors.Is(err, ErrClosed) {
				t.Errorf("Copy after Close = %v, want ErrClosed", err)
			}
		})
	}
}

func TestFromFD(t *testing.T) {
	u := newOrSkip(t, WithFeatures(FeatureEventRemove|FeatureThreadID))
	dup, err := unix.Dup(u.Fd())
	if err != nil {
		t.Fatal(err)
	}
	v, err := FromFD(dup)
	if err != nil {
		unix.Close(dup)
		t.Fatal(err)
	}
	defer v.Close()
	if v.Features() != FeatureEventRemove|FeatureThreadID {
		t.Errorf("FromFD features = %v, want %v", v.Features(), FeatureEventRemove|FeatureThreadID)
	}
	// The wrapped fd shares the uffd context: a range registered through
	// one is served through the other.
	mem := mmapRegion(t, 4)
	if _, err := v.Register(addrOf(mem), uintptr(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Copy(addrOf(mem), bytes.Repeat([]byte{7}, ps), 0); err != nil {
		t.Fatal(err)
	}
	if mem[0] != 7 {
		t.Errorf("mem[0] = %d, want 7", mem[0])
	}
	if err := v.Unregister(addrOf(mem), uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}

	// Not a uffd.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := FromFD(int(r.Fd())); err == nil {
		t.Error("FromFD(pipe) succeeded")
	}
}

// TestInProcessFaults serves faults of a goroutine on a locked OS thread in
// the same process with Copy and ZeroPage and checks the content.
func TestInProcessFaults(t *testing.T) {
	const pages = 64
	mem := mmapRegion(t, pages)
	u := newOrSkip(t, WithOptionalFeatures(FeatureThreadID))
	base := addrOf(mem)
	ioctls, err := u.Register(base, uintptr(len(mem)), ModeMissing)
	if err != nil {
		t.Fatal(err)
	}
	if !ioctls.Has(IoctlCopy | IoctlZeropage | IoctlWake) {
		t.Fatalf("range ioctls = %#x, want COPY|ZEROPAGE|WAKE", uint64(ioctls))
	}
	want := pattern(pages)
	done, tidc := faulter(t, u, mem)
	tid := <-tidc

	deadline := time.Now().Add(20 * time.Second)
	var events [16]Event
	faults, existed := 0, 0
	served := make(map[int]bool)
	var got []byte
	for got == nil {
		select {
		case got = <-done:
			continue
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for the faulting goroutine to read every page; served %d/%d pages", len(served), pages)
		}
		if _, err := u.Poll(50 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		n, err := u.ReadEvents(events[:])
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range events[:n] {
			if ev.Kind != EventPagefault {
				t.Fatalf("unexpected event %v", ev)
			}
			if ev.Flags&FaultWrite != 0 {
				t.Errorf("read fault reported as write: %v", ev)
			}
			if u.Features().Has(FeatureThreadID) && ev.ThreadID != tid {
				t.Errorf("fault tid %d, want %d", ev.ThreadID, tid)
			}
			faults++
			p := int(ev.Address-base) / ps
			if p < 0 || p >= pages || ev.Address%uintptr(ps) != 0 {
				t.Fatalf("fault address %#x outside region %#x+%#x", ev.Address, base, len(mem))
			}
			var res Result
			if isZeroPage(p) {
				res, err = u.ZeroPage(ev.Address, uintptr(ps), 0)
			} else {
				res, err = u.Copy(ev.Address, want[p*ps:(p+1)*ps], 0)
			}
			if err != nil {
				t.Fatalf("serve page %d: %v", p, err)
			}
			if res.Existed > 0 {
				existed++
			}
			served[p] = true
		}
	}
	if !bytes.Equal(got, want) {
		for p := 0; p < pages; p++ {
			if !bytes.Equal(got[p*ps:(p+1)*ps], want[p*ps:(p+1)*ps]) {
				t.Fatalf("page %d differs (zero page: %v)", p, isZeroPage(p))
			}
		}
	}
	if len(served) != pages {
		t.Errorf("served %d distinct pages, want %d", len(served), pages)
	}
	t.Logf("%d faults, %d duplicates answered with EEXIST", faults, existed)
}

// TestCopyExisting checks that EEXIST is reported as success.
func TestCopyExisting(t *testing.T) {
	const pages = 8
	mem := mmapRegion(t, pages)
	u := newOrSkip(t)
	base := addrOf(mem)
	if _, err := u.Register(base, uintptr(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	src := pattern(pages)
	page := func(p int) []byte { return src[p*ps : (p+1)*ps] }
	addr := func(p int) uintptr { return base + uintptr(p*ps) }

	res, err := u.Copy(addr(0), page(0), 0)
	if err != nil || res != (Result{Installed: uintptr(ps)}) {
		t.Fatalf("first Copy = %+v, %v", res, err)
	}
	res, err = u.Copy(addr(0), bytes.Repeat([]byte{0xee}, ps), 0)
	if err != nil || res != (Result{Existed: uintptr(ps)}) {
		t.Fatalf("Copy of present page = %+v, %v; want Existed=%d, nil", res, err, ps)
	}
	res, err = u.ZeroPage(addr(0), uintptr(ps), 0)
	if err != nil || res != (Result{Existed: uintptr(ps)}) {
		t.Fatalf("ZeroPage of present page = %+v, %v; want Existed=%d, nil", res, err, ps)
	}
	if !bytes.Equal(mem[:ps], page(0)) {
		t.Fatal("present page was overwritten")
	}

	// A multi-page copy over [0,4) with pages 0 and 2 present installs 1
	// and 3 and skips 0 and 2 (EEXIST at the start, partial copy in the
	// middle).
	if _, err := u.Copy(addr(2), page(2), DontWake); err != nil {
		t.Fatal(err)
	}
	res, err = u.Copy(addr(0), src[:4*ps], 0)
	if err != nil || res != (Result{Installed: uintptr(2 * ps), Existed: uintptr(2 * ps)}) {
		t.Fatalf("Copy over mixed range = %+v, %v; want 2 pages installed, 2 existed", res, err)
	}
	res, err = u.ZeroPage(addr(2), uintptr(4*ps), 0)
	if err != nil || res != (Result{Installed: uintptr(2 * ps), Existed: uintptr(2 * ps)}) {
		t.Fatalf("ZeroPage over mixed range = %+v, %v; want 2 pages installed, 2 existed", res, err)
	}
	if !bytes.Equal(mem[:4*ps], src[:4*ps]) || !bytes.Equal(mem[4*ps:6*ps], make([]byte, 2*ps)) {
		t.Fatal("content mismatch after mixed installs")
	}

	// Misaligned and unregistered ranges are errors, not EEXIST.
	if _, err := u.Copy(addr(6)+1, page(6), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("misaligned Copy = %v, want EINVAL", err)
	}
	other := mmapRegion(t, 1)
	if _, err := u.Copy(addrOf(other), page(0), 0); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Copy to unregistered range = %v, want ENOENT", err)
	}
}

// TestInstallBatch serves the first fault by installing the whole region
// with InstallBatch (DONTWAKE per page, one wake per contiguous run).
func TestInstallBatch(t *testing.T) {
	const pages = 32
	mem := mmapRegion(t, pages)
	u := newOrSkip(t)
	base := addrOf(mem)
	if _, err := u.Register(base, uintptr(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	want := pattern(pages)
	var batch []Page
	// Two runs: the upper half first, then the lower half, to exercise
	// the run splitting; pages 1 and 17 are pre-installed (EEXIST).
	for _, half := range [][2]int{{pages / 2, pages}, {0, pages / 2}} {
		for p := half[0]; p < half[1]; p++ {
			pg := Page{Addr: base + uintptr(p*ps)}
			if !isZeroPage(p) {
				pg.Data = want[p*ps : (p+1)*ps]
			}
			batch = append(batch, pg)
		}
	}
	for _, p := range []int{1, 17} {
		if _, err := u.Copy(base+uintptr(p*ps), want[p*ps:(p+1)*ps], 0); err != nil {
			t.Fatal(err)
		}
	}

	done, _ := faulter(t, u, mem)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var (
		n   int
		res Result
		ran bool
	)
	errc := make(chan error, 1)
	go func() {
		errc <- u.Serve(ctx, func(evs []Event) error {
			if ran {
				return nil // duplicate faults: the batch has installed everything
			}
			ran = true
			var err error
			n, res, err = u.InstallBatch(batch)
			return err
		})
	}()
	var got []byte
	select {
	case got = <-done:
	case err := <-errc:
		t.Fatalf("Serve returned early: %v", err)
	case <-ctx.Done():
		t.Fatal("timed out waiting for the faulting thread")
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve = %v, want context.Canceled", err)
	}
	if n != len(batch) || res != (Result{Installed: uintptr((pages - 2) * ps), Existed: uintptr(2 * ps)}) {
		t.Errorf("InstallBatch = %d, %+v; want %d, %d installed + 2 pages existed", n, res, len(batch), pages-2)
	}
	if !bytes.Equal(got, want) {
		t.Error("content mismatch")
	}
}

func TestUnregister(t *testing.T) {
	mem := mmapRegion(t, 4)
	u := newOrSkip(t)
	base := addrOf(mem)
	if _, err := u.Register(base, uintptr(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	if err := u.Unregister(base, uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}
	// No handler: this would hang if the range were still registered.
	done, _ := faulter(t, u, mem)
	select {
	case got := <-done:
		if !bytes.Equal(got, make([]byte, len(mem))) {
			t.Error("unregistered memory not zero")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("access to unregistered range blocked")
	}
	if _, err := u.Register(base, uintptr(len(mem)), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Register with mode 0 = %v, want EINVAL", err)
	}
}

func TestPollTimeoutAndClose(t *testing.T) {
	u := newOrSkip(t)
	start := time.Now()
	ready, err := u.Poll(30 * time.Millisecond)
	if ready || err != nil || time.Since(start) < 25*time.Millisecond {
		t.Fatalf("Poll = %v, %v after %v; want timeout", ready, err, time.Since(start))
	}
	n, err := u.ReadEvents(make([]Event, 4))
	if n != 0 || err != nil {
		t.Fatalf("ReadEvents on idle uffd = %d, %v", n, err)
	}
	errc := make(chan error, 2)
	go func() { _, err := u.Poll(-1); errc <- err }()
	go func() { errc <- u.Serve(context.Background(), func([]Event) error { return nil }) }()
	waitBlockedInPoll(t, 2, 10*time.Second)
	// Close waits for the pollers to leave; if it cannot wake them it
	// blocks, so it runs on its own goroutine.
	closed := make(chan error, 1)
	go func() { closed <- u.Close() }()
	for range 2 {
		select {
		case err := <-errc:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("got %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not interrupt Poll/Serve")
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// waitBlockedInPoll waits until n threads of this process sleep in ppoll(2)
// without a timeout (as Poll(-1) and an idle Serve do), read from
// /proc/self/task/*/syscall.
func waitBlockedInPoll(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		blocked := 0
		tasks, _ := filepath.Glob("/proc/self/task/*/syscall")
		for _, p := range tasks {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // the thread exited
			}
			// "nr fds nfds tsp sigmask ...": a NULL tsp waits forever.
			f := strings.Fields(string(b))
			if len(f) > 3 && f[0] == strconv.Itoa(unix.SYS_PPOLL) && f[3] == "0x0" {
				blocked++
			}
		}
		if blocked >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %d threads to block in ppoll(2) with no timeout; %d did", timeout, n, blocked)
		}
		time.Sleep(time.Millisecond)
	}
}

// ---- Cross-process tests -------------------------------------------------

const (
	helperEnv     = "UFFD_TEST_HELPER"
	helperSockEnv = "UFFD_TEST_SOCK"
	helperPages   = 64
)

// TestHelperProcess is the child side of the cross-process tests; it only
// runs when re-executed by them.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	if err := runHelper(mode, os.Getenv(helperSockEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func runHelper(mode, sock string) error {
	mem, err := unix.Mmap(-1, 0, helperPages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	base := addrOf(mem)
	u, err := New()
	if err != nil {
		return err
	}
	if _, err := u.Register(base, uintptr(len(mem)), ModeMissing); err != nil {
		return err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return err
	}
	regions := []Region{{BaseHostVirtAddr: uint64(base), Size: uint64(len(mem)), Offset: 0, PageSize: uint64(ps)}}
	if err := Send(conn, u.Fd(), regions); err != nil {
		return err
	}
	say := func(format string, args ...any) { fmt.Fprintf(os.Stdout, format+"\n", args...) }
	read := func(b []byte) []byte { // touch every page by copying it out
		out := make([]byte, len(b))
		copy(out, b)
		return out
	}
	switch mode {
	case "sum":
		say("SUM %s", sum(read(mem)))
	case "hang":
		say("READY")
		say("SUM %s", sum(read(mem[:ps]))) // never served
	case "wake":
		sink += mem[0] // fault on page 0 first
		say("SUM %s", sum(read(mem[:8*ps])))
	case "events":
		say("SUM %s", sum(read(mem)))
		// REMOVE: drop pages [4,8); they fault again on access.
		if err := unix.Madvise(mem[4*ps:8*ps], unix.MADV_DONTNEED); err != nil {
			return err
		}
		say("SUM2 %s", sum(read(mem[4*ps:8*ps])))
		// REMAP: grow [48,52) to 8 pages; [52,56) is mapped, so it moves.
		to, _, errno := unix.Syscall6(unix.SYS_MREMAP, base+uintptr(48*ps), uintptr(4*ps), uintptr(8*ps), unix.MREMAP_MAYMOVE, 0, 0)
		if errno != 0 {
			return fmt.Errorf("mremap: %w", errno)
		}
		say("REMAPPED %d", to)
		// UNMAP: drop [60,64).
		if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, base+uintptr(60*ps), uintptr(4*ps), 0); errno != 0 {
			return fmt.Errorf("munmap: %w", errno)
		}
		say("UNMAPPED")
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	runtime.KeepAlive(conn)
	runtime.KeepAlive(u)
	return nil
}

var sink byte

type child struct {
	cmd     *exec.Cmd
	lines   chan string
	conn    *net.UnixConn
	u       *FD
	regions []Region
}

// startChild re-executes the test binary as a helper in the given mode and
// receives its uffd.
func startChild(t *testing.T, mode string, env ...string) *child {
	t.Helper()
	skipIfUnsupported(t, DefaultFeatures)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperSockEnv+"="+sock)
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	c := &child{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		defer close(c.lines)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	})
	ln.SetDeadline(time.Now().Add(20 * time.Second))
	c.conn, err = ln.AcceptUnix()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.conn.Close() })
	c.conn.SetDeadline(time.Now().Add(20 * time.Second))
	c.u, c.regions, err = Receive(c.conn)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	t.Cleanup(func() { c.u.Close() })
	if len(c.regions) != 1 || c.regions[0].Size != helperPages*uint64(ps) || c.regions[0].PageSize != uint64(ps) || c.regions[0].Offset != 0 {
		t.Fatalf("regions = %+v", c.regions)
	}
	if !c.u.Features().Has(DefaultFeatures) {
		t.Errorf("received uffd features = %v, want %v", c.u.Features(), DefaultFeatures)
	}
	return c
}

// expect waits for a line with the given prefix and returns the rest.
func (c *child) expect(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("child exited before printing %q", prefix)
			}
			if rest, ok := strings.CutPrefix(l, prefix+" "); ok {
				return rest
			}
			if l == prefix {
				return ""
			}
		case <-tm.C:
			t.Fatalf("timed out waiting for %q from child", prefix)
		}
	}
}

// server serves a child's faults from content, with Firecracker's balloon
// semantics: pages dropped by a REMOVE are served as zero pages afterwards.
type server struct {
	u       *FD
	base    uintptr
	content []byte
	removed []bool
	faults  []int // per page
	existed int
	again   int
	events  []Event // non-fault events, in order
	hold    func(Event) bool
}

func newServer(c *child, content []byte) *server {
	n := len(content) / ps
	return &server{u: c.u, base: uintptr(c.regions[0].BaseHostVirtAddr), content: content, removed: make([]bool, n), faults: make([]int, n)}
}

func (s *server) apply(ev Event) {
	s.events = append(s.events, ev)
	if ev.Kind == EventRemove {
		for a := ev.Start; a < ev.End; a += uintptr(ps) {
			if p := int(a-s.base) / ps; a >= s.base && p < len(s.removed) {
				s.removed[p] = true
			}
		}
	}
}

func (s *server) serve(ev Event) error {
	p := int(ev.Address-s.base) / ps
	if ev.Address < s.base || p >= len(s.faults) {
		return fmt.Errorf("fault outside region: %v", ev)
	}
	var res Result
	var err error
	if s.removed[p] || isZeroPage(p) {
		res, err = s.u.ZeroPage(s.base+uintptr(p*ps), uintptr(ps), 0)
	} else {
		res, err = s.u.Copy(s.base+uintptr(p*ps), s.content[p*ps:(p+1)*ps], 0)
	}
	if res.Existed > 0 {
		s.existed++
	}
	return err
}

// handle is a Serve handler. On ErrAgain it reads (and applies) the pending
// non-cooperative events, then retries.
func (s *server) handle(evs []Event) error {
	queue := append([]Event(nil), evs...)
	for i := 0; i < len(queue); i++ {
		ev := queue[i]
		if ev.Kind != EventPagefault {
			s.apply(ev)
			continue
		}
		if s.hold != nil && s.hold(ev) {
			continue
		}
		s.faults[int(ev.Address-s.base)/ps]++
		deadline := time.Now().Add(10 * time.Second)
		for {
			if time.Now().After(deadline) {
				return fmt.Errorf("serving fault %v: still EAGAIN after 10s of draining events", ev)
			}
			err := s.serve(ev)
			if !errors.Is(err, ErrAgain) {
				if err != nil {
					return err
				}
				break
			}
			s.again++
			more := make([]Event, 16)
			n, err := s.u.ReadEvents(more)
			if err != nil {
				return err
			}
			for _, m := range more[:n] {
				if m.Kind == EventPagefault {
					queue = append(queue, m)
				} else {
					s.apply(m)
				}
			}
			if n == 0 {
				time.Sleep(50 * time.Microsecond) // the event is not queued yet
			}
		}
	}
	return nil
}

func (s *server) start(ctx context.Context) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- s.u.Serve(ctx, s.handle) }()
	return errc
}

// TestCrossProcess serves a child process's faults over a uffd received with
// SCM_RIGHTS and checks the child's checksum; the serving loop then notices
// the child's exit.
func TestCrossProcess(t *testing.T) {
	c := startChild(t, "sum")
	if err := c.u.WatchPeer(c.conn); err != nil {
		t.Fatal(err)
	}
	want := pattern(helperPages)
	s := newServer(c, want)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := s.start(ctx)
	if got := c.expect(t, "SUM", 20*time.Second); got != sum(want) {
		t.Errorf("child checksum %s, want %s", got, sum(want))
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrTargetGone) {
			t.Errorf("Serve = %v, want ErrTargetGone", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after the child exited")
	}
	for p, n := range s.faults {
		if n == 0 {
			t.Errorf("page %d never faulted", p)
		}
	}
	t.Logf("served %d pages; %d duplicate faults hit EEXIST", len(s.faults), s.existed)
}

// TestTargetKilled kills the child while one of its faults is outstanding;
// Serve must return ErrTargetGone instead of hanging, and installs must fail
// with ErrTargetGone.
func TestTargetKilled(t *testing.T) {
	for _, how := range []string{"peer-pidfd", "hangup", "pid"} {
		t.Run(how, func(t *testing.T) {
			c := startChild(t, "hang")
			var err error
			switch how {
			case "peer-pidfd":
				err = c.u.WatchPeer(c.conn)
			case "hangup":
				var rc interface{ Control(func(uintptr)) error }
				rc, err = c.conn.SyscallConn()
				if err == nil {
					cerr := rc.Control(func(fd uintptr) { err = c.u.WatchTarget(int(fd), WatchHangup) })
					err = errors.Join(err, cerr)
				}
			case "pid":
				err = c.u.WatchPid(c.cmd.Process.Pid)
			}
			if err != nil {
				t.Fatal(err)
			}
			s := newServer(c, pattern(helperPages))
			faulted := make(chan Event, 1)
			s.hold = func(ev Event) bool {
				select {
				case faulted <- ev:
				default:
				}
				return true // never serve
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errc := s.start(ctx)
			c.expect(t, "READY", 20*time.Second)
			var ev Event
			select {
			case ev = <-faulted:
			case err := <-errc:
				t.Fatalf("Serve returned early: %v", err)
			case <-time.After(20 * time.Second):
				t.Fatal("no fault from child")
			}
			// The fault is outstanding; the poll loop is idle.
			select {
			case err := <-errc:
				t.Fatalf("Serve returned while the child was alive: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
			if err := c.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, ErrTargetGone) {
					t.Fatalf("Serve = %v, want ErrTargetGone", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve hung after the child was killed")
			}
			c.cmd.Wait()
			_, err = c.u.Copy(ev.Address, make([]byte, ps), 0)
			if !errors.Is(err, ErrTargetGone) || !errors.Is(err, unix.ESRCH) {
				t.Errorf("Copy after exit = %v, want ErrTargetGone (ESRCH)", err)
			}
			_, err = c.u.ZeroPage(ev.Address, uintptr(ps), 0)
			if !errors.Is(err, ErrTargetGone) {
				t.Errorf("ZeroPage after exit = %v, want ErrTargetGone", err)
			}
			if _, err := c.u.Poll(time.Second); !errors.Is(err, ErrTargetGone) {
				t.Errorf("Poll after exit = %v, want ErrTargetGone", err)
			}
		})
	}
}

// TestDontWakeThenWake installs the pages a child is blocked on with
// DontWake, checks the child stays blocked, then wakes it with one Wake. The
// child runs with asynchronous preemption off so no signal interrupts its
// fault (an interrupted fault would be retried and find the page present).
func TestDontWakeThenWake(t *testing.T) {
	c := startChild(t, "wake", "GODEBUG=asyncpreemptoff=1")
	want := pattern(helperPages)[:8*ps]
	base := uintptr(c.regions[0].BaseHostVirtAddr)
	installed := make(chan error, 1)
	first := true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- c.u.Serve(ctx, func(evs []Event) error {
			for _, ev := range evs {
				if ev.Kind != EventPagefault {
					continue
				}
				if !first {
					return fmt.Errorf("unexpected extra fault %v", ev)
				}
				first = false
				if ev.Address != base {
					return fmt.Errorf("first fault at %#x, want %#x", ev.Address, base)
				}
				for p := 0; p < 8; p++ {
					var err error
					if isZeroPage(p) {
						_, err = c.u.ZeroPage(base+uintptr(p*ps), uintptr(ps), DontWake)
					} else {
						_, err = c.u.Copy(base+uintptr(p*ps), want[p*ps:(p+1)*ps], DontWake)
					}
					if err != nil {
						return err
					}
				}
				installed <- nil
			}
			return nil
		})
	}()
	select {
	case <-installed:
	case err := <-errc:
		t.Fatalf("Serve: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no fault from child")
	}
	select {
	case l := <-c.lines:
		t.Fatalf("child ran before Wake: %q", l)
	case <-time.After(200 * time.Millisecond):
	}
	if err := c.u.Wake(base, uintptr(8*ps)); err != nil {
		t.Fatal(err)
	}
	if got := c.expect(t, "SUM", 20*time.Second); got != sum(want) {
		t.Errorf("child checksum %s, want %s", got, sum(want))
	}
	cancel()
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("Serve: %v", err)
	}
}

// TestNonCooperativeEvents checks REMOVE (madvise MADV_DONTNEED), REMAP and
// UNMAP events from a child.
func TestNonCooperativeEvents(t *testing.T) {
	skipIfUnsupported(t, FeatureEventRemove|FeatureEventRemap|FeatureEventUnmap)
	c := startChild(t, "events")
	want := pattern(helperPages)
	s := newServer(c, want)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := s.start(ctx)
	if got := c.expect(t, "SUM", 20*time.Second); got != sum(want) {
		t.Errorf("child checksum %s, want %s", got, sum(want))
	}
	// Removed pages fault again and are served as zero.
	if got := c.expect(t, "SUM2", 20*time.Second); got != sum(make([]byte, 4*ps)) {
		t.Errorf("checksum after MADV_DONTNEED %s, want zeros", got)
	}
	var to uintptr
	fmt.Sscan(c.expect(t, "REMAPPED", 20*time.Second), &to)
	c.expect(t, "UNMAPPED", 20*time.Second)
	cancel()
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrTargetGone) {
		t.Fatalf("Serve: %v", err)
	}
	base := s.base
	at := func(p int) uintptr { return base + uintptr(p*ps) }
	wantEvents := []Event{
		{Kind: EventRemove, Start: at(4), End: at(8)},
		{Kind: EventRemap, From: at(48), To: to, Len: uintptr(4 * ps)},
		// mremap unmaps the old range after reporting the move.
		{Kind: EventUnmap, Start: at(48), End: at(52)},
		{Kind: EventUnmap, Start: at(60), End: at(64)},
	}
	if len(s.events) != len(wantEvents) {
		t.Fatalf("events = %v, want %v", s.events, wantEvents)
	}
	for i := range wantEvents {
		if s.events[i] != wantEvents[i] {
			t.Errorf("event %d = %v, want %v", i, s.events[i], wantEvents[i])
		}
	}
	for p := 4; p < 8; p++ {
		if s.faults[p] < 2 {
			t.Errorf("page %d faulted %d times, want >= 2 (before and after REMOVE)", p, s.faults[p])
		}
	}
	t.Logf("EAGAIN retries: %d, EEXIST: %d", s.again, s.existed)
}

// BenchmarkFaultCopy measures one page fault served with UFFDIO_COPY: the
// benchmark goroutine faults on a locked OS thread while a Serve goroutine
// answers.
func BenchmarkFaultCopy(b *testing.B) {
	const pages = 4096
	mem := mmapRegion(b, pages)
	u := newOrSkip(b, WithFeatures(0)) // no EVENT_REMOVE: MADV_DONTNEED resets the region
	base := addrOf(mem)
	if _, err := u.Register(base, uintptr(len(mem)), ModeMissing); err != nil {
		b.Fatal(err)
	}
	page := bytes.Repeat([]byte{1}, ps)
	mask := ^uintptr(ps - 1)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- u.Serve(ctx, func(evs []Event) error {
			for _, ev := range evs {
				if _, err := u.Copy(ev.Address&mask, page, 0); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	needTwoPs(b)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var s byte
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % pages
		if j == 0 && i > 0 {
			b.StopTimer()
			if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		s += mem[j*ps]
	}
	b.StopTimer()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		b.Fatal(err)
	}
	if s != byte(b.N) {
		b.Fatalf("read %d, want %d", s, byte(b.N))
	}
}

// TestServingPathAllocs checks that the calls a handler makes per fault do
// not allocate (see the package doc on serving faults in-process).
func TestServingPathAllocs(t *testing.T) {
	mem := mmapRegion(t, 2)
	u := newOrSkip(t)
	base := addrOf(mem)
	if _, err := u.Register(base, uintptr(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	page := make([]byte, ps)
	if _, err := u.Copy(base, page, 0); err != nil {
		t.Fatal(err)
	}
	events := make([]Event, 8)
	for name, f := range map[string]func(){
		"Copy(EEXIST)":     func() { u.Copy(base, page, 0) },
		"ZeroPage(EEXIST)": func() { u.ZeroPage(base, uintptr(ps), 0) },
		"Wake":             func() { u.Wake(base, uintptr(2*ps)) },
		"ReadEvents":       func() { u.ReadEvents(events) },
		"Poll":             func() { u.Poll(0) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}
