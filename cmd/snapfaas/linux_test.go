package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/linuxinit"
	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/internal/realkvm"
)

// TestLinuxRun is TestRunSnapshotAndRestore with a stock kernel: Debian's
// cloud kernel boots an initramfs whose /init (guest/linuxinit in serve
// mode) loads the virtio-mmio and vsock modules, fills the test guest's
// heap and serves its requests over vsock. snapfaas run boots it and
// stores a snapshot at its snapshot point, then restores that snapshot
// lazily, lazily recording and then prefetching the working set, and
// eagerly; every run must answer as testguest's model says. snapfaas vmm
// boots the same pair and is interrupted.
//
// It needs hardware KVM; on a PVM host it runs in an L1 guest with real
// KVM (internal/realkvm). The kernel and initramfs are made on the host
// first (L1 has no network for apt-get download): scripts/fetch-kernel.sh
// fetches the kernel and its modules (linuxinit.ModulesDir), and they
// reach L1 as SNAPFAAS_KERNEL and SNAPFAAS_SERVE_INITRD, which a machine
// without apt or the go command can also set to prebuilt files.
func TestLinuxRun(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a stock kernel; not in -short")
	}
	kernel, initrd := linuxServeFiles(t)
	if realkvm.Delegated(t) {
		return
	}
	cfg := testguest.Config{HeapMB: 16, Seed: 7, Port: testguest.DefaultPort}
	cmdline := "console=ttyS0 reboot=k panic=1 pci=off " + linuxinit.Serve + " " + cfg.Cmdline()

	store := filepath.Join(t.TempDir(), "store")
	stopSidecarAtCleanup(t, store)
	pages := testguest.HeapPages(cfg.HeapMB)
	reqs := []testguest.Request{
		testguest.TouchRequest(1, 3, 4, 2, false),
		testguest.TouchRequest(2, 10, 2, 1, true),
		testguest.TouchRequest(3, 10, 1, 1, false),
		{ID: 4, Op: testguest.OpTouch, Start: 0, Count: pages, Stride: 1, Bytes: 64},
		testguest.TouchRequest(5, pages-1, 3, 1, false), // out of range
		testguest.ReadRequest(6, 0, 1, 1, 0),            // no initrd
	}
	run := func(args ...string) string {
		t.Helper()
		heap := testguest.NewHeap(cfg.Seed, cfg.HeapMB)
		var in strings.Builder
		var want []string
		for _, r := range reqs {
			b, _ := json.Marshal(r)
			in.Write(append(b, '\n'))
			w, _ := json.Marshal(heap.Apply(r))
			want = append(want, string(w))
		}
		start := time.Now()
		cmd := exec.Command(bin, append([]string{"run", "--store", store}, args...)...)
		cmd.Stdin = strings.NewReader(in.String())
		var so, se syncBuf
		cmd.Stdout, cmd.Stderr = &so, &se
		runWithin(t, cmd, 10*time.Minute, fmt.Sprintf("snapfaas run %v", args), &se)
		if got := strings.Split(strings.TrimSpace(so.String()), "\n"); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("snapfaas run %v answered\n%s\nwant\n%s\nstderr:\n%s", args, so.String(), strings.Join(want, "\n"), tailLines(se.String(), 60))
		}
		var ready string
		for _, l := range strings.Split(se.String(), "\n") {
			if strings.HasPrefix(l, "VM ready in") || strings.HasPrefix(l, "snapshot ") {
				ready += "; " + l
			}
		}
		t.Logf("run %v: %d answers as the model says, in %s%s", args, len(want), time.Since(start).Round(time.Millisecond), ready)
		return se.String()
	}
	// The console (stderr) shows init's own lines: user space output
	// reaches the UART (its IRQ comes from the VMM's ACPI tables).
	if se := run("--kernel", kernel, "--initrd", initrd, "--mem_size", "256", "--cmdline", cmdline, "--dump_dir", "fn"); !strings.Contains(se, linuxinit.SnapshotPoint) {
		t.Fatalf("init's %q is not on the console:\n%s", linuxinit.SnapshotPoint, tailLines(se, 40))
	}
	run("--load_dir", "fn")
	if se := run("--load_dir", "fn", "--dump_ws"); !strings.Contains(se, "working set: ") {
		t.Fatalf("dump_ws recorded no working set:\n%s", tailLines(se, 30))
	}
	run("--load_dir", "fn", "--load_ws")
	run("--load_dir", "fn", "--copy_base")

	// snapfaas vmm boots the same pair to init (no vsock device: init keeps
	// trying to connect) and stops on Ctrl-C.
	cmd := exec.Command(bin, "vmm", "--kernel", kernel, "--initrd", initrd, "--mem_size", "256", "--cmdline", cmdline)
	var so syncBuf
	cmd.Stdout, cmd.Stderr = &so, &so
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	start := time.Now()
	for !strings.Contains(so.String(), linuxinit.Up) {
		select {
		case err := <-exited:
			t.Fatalf("vmm ended (%v) before init's %q:\n%s", err, linuxinit.Up, tailLines(so.String(), 40))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("no %q after 5 minutes:\n%s", linuxinit.Up, tailLines(so.String(), 40))
		}
	}
	t.Logf("vmm: %q after %s", linuxinit.Up, time.Since(start).Round(time.Millisecond))
	cmd.Process.Signal(syscall.SIGINT)
	<-exited
	if !strings.Contains(so.String(), "interrupted") {
		t.Fatalf("vmm did not report the interrupt:\n%s", tailLines(so.String(), 20))
	}
}

// linuxServeFiles returns the stock kernel and linuxinit's serve-mode
// initramfs, made on this host, and exports them for an L1 run.
func linuxServeFiles(t *testing.T) (kernel, initrd string) {
	t.Helper()
	kernel, err := linuxinit.StockKernel()
	if err != nil {
		t.Fatal(err)
	}
	initrd = os.Getenv("SNAPFAAS_SERVE_INITRD")
	if initrd == "" {
		t0 := time.Now()
		initrd = filepath.Join(os.Getenv("SNAPFAAS_CLI_DIR"), "linuxinit-serve.cpio")
		if err := linuxinit.BuildServe(initrd, kernel); err != nil {
			t.Fatal(err)
		}
		t.Logf("initramfs built in %s", time.Since(t0).Round(time.Millisecond))
	}
	os.Setenv("SNAPFAAS_KERNEL", kernel)
	os.Setenv("SNAPFAAS_SERVE_INITRD", initrd)
	return kernel, initrd
}
