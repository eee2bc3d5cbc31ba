package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/vmm/kvm"
)

var bin string

func TestMain(m *testing.M) {
	dir, _ := os.MkdirTemp("", "snapfaas-cli")
	bin = filepath.Join(dir, "snapfaas")
	// snapstore next to snapfaas, where run looks for it.
	if out, err := exec.Command("go", "build", "-o", dir+"/", ".", "../snapstore").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
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
	// A guest that triple-faults: the reason and registers, exit 1.
	out, err := exec.Command(bin, "vmm", "--kernel", elf, "--cmdline", "testguest.heap_mb=0 testguest.fault=triple").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "triple fault") || !strings.Contains(string(out), "rip=") {
		t.Fatalf("triple fault: %v\n%s", err, out)
	}
	// A healthy boot prints the banner on stdout; Ctrl-C stops it.
	cmd := exec.Command(bin, "vmm", "--kernel", elf, "--vcpu_count", "2", "--cmdline", "testguest.heap_mb=0")
	var so bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &so
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(so.String(), "ready") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
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
	store := filepath.Join(t.TempDir(), "store")
	t.Cleanup(func() {
		// run leaves the sidecar it started running, as a daemon.
		if b, err := os.ReadFile(filepath.Join(store, "LOCK")); err == nil {
			var pid int
			if _, err := fmt.Sscanf(string(b), "pid %d", &pid); err == nil && pid > 0 {
				syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	reqs := []testguest.Request{testguest.TouchRequest(1, 3, 4, 2, false), testguest.TouchRequest(2, 10, 2, 1, true), testguest.TouchRequest(3, 200, 8, 3, false)}
	var in strings.Builder
	heap := testguest.NewHeap(cfg.Seed, cfg.HeapMB)
	var want []string
	for _, r := range reqs {
		b, _ := json.Marshal(r)
		in.Write(append(b, '\n'))
		w, _ := json.Marshal(heap.Apply(r))
		want = append(want, string(w))
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"run", "--store", store}, args...)...)
		cmd.Stdin = strings.NewReader(in.String())
		var so, se bytes.Buffer
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
	run("--kernel", elf, "--mem_size", "64", "--cmdline", cfg.Cmdline(), "--dump_dir", "tg")
	if se := run("--load_dir", "tg", "--dump_ws"); !strings.Contains(se, "working-set pages recorded") {
		t.Fatalf("dump_ws: %s", se)
	}
	se := run("--load_dir", "tg", "--load_ws")
	var faults, prefetched int
	if i := strings.Index(se, "memory: "); i < 0 {
		t.Fatalf("no memory line:\n%s", se)
	} else if _, err := fmt.Sscanf(se[i:], "memory: %d faults, %d prefetched", &faults, &prefetched); err != nil {
		t.Fatalf("memory line: %v\n%s", err, se)
	}
	// The guest may race the prefetcher to a page or two, not more.
	if prefetched == 0 || faults*10 > prefetched {
		t.Errorf("with the working set prefetched: %d faults, %d prefetched:\n%s", faults, prefetched, se)
	}
	run("--load_dir", "tg", "--copy_base")
}
