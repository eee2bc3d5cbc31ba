package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
	"github.com/snapfaas/snapfaas/uffd"
)

// startSidecar builds snapstore and runs `snapstore serve` on store in its
// own process (a sidecar must never share a process with the memory it
// serves). It returns the socket path and the process.
func startSidecar(t *testing.T, store string) (string, *exec.Cmd) {
	t.Helper()
	bin := snapstoreBin(t)
	sock := filepath.Join(t.TempDir(), "pages.sock")
	cmd := exec.Command(bin, "--store", store, "serve", "--socket", sock)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sidecar log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar never listened:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// snapshotTestGuest boots the test guest to its snapshot point, stores its
// memory and state as snapshot name, and returns the state.
func snapshotTestGuest(t *testing.T, elf, store, name string, cfg testguest.Config) []byte {
	t.Helper()
	var console syncBuf
	vm, done, cancel := bootPaused(t, Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, Console: &console, HideEmulatorUnsafe: true,
		Vsock: &Vsock{CID: 3, Path: filepath.Join(t.TempDir(), "boot.sock")}}, &console)
	defer vm.Close()
	defer cancel()
	st, err := vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := pagestore.Open(store, pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	mem := vm.Memory()
	if _, err := s.ImportMemory(context.Background(), name, bytes.NewReader(mem), int64(len(mem)), pagestore.MemoryOptions{VMState: blob}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	cancel()
	waitStopped(t, done)
	return blob
}

func skipWithoutUffd(t *testing.T) {
	t.Helper()
	if _, _, err := uffd.SupportedFeatures(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
}

// TestLazyRestoreThroughSidecar stores a snapshot of the test guest, then
// restores it with memory served page by page by `snapstore serve`: the
// restored guest answers 100 requests; then the same with the working set
// recorded and prefetched; then the sidecar is killed under a running VM,
// which must stop with an error instead of hanging.
func TestLazyRestoreThroughSidecar(t *testing.T) {
	skipWithoutKVM(t)
	skipWithoutUffd(t)
	elf := buildTestGuest(t)
	store := filepath.Join(t.TempDir(), "store")
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	blob := snapshotTestGuest(t, elf, store, "tg", cfg)
	sock, sidecar := startSidecar(t, store)

	// restore runs a lazily restored VM. With requests > 0 it serves them
	// and returns the session's metrics. With none the sidecar dies under
	// the VM with a page fault pending: it is stopped before the VM runs,
	// killed (killedAt) once a thread of the VM waits for a page, and the
	// VM must then stop by itself (stoppedAt).
	var killedAt, stoppedAt time.Time
	restore := func(h pageserver.Handoff, requests uint64) (pageserver.Metrics, error) {
		st, err := UnmarshalState(blob)
		if err != nil {
			t.Fatal(err)
		}
		vsock := filepath.Join(t.TempDir(), "v.sock")
		ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", vsock, cfg.Port))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var console syncBuf
		var client *pageserver.Client
		vm, err := Restore(Config{Kernel: elf, Console: &console, HideEmulatorUnsafe: true, Vsock: &Vsock{CID: 3, Path: vsock}}, st, func(vm *VM) (err error) {
			client, _, err = vm.LazyMemory(sock, "tg", h)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if requests == 0 {
			if err := sidecar.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatalf("stop the sidecar: %v", err)
			}
			// Before vm.Close: munmap waits for a stopped sidecar.
			defer sidecar.Process.Signal(syscall.SIGKILL)
		}
		done := make(chan error, 1)
		go func() { done <- vm.Run(ctx) }()
		if requests == 0 {
			if err := waitUserfault(time.Minute); err != nil {
				t.Fatal(err)
			}
			if err := sidecar.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatalf("kill the sidecar: %v", err)
			}
			killedAt = time.Now()
			err := waitRun(t, done, time.Minute, "stop by itself after the sidecar was killed")
			stoppedAt = time.Now()
			return pageserver.Metrics{}, err
		}
		serveRequests(t, ln, testguest.NewHeap(cfg.Seed, cfg.HeapMB), testguest.HeapPages(cfg.HeapMB), requests, done, &console)
		if err := waitRun(t, done, time.Minute, "power off after the exit request"); err != nil {
			return pageserver.Metrics{}, err
		}
		return client.Close()
	}

	m, err := restore(pageserver.Handoff{Client: "lazy", Record: true}, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lazy: %v", m)
	if m.Faults == 0 || m.Recorded == 0 {
		t.Fatalf("no faults served or recorded: %v", m)
	}
	m2, err := restore(pageserver.Handoff{Client: "prefetch", Prefetch: true}, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prefetch: %v", m2)
	if m2.WorkingSet != m.Recorded || m2.Prefetched == 0 {
		t.Fatalf("working set %d (recorded %d), prefetched %d", m2.WorkingSet, m.Recorded, m2.Prefetched)
	}

	// Guest memory touched before the handoff would shadow the snapshot's
	// pages: LazyMemory refuses.
	st2, err := UnmarshalState(blob)
	if err != nil {
		t.Fatal(err)
	}
	vmCfg := Config{Kernel: elf, HideEmulatorUnsafe: true, Vsock: &Vsock{CID: 3, Path: filepath.Join(t.TempDir(), "t.sock")}}
	if _, err := Restore(vmCfg, st2, func(vm *VM) error {
		vm.Memory()[5<<12] = 1
		_, _, err := vm.LazyMemory(sock, "tg", pageserver.Handoff{Client: "touched"})
		return err
	}); !touchedPageReported(err, 5) {
		t.Fatalf("LazyMemory over touched memory: %v, want page 5 (or a page of its transparent huge page) already present", err)
	}
	// After Restore has restored the VM's state it is too late, on any
	// KVM: restoring state may have had KVM write guest memory.
	if vm, err := Restore(vmCfg, st2, nil); err != nil {
		t.Fatal(err)
	} else {
		if _, _, err := vm.LazyMemory(sock, "tg", pageserver.Handoff{Client: "late"}); !errors.Is(err, ErrLazyTooLate) {
			t.Fatalf("LazyMemory after Restore: %v, want ErrLazyTooLate", err)
		}
		vm.Close()
	}

	// The sidecar dies under a running VM with a page fault pending: the
	// VM stops with an error instead of hanging.
	_, err = restore(pageserver.Handoff{Client: "doomed"}, 0)
	if !errors.Is(err, ErrPageServerLost) {
		t.Fatalf("VM after the sidecar died: %v; want ErrPageServerLost", err)
	}
	t.Logf("the VM stopped %s after the sidecar was killed: %v", stoppedAt.Sub(killedAt).Round(time.Millisecond), err)
}

// waitUserfault waits until a thread of this process (a vCPU, or a device
// touching guest memory) sleeps in handle_userfault: it waits for a page
// the page server has not served.
func waitUserfault(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, task := range tasks {
			if b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "wchan")); err == nil && string(b) == "handle_userfault" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no thread waiting in handle_userfault within %v of the restored VM starting with the sidecar stopped", timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// touchedPageReported says whether err reports that page, or another page
// of the 2 MiB transparent huge page that touching it may have populated
// (THP "always", as in the L1 guests of internal/nestedkvm), as present.
func touchedPageReported(err error, page int) bool {
	if err == nil {
		return false
	}
	m := regexp.MustCompile(`guest page (\d+) is already present`).FindStringSubmatch(err.Error())
	if m == nil {
		return false
	}
	got, _ := strconv.Atoi(m[1])
	return got/512 == page/512
}
