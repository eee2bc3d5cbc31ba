package vmm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/linuxinit"
	"github.com/snapfaas/snapfaas/internal/progress"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
)

// TestStockLinuxSnapshotRestore boots Debian's stock cloud kernel with an
// initramfs whose /init (guest/linuxinit) fills 8 MiB and writes the
// snapshot port; the VM pauses there and is saved, then restored twice —
// memory copied in, and served lazily by the sidecar — and each restored
// kernel must carry on in user space: init checks its 8 MiB, prints the
// checksum and reboots, and the kernel does not boot again.
//
// It needs hardware KVM: under KVM's instruction emulator (PVM, this
// project's machines) a stock kernel dies at FPU initialisation long
// before user space, so there the test skips and says so. Set
// SNAPFAAS_KERNEL and SNAPFAAS_INITRD to use prebuilt files (a machine
// without the go command or apt).
func TestStockLinuxSnapshotRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a stock kernel; not in -short")
	}
	skipWithoutKVM(t)
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		t.Skip("PVM host (kvm_pvm loaded): a stock kernel cannot reach user space under KVM's instruction emulator; run this on hardware KVM")
	}
	kernel := os.Getenv("SNAPFAAS_KERNEL")
	if kernel == "" {
		out, err := exec.Command("../scripts/fetch-kernel.sh").Output()
		if err != nil {
			t.Skipf("cannot fetch Debian's cloud kernel (apt-get download): %v", err)
		}
		kernel = strings.TrimSpace(string(out))
	}
	initrd := os.Getenv("SNAPFAAS_INITRD")
	if initrd == "" {
		initrd = filepath.Join(t.TempDir(), "initrd")
		if err := linuxinit.Build(initrd); err != nil {
			t.Fatal(err)
		}
	}
	const cmdline = "console=ttyS0 reboot=k panic=1 pci=off nomodule"
	var console syncBuf
	start := time.Now()
	vm, done, cancel := bootPaused(t, Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, MemMiB: 256, Console: &console}, &console)
	booted := time.Since(start)
	st, err := vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mem := bytes.Clone(vm.Memory())
	cancel()
	<-done
	vm.Close()
	if !strings.Contains(console.String(), linuxinit.SnapshotPoint) {
		t.Fatalf("paused before init's snapshot point:\n%s", tail(console.String(), 30))
	}
	t.Logf("stock kernel booted to init's snapshot point in %s", booted.Round(time.Millisecond))

	store := filepath.Join(t.TempDir(), "store")
	s, err := pagestore.Open(store, pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportMemory(context.Background(), "linux", bytes.NewReader(mem), int64(len(mem)), pagestore.MemoryOptions{VMState: blob}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	sock, _ := startSidecar(t, store)

	want := linuxinit.After + linuxinit.Checksum()
	for _, lazy := range []bool{false, true} {
		st, err := UnmarshalState(blob)
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuf
		var fill func([]byte) error
		if !lazy {
			fill = func(m []byte) error { copy(m, mem); return nil }
		}
		t0 := time.Now()
		vm, err := Restore(Config{Kernel: kernel, Console: &out}, st, fill)
		if err != nil {
			t.Fatal(err)
		}
		var client *pageserver.Client
		if lazy {
			if client, _, err = vm.LazyMemory(sock, "linux", pageserver.Handoff{Client: "linux"}); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		runErr := vm.Run(ctx)
		cancel()
		took := time.Since(t0)
		if client != nil {
			m, _ := client.Close()
			t.Logf("lazy restore: %d faults, %s decoded", m.Faults, progress.Bytes(int64(m.Decompressed)))
		}
		vm.Close()
		log := out.String()
		if runErr != nil || !strings.Contains(log, want) || strings.Contains(log, "Linux version") || strings.Contains(log, linuxinit.Up) {
			t.Fatalf("restored (lazy=%v) VM: %v; want %q, once, without a new boot; console:\n%s", lazy, runErr, want, tail(log, 30))
		}
		t.Logf("restored (lazy=%v): init carried on and the VM rebooted cleanly in %s", lazy, took.Round(time.Millisecond))
	}
}
