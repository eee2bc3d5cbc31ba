package vmm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/linuxinit"
	"github.com/snapfaas/snapfaas/internal/progress"
	"github.com/snapfaas/snapfaas/internal/realkvm"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
)

// TestLinuxSnapshotRestore boots Debian's stock cloud kernel with an
// initramfs whose /init (guest/linuxinit) fills 8 MiB and writes the
// snapshot port, with 1 and with 2 vCPUs; the VM pauses there and is
// saved, then restored three ways — memory copied in (eager), served by
// the sidecar on fault (lazy, recording the working set), and served with
// that working set prefetched (lazy + WS) — and each restored kernel must
// carry on in user space on every vCPU: init checks its 8 MiB on each
// online CPU, prints the checksums and reboots, and the kernel does not
// boot again.
//
// It needs hardware KVM; on a PVM host it runs in an L1 guest with real
// KVM (internal/realkvm). The kernel and initramfs: linuxGuestFiles.
func TestLinuxSnapshotRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a stock kernel; not in -short")
	}
	kernel, initrd := linuxGuestFiles(t)
	if realkvm.Delegated(t) {
		return
	}
	for _, vcpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("%dvcpu", vcpus), func(t *testing.T) {
			if vcpus > 1 && os.Getenv("SNAPFAAS_LINUX_SMP") != "1" {
				// Open in issue 11: 2-vCPU stock-kernel VMs in L1 (QEMU
				// TCG's SVM) stall now and then with both vCPU threads
				// inside KVM_RUN, with or without -race, and QEMU as the
				// VMM in L1 hung the same way (docs/LINUX-BOOT.md).
				t.Skip("2-vCPU stock-kernel snapshots stall intermittently inside L1's KVM (issue 11, docs/LINUX-BOOT.md); SNAPFAAS_LINUX_SMP=1 runs them")
			}
			linuxSnapshotRestore(t, kernel, initrd, vcpus)
		})
	}
}

func linuxSnapshotRestore(t *testing.T, kernel, initrd string, vcpus int) {
	const cmdline = "console=ttyS0 reboot=k panic=1 pci=off nomodule"
	var console syncBuf
	start := time.Now()
	vm, done, cancel := bootPaused(t, Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, MemMiB: 256, VCPUs: vcpus, Console: &console}, &console)
	booted := time.Since(start)
	st, err := vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	// The PICs: masked by the VMM (maskPICs), never programmed by Linux on
	// a hardware-reduced ACPI platform, so none of our device interrupts
	// reached a vCPU through them as a stray vector.
	for i, name := range []string{"master", "slave"} {
		p := st.PIC[i].PIC()
		t.Logf("PIC %s at the snapshot point: IRR %#02x IMR %#02x ISR %#02x base %#02x", name, p.IRR, p.IMR, p.ISR, p.IRQBase)
		if p.ISR != 0 {
			t.Errorf("PIC %s: ISR %#02x: an interrupt was delivered through the PIC (vector base %#x)", name, p.ISR, p.IRQBase)
		}
	}
	// The kernel saw no async page faults in CPUID (guestCPUID), so it
	// left them off: a lazily restored page must be waited for.
	for i, v := range st.VCPUs {
		found := false
		for _, m := range v.MSRs {
			if m.Index == msrKVMAsyncPFEn {
				found = true
				if m.Data != 0 {
					t.Errorf("vCPU %d: MSR_KVM_ASYNC_PF_EN = %#x: the guest enabled async page faults", i, m.Data)
				}
			}
		}
		if !found {
			t.Errorf("vCPU %d: MSR_KVM_ASYNC_PF_EN (%#x) is not in the saved state", i, msrKVMAsyncPFEn)
		}
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
	t.Logf("stock kernel with %d vCPUs booted to init's snapshot point in %s", vcpus, booted.Round(time.Millisecond))

	const name = "linux"
	store := filepath.Join(t.TempDir(), "store")
	s, err := pagestore.Open(store, pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportMemory(context.Background(), name, bytes.NewReader(mem), int64(len(mem)), pagestore.MemoryOptions{VMState: blob}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	sock, _ := startSidecar(t, store)

	var want []string
	for cpu := range vcpus {
		want = append(want, linuxinit.AfterOn(cpu))
	}
	for _, mode := range []struct {
		name string
		lazy bool
		h    pageserver.Handoff
	}{
		{"eager", false, pageserver.Handoff{}},
		{"lazy", true, pageserver.Handoff{Client: "linux", Record: true}},
		{"lazy + WS", true, pageserver.Handoff{Client: "linux", Prefetch: true}},
	} {
		st, err := UnmarshalState(blob)
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuf
		memory := Fill(func(m []byte) error { copy(m, mem); return nil })
		var client *pageserver.Client
		if mode.lazy {
			memory = func(vm *VM) (err error) {
				client, _, err = vm.LazyMemory(sock, name, mode.h)
				return err
			}
		}
		t0 := time.Now()
		vm, err := Restore(Config{Kernel: kernel, Console: &out}, st, memory)
		if err != nil {
			t.Fatalf("%s restore: %v", mode.name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		runErr := vm.Run(ctx)
		cancel()
		took := time.Since(t0)
		var m pageserver.Metrics
		if client != nil {
			m, _ = client.Close()
		}
		vm.Close()
		log := out.String()
		ok := runErr == nil && !strings.Contains(log, "Linux version") && !strings.Contains(log, linuxinit.Up)
		for _, w := range want {
			ok = ok && strings.Count(log, w) == 1
		}
		if !ok {
			t.Fatalf("%s restore: %v; want %q, once each, without a new boot; console:\n%s", mode.name, runErr, want, tail(log, 30))
		}
		t.Logf("%s restore: init carried on on %d vCPUs and the VM rebooted cleanly in %s; %d faults, %d prefetched, %s decoded",
			mode.name, vcpus, took.Round(time.Millisecond), m.Faults, m.Prefetched, progress.Bytes(int64(m.Decompressed)))
		switch {
		case mode.h.Record && m.Recorded == 0:
			t.Errorf("%s restore recorded no working set: %+v", mode.name, m)
		case mode.h.Prefetch && (m.Prefetched == 0 || m.WorkingSet == 0):
			t.Errorf("%s restore prefetched nothing: %+v", mode.name, m)
		}
	}
}

// msrKVMAsyncPFEn is MSR_KVM_ASYNC_PF_EN: the guest's async page fault area
// and enable bit.
const msrKVMAsyncPFEn = 0x4b564d02
