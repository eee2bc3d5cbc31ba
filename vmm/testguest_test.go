package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/fusefs"
	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/pagestore"
)

func buildTestGuest(t *testing.T) string {
	t.Helper()
	elf, err := testguest.Build(filepath.Join(os.TempDir(), "snapfaas-testguest"))
	if errors.Is(err, testguest.ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return elf
}

// diskOnFUSE imports a disk image into a store, mounts the store and
// returns the image's path on the mount. Without FUSE (no /dev/fuse, or
// not root) it skips the test.
func diskOnFUSE(t *testing.T, img []byte) string {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE here: %v", err)
	}
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("no FUSE mount here: mounting needs root, euid is %d", uid)
	}
	dir := t.TempDir()
	s, err := pagestore.Open(filepath.Join(dir, "store"), pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportImage(context.Background(), "appfs", bytes.NewReader(img), pagestore.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	m, err := fusefs.New(mnt, s, fusefs.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Unmount()
		s.Close()
	})
	return filepath.Join(mnt, "images", "appfs")
}

// runUntil runs vm until the console contains want (then stops it) or the
// VM ends by itself; it returns the console output and the run error. The
// VM is stopped after timeout: the error then names what was awaited.
func runUntil(t *testing.T, vm *VM, console *syncBuf, want string, timeout time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no %q on the console within %v: %w", want, timeout, err)
			}
			return console.String(), err
		case <-tick.C:
			if want != "" && strings.Contains(console.String(), want) {
				cancel()
				waitStopped(t, done)
				return console.String(), nil
			}
		}
	}
}

// waitRun waits for the result of a VM's Run; if none comes within
// timeout it fails, saying what the VM should have done.
func waitRun(t *testing.T, done <-chan error, timeout time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		t.Fatalf("the VM did not %s within %v", what, timeout)
		return nil
	}
}

// waitStopped waits for the result of a VM's Run that was cancelled.
func waitStopped(t *testing.T, done <-chan error) error {
	t.Helper()
	return waitRun(t, done, time.Minute, "stop after its context was cancelled")
}

// waitConsole waits until console contains want. It fails, naming want,
// if the VM ends first (done) or timeout passes.
func waitConsole(t *testing.T, console *syncBuf, want string, done <-chan error, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(console.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("the VM ended (%v) before %q appeared on the console:\n%s", err, want, console.String())
		case <-deadline:
			t.Fatalf("no %q on the console after %v:\n%s", want, timeout, console.String())
		case <-tick.C:
		}
	}
}

func TestTestGuestBootsWithDiskFromFUSE(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	payload := []byte("hello function\nbody of the function's data\n")
	disk := diskOnFUSE(t, testguest.DiskImage(payload))
	for _, n := range []int{1, 2} {
		var console syncBuf
		var points []uint8
		cfg := testguest.DefaultConfig()
		cfg.HeapMB = 1
		vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, VCPUs: n, Console: &console,
			HideEmulatorUnsafe: true, Disks: []Disk{{Path: disk, ReadOnly: true, ID: "appfs"}},
			OnSnapshotPoint: func(v uint8) { points = append(points, v) }})
		if err != nil {
			t.Fatal(err)
		}
		out, err := runUntil(t, vm, &console, "\nready\n", 3*time.Minute)
		defer vm.Close()
		if err != nil {
			t.Fatalf("%d vCPUs: %v\nconsole:\n%s", n, err, out)
		}
		c := testguest.ParseConsole(out)
		if !c.Banner || !c.Ready {
			t.Fatalf("%d vCPUs: console:\n%s", n, out)
		}
		if c.Disk != testguest.DiskLine(payload) || c.DiskChecksum != testguest.DiskChecksum(payload) || c.DiskID != "appfs" {
			t.Fatalf("disk lines %q %q %q, want %q %q appfs", c.Disk, c.DiskChecksum, c.DiskID, testguest.DiskLine(payload), testguest.DiskChecksum(payload))
		}
		if c.HeapPages != testguest.HeapPages(1) {
			t.Fatalf("heap pages %d", c.HeapPages)
		}
		if len(points) != 2 || points[0] != 123 || points[1] != 124 {
			t.Fatalf("snapshot points %v", points)
		}
		// The guest's heap, read straight from guest memory, is what the
		// model says.
		mem := vm.Memory()
		for _, p := range []uint64{0, 1, c.HeapPages - 1} {
			got := mem[c.HeapAddr+p*4096 : c.HeapAddr+(p+1)*4096]
			if !bytes.Equal(got, testguest.PageBytes(cfg.Seed, p, 0)) {
				t.Fatalf("heap page %d differs from the model", p)
			}
		}
	}
}

