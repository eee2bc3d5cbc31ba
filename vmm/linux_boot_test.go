package vmm

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/vmm/arch"
)

// TestStockKernelBootPath boots Debian's current cloud kernel (a stock
// bzImage, fetched with apt-get download by scripts/fetch-kernel.sh) through
// our loader, zero page, e820 map, cmdline and ACPI tables, with 2 vCPUs.
//
// Under KVM's instruction emulator (PVM hosts, like this project's machines)
// a stock kernel runs at ~2 M instructions/s and dies at FPU initialisation
// after a few minutes; the test asserts what the kernel prints before that
// — its own "Command line:" echoing ours, "BIOS-e820:" lines matching our
// map, "Hypervisor detected: KVM", our RSDP and the MADT's 2 CPUs (this
// kernel has no MP-table parser) — and then our clear emulation-failure
// error. On hardware KVM the same kernel gets much further: it brings up
// both CPUs, with no root file system it panics ("VFS: Unable to mount
// root fs"), reboots (panic=1) and the VM exits cleanly; the test accepts
// that and says so.
func TestStockKernelBootPath(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a stock kernel for minutes under emulation; not in -short")
	}
	skipWithoutKVM(t)
	out, err := exec.Command("../scripts/fetch-kernel.sh").Output()
	if err != nil {
		t.Skipf("cannot fetch Debian's cloud kernel (apt-get download): %v", err)
	}
	kernel := strings.TrimSpace(string(out))

	const memMiB, vcpus = 256, 2
	cmdline := "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=1 pci=off snapfaas.smoke=1"
	var console syncBuf
	vm, err := New(Config{Kernel: kernel, Cmdline: cmdline, MemMiB: memMiB, VCPUs: vcpus, Console: &console, HideEmulatorUnsafe: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	start := time.Now()
	runErr := vm.Run(ctx)
	log := console.String()
	t.Logf("ran %s; the kernel printed %d lines; the VM ended with: %v", time.Since(start).Round(time.Second), strings.Count(log, "\n"), runErr)
	if errors.Is(runErr, context.DeadlineExceeded) {
		t.Fatalf("the kernel neither failed nor finished in 12 minutes; last output:\n%s", tail(log, 20))
	}

	if !strings.Contains(log, "Command line: "+cmdline) {
		t.Errorf("the kernel did not echo our command line; output:\n%s", tail(log, 30))
	}
	re := regexp.MustCompile(`BIOS-e820: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] usable`)
	var got []string
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		got = append(got, m[1]+"-"+m[2])
	}
	var want []string
	for _, e := range arch.E820Map(memMiB << 20) {
		if e.Type != arch.E820RAM {
			continue
		}
		want = append(want, fmt.Sprintf("%#016x-%#016x", e.Addr, e.Addr+e.Size-1))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("BIOS-e820 lines %v, want our map %v", got, want)
	}
	if !strings.Contains(log, "Hypervisor detected: KVM") {
		t.Error(`no "Hypervisor detected: KVM"`)
	}
	// ACPI: the kernel finds our RSDP and takes the vCPUs from the MADT.
	for _, want := range []string{
		fmt.Sprintf("ACPI: RSDP 0x%016X", arch.RSDPStart),
		"ACPI: Using ACPI (MADT) for SMP configuration information",
		fmt.Sprintf("smpboot: Allowing %d CPUs, 0 hotplug CPUs", vcpus),
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q; output:\n%s", want, tail(log, 30))
		}
	}

	var ee *ExitError
	switch {
	case errors.As(runErr, &ee):
		// The emulator's end: a clear error naming the failure and the
		// registers, not a hang.
		if !errors.Is(ee, ErrEmulation) && !errors.Is(ee, ErrTripleFault) {
			t.Errorf("unexpected exit: %v", ee)
		}
		t.Logf("emulated host: the kernel stopped as expected after %q", lastLine(log))
	case runErr == nil:
		// Hardware KVM: the kernel got past FPU init to the root mount.
		if !strings.Contains(log, "Unable to mount root fs") && !strings.Contains(log, "Kernel panic") {
			t.Errorf("clean exit without reaching the root mount; output:\n%s", tail(log, 30))
		}
		if want := fmt.Sprintf("smp: Brought up 1 node, %d CPUs", vcpus); !strings.Contains(log, want) {
			t.Errorf("no %q: the application processors did not come up", want)
		}
		t.Log("hardware KVM: the stock kernel booted to the root mount and rebooted cleanly")
	default:
		t.Fatalf("VM failed: %v", runErr)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func lastLine(s string) string { return tail(s, 1) }
