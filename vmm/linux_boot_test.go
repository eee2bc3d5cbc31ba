package vmm

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/internal/realkvm"
	"github.com/snapfaas/snapfaas/vmm/arch"
)

// TestLinuxBoot boots Debian's current cloud kernel (a stock bzImage,
// fetched with apt-get download by scripts/fetch-kernel.sh) through our
// loader, zero page, e820 map, cmdline and ACPI tables, with 2 vCPUs, on
// real KVM (on a PVM host, in an L1 guest: internal/realkvm). It checks
// what the kernel prints — its own "Command line:" echoing ours,
// "BIOS-e820:" lines matching our map, "Hypervisor detected: KVM", our
// RSDP and the MADT's 2 CPUs (this kernel has no MP-table parser), both
// CPUs brought up — and that with no root file system it panics ("VFS:
// Unable to mount root fs"), reboots (panic=1) and the VM exits cleanly.
func TestLinuxBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a stock kernel; not in -short")
	}
	kernel, _ := linuxGuestFiles(t)
	if realkvm.Delegated(t) {
		return
	}

	const memMiB, vcpus = 256, 2
	cmdline := "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=1 pci=off snapfaas.smoke=1"
	// 2-vCPU guests stall now and then inside L1's KVM under QEMU TCG
	// (both vCPU threads in KVM_RUN, the guest silent; QEMU as the VMM in
	// L1 hangs the same way: docs/LINUX-BOOT.md). A boot that prints
	// nothing for quietLimit is stopped and, once, booted again, saying so.
	var log string
	var runErr error
	for attempt := 1; ; attempt++ {
		var stalled bool
		log, runErr, stalled = bootWatched(t, Config{Kernel: kernel, Cmdline: cmdline, MemMiB: memMiB, VCPUs: vcpus, HideEmulatorUnsafe: true}, quietLimit)
		if !stalled {
			break
		}
		if attempt == 2 {
			t.Fatalf("the kernel stalled twice (no console output for %s); last output:\n%s", quietLimit, tail(log, 20))
		}
		t.Logf("boot %d stalled (no console output for %s), booting again; its last output:\n%s", attempt, quietLimit, tail(log, 10))
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
	// The CMOS clock (devices.CMOS) answers: rtc_cmos does not find it
	// "broken or not accessible" (every port reading 0xff, the
	// update-in-progress flag stuck, polled for ~10 s). Its probe still
	// fails, on requesting ISA IRQ 8, which this platform does not map
	// (docs/LINUX-BOOT.md).
	if strings.Contains(log, "rtc_cmos rtc_cmos: broken") || !strings.Contains(log, "rtc_cmos") {
		t.Errorf("rtc_cmos found no working CMOS clock; its lines:\n%s", grepLines(log, "rtc"))
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

	if runErr != nil {
		t.Fatalf("VM failed: %v; output:\n%s", runErr, tail(log, 30))
	}
	if !strings.Contains(log, "Unable to mount root fs") && !strings.Contains(log, "Kernel panic") {
		t.Errorf("clean exit without reaching the root mount; output:\n%s", tail(log, 30))
	}
	if want := fmt.Sprintf("smp: Brought up 1 node, %d CPUs", vcpus); !strings.Contains(log, want) {
		t.Errorf("no %q: the application processors did not come up", want)
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

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// quietLimit is how long a booting stock kernel may print nothing: a
// normal boot in L1 is never quiet for more than about 10 s.
const quietLimit = 3 * time.Minute

// bootWatched boots cfg (its Console replaced) until the VM ends or its
// console has been quiet for quiet (stalled), and returns the console.
func bootWatched(t *testing.T, cfg Config, quiet time.Duration) (log string, err error, stalled bool) {
	t.Helper()
	var console syncBuf
	cfg.Console = &console
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- vm.Run(ctx) }()
	last, lastChange := -1, time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err = <-done:
			log = console.String()
			t.Logf("ran %s; the kernel printed %d lines; the VM ended with: %v", time.Since(start).Round(time.Second), strings.Count(log, "\n"), err)
			if errors.Is(err, context.Canceled) && !stalled {
				t.Fatalf("the kernel neither failed nor finished in 12 minutes; last output:\n%s", tail(log, 20))
			}
			return log, err, stalled
		case <-tick.C:
			if time.Since(start) > 12*time.Minute {
				cancel()
			}
			if n := len(console.String()); n != last {
				last, lastChange = n, time.Now()
			} else if !stalled && time.Since(lastChange) > quiet {
				stalled = true
				cancel()
			}
		}
	}
}

// TestBootWatchedStopsASilentGuest: the stall watch of TestLinuxBoot stops
// a guest that has gone quiet (the test guest with no vsock device prints
// its banner, then waits for a connection) and says it stalled.
func TestBootWatchedStopsASilentGuest(t *testing.T) {
	elf := buildTestGuest(t)
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 0
	start := time.Now()
	log, err, stalled := bootWatched(t, Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 32, HideEmulatorUnsafe: true}, 2*time.Second)
	if !stalled || !errors.Is(err, context.Canceled) || log == "" {
		t.Fatalf("stalled=%v err=%v after %s; console:\n%s", stalled, err, time.Since(start).Round(time.Millisecond), tail(log, 10))
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("stopped after %s, want about 2 s of silence", d)
	}
}