func TestTestGuestFaultsAreReported(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	emulating := emulatingKVM(t)
	for _, fault := range []string{"sse", "triple"} {
		var console syncBuf
		cfg := testguest.DefaultConfig()
		cfg.HeapMB, cfg.Fault = 0, fault
		vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 32, Console: &console, HideEmulatorUnsafe: true})
		if err != nil {
			t.Fatal(err)
		}
		out, err := runUntil(t, vm, &console, "", 2*time.Minute)
		vm.Close()
		var ee *ExitError
		switch {
		case fault == "triple":
			if !errors.Is(err, ErrTripleFault) || !errors.As(err, &ee) {
				t.Fatalf("fault=triple: got %v; want an *ExitError for ErrTripleFault\n%s", err, out)
			}
		case emulating:
			// KVM's emulator cannot run the SSE instruction at fault_sse.
			want := testutil.ELFSymbol(t, elf, "fault_sse")
			if !errors.Is(err, ErrEmulation) || !errors.As(err, &ee) || ee.Regs.RIP != want {
				t.Fatalf("fault=sse: got %v; want an *ExitError for ErrEmulation at fault_sse (%#x)\n%s", err, want, out)
			}
		default:
			// Hardware raises #UD (CR4.OSFXSR is clear): the guest reports
			// it and resets, a clean stop.
			if c := testguest.ParseConsole(out); err != nil || !strings.HasPrefix(c.Exception, "EXCEPTION vector=6 ") {
				t.Fatalf("fault=sse: got %v, exception %q; want a reset after #UD\n%s", err, c.Exception, out)
			}
		}
		t.Logf("fault=%s: %v", fault, err)
	}
}

func TestTestGuestAnswersVsockRequests(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "v.sock")
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	// The guest connects to CID 2 port cfg.Port: <sock>_<port> here.
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, cfg.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var console syncBuf
	vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, Console: &console, HideEmulatorUnsafe: true,
		Vsock: &Vsock{CID: 3, Path: sock}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()
	serveRequests(t, ln, testguest.NewHeap(cfg.Seed, cfg.HeapMB), testguest.HeapPages(cfg.HeapMB), 100, done, &console)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("VM after exit: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the guest did not power off after exit")
	}
}

func TestPauseResume(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 2 // filling takes a few seconds under the emulator
	for _, n := range []int{1, 2} {
		var console syncBuf
		vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, VCPUs: n, Console: &console, HideEmulatorUnsafe: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		done := make(chan error, 1)
		go func() { done <- vm.Run(ctx) }()
		waitConsole(t, &console, "config:", done, 2*time.Minute)
		// Paused mid-work: nothing moves.
		if err := vm.Pause(); err != nil {
			t.Fatal(err)
		}
		r1, _ := vm.VCPUs()[0].Regs()
		out1 := console.String()
		time.Sleep(300 * time.Millisecond) // a window to see the guest not run, not ordering
		r2, _ := vm.VCPUs()[0].Regs()
		if r1 != r2 || console.String() != out1 {
			t.Fatalf("%d vCPUs: the guest ran while paused (rip %#x -> %#x)", n, r1.RIP, r2.RIP)
		}
		vm.Resume()
		waitConsole(t, &console, "\nready\n", done, 2*time.Minute)
		// Pausing an idle guest (blocked in hlt) works too.
		if err := vm.Pause(); err != nil {
			t.Fatal(err)
		}
		vm.Resume()
		cancel()
		if err := waitStopped(t, done); !errors.Is(err, context.Canceled) {
			t.Fatalf("stop: %v", err)
		}
		if err := vm.Pause(); !errors.Is(err, ErrStopped) {
			t.Fatalf("pause after stop: %v", err)
		}
		vm.Close()
	}
}

