package main

import (
	"bytes"
	"errors"
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
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
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