// serveRequests accepts the guest's vsock connection on ln and checks n
// requests against the model; then it asks the guest to exit.
func serveRequests(t *testing.T, ln net.Listener, heap *testguest.Heap, pages uint64, n uint64, done <-chan error, console *syncBuf) {
	t.Helper()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	next := func() net.Conn {
		select {
		case c := <-accepted:
			c.SetDeadline(time.Now().Add(3 * time.Minute))
			return c
		case err := <-done:
			t.Fatalf("VM ended before connecting: %v\n%s", err, console.String())
		case <-time.After(3 * time.Minute):
			t.Fatalf("the guest never connected\n%s", console.String())
		}
		return nil
	}
	conn := next()
	defer func() { conn.Close() }()
	for i := uint64(1); i <= n; i++ {
		req := testguest.TouchRequest(i, (i*37)%pages, 1+i%5, 1+i%3, i%4 == 0)
		got, err := testguest.Call(conn, req)
		if err != nil && i == 1 {
			// A restored guest reconnects once it sees the transport
			// reset; its first connection may be cut before any request.
			conn.Close()
			conn = next()
			got, err = testguest.Call(conn, req)
		}
		if err != nil {
			t.Fatalf("request %d: %v\n%s", i, err, console.String())
		}
		if want := heap.Apply(req); got != want {
			t.Fatalf("request %d: got %+v, want %+v", i, got, want)
		}
	}
	if _, err := testguest.Call(conn, testguest.ExitRequest(n+1)); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

// TestSnapshotRestoreEager pauses the test guest at its snapshot point,
// saves the VM state and memory, restores both into a fresh VM, and checks
// that the restored guest carries on: it connects over vsock (its
// connection state was reset) and answers 100 requests from the heap it
// filled before the snapshot.
func TestSnapshotRestoreEager(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	dir := t.TempDir()
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	sock := filepath.Join(dir, "v.sock")
	var console1 syncBuf
	vm1, done1, cancel := bootPaused(t, Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, VCPUs: 2, Console: &console1, HideEmulatorUnsafe: true,
		Vsock: &Vsock{CID: 3, Path: sock}}, &console1)
	defer cancel()
	st, err := vm1.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mem := bytes.Clone(vm1.Memory())
	before := console1.String()
	cancel()
	waitStopped(t, done1)
	vm1.Close()
	t.Logf("saved %d vCPUs, %d virtio devices, state %d bytes, at rip %#x", len(st.VCPUs), len(st.Virtio), len(blob), st.VCPUs[0].Regs.RIP)

	st2, err := UnmarshalState(blob)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", fmt.Sprintf("%s2_%d", sock, cfg.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var console2 syncBuf
	vm2, err := Restore(Config{Kernel: elf, Console: &console2, HideEmulatorUnsafe: true, Vsock: &Vsock{CID: 3, Path: sock + "2"}}, st2,
		Fill(func(m []byte) error { copy(m, mem); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel2()
	done2 := make(chan error, 1)
	go func() { done2 <- vm2.Run(ctx2) }()
	serveRequests(t, ln, testguest.NewHeap(cfg.Seed, cfg.HeapMB), testguest.HeapPages(cfg.HeapMB), 100, done2, &console2)
	select {
	case err := <-done2:
		if err != nil {
			t.Fatalf("restored VM: %v\n%s", err, console2.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("the restored guest did not power off")
	}
	if strings.Contains(console2.String(), "snapfaas testguest") {
		t.Fatalf("the restored guest booted again instead of continuing:\n%s", console2.String())
	}
	t.Logf("before the snapshot:\n%safter restore:\n%s", before, console2.String())
}

// bootPaused boots cfg (PauseAt 124 set here) and returns the VM paused at
// the test guest's snapshot point, with its Run's result channel and the
// cancel that stops it; console is cfg's console, shown on failure.
func bootPaused(t *testing.T, cfg Config, console *syncBuf) (*VM, chan error, context.CancelFunc) {
	t.Helper()
	cfg.PauseAt = 124
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()
	select {
	case <-vm.Paused():
	case err := <-done:
		cancel()
		vm.Close()
		t.Fatalf("VM ended before its snapshot point: %v\n%s", err, console.String())
	}
	return vm, done, cancel
}
