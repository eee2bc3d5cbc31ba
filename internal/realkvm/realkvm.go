// Package realkvm runs the tests that need hardware-style KVM (a stock
// Linux guest) on every machine, for the test binaries of this repository.
//
// A test that needs it is named TestLinux… and starts with
//
//	if realkvm.Delegated(t) {
//		return
//	}
//
// Where /dev/kvm is hardware KVM (kvm_intel, kvm_amd; also inside the L1
// guest below), Delegated returns false and the test runs in place. Where
// it is PVM (kvm_pvm: software virtualization on which a stock kernel dies
// in KVM's instruction emulator), the first call boots an L1 Linux guest
// with a real /dev/kvm (kvm_amd on QEMU TCG's SVM, internal/nestedkvm) and
// runs every TestLinux… test of this test binary there, once, with
// `-test.v`; each delegating test then reports its own outcome from that
// run (its L1 output in its log, failed if it failed there) and returns
// true. No test skips because the host is PVM.
//
// Every outcome on real KVM, in place or in L1, is appended as one line
// "NAME\tRESULT\tWHERE" to the file $SNAPFAAS_REALKVM_LOG if set, so that
// scripts/test.sh can say how many tests ran on real KVM. Environment
// variables named SNAPFAAS_* are passed on to L1.
package realkvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/internal/nestedkvm"
	"github.com/snapfaas/snapfaas/vmm/kvm"
)

// Kind describes the host's KVM from /sys/module: "kvm_pvm", "kvm_amd",
// "kvm_intel", or "" when no KVM module is loaded.
func Kind() string {
	return kvm.HostModule("/sys/module")
}

// logEnv names the file outcomes on real KVM are appended to.
const logEnv = "SNAPFAAS_REALKVM_LOG"

// l1Timeout bounds one L1 run of a test binary's Linux tests.
const l1Timeout = 40 * time.Minute

// Delegated reports whether t ran in an L1 guest (see the package doc):
// if so its outcome is already reported and the caller returns; if not,
// the caller runs the test here, on real KVM. It skips t, with the
// reason, only when the machine has no /dev/kvm at all.
func Delegated(t *testing.T) bool {
	t.Helper()
	if !strings.HasPrefix(t.Name(), "TestLinux") || strings.Contains(t.Name(), "/") {
		t.Fatalf("realkvm: %s must be a top-level test named TestLinux… to run in L1", t.Name())
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no KVM: %v", err)
	}
	f.Close()
	kind := Kind()
	if kind != "kvm_pvm" {
		t.Cleanup(func() {
			record(testName(t), outcome(t), "here ("+kindOr(kind)+")")
		})
		return false
	}
	l1Once.Do(func() { l1Results, l1Err = runInL1() })
	if l1Err != nil {
		t.Fatalf("running the Linux tests in L1: %v", l1Err)
	}
	r, ok := l1Results.tests[t.Name()]
	if !ok {
		t.Fatalf("%s did not run in L1 (%s); its output ended:\n%s", t.Name(), l1Results.times, tail(l1Results.all, 40))
	}
	where := "L1 (kvm_amd under QEMU TCG)"
	t.Logf("ran in %s: %s; %s; its output:\n%s", where, r.result, l1Results.times, r.output)
	switch r.result {
	case "FAIL":
		t.Fail()
	case "SKIP":
		t.Skipf("skipped in L1:\n%s", r.output)
	}
	record(testName(t), r.result, where)
	return true
}

func kindOr(kind string) string {
	if kind == "" {
		return "KVM"
	}
	return kind
}

func outcome(t *testing.T) string {
	switch {
	case t.Failed():
		return "FAIL"
	case t.Skipped():
		return "SKIP"
	}
	return "PASS"
}

var (
	l1Once    sync.Once
	l1Results results
	l1Err     error
)

type testResult struct {
	result string // PASS, FAIL or SKIP
	output string
}

type results struct {
	tests map[string]testResult
	all   string
	times string
}

// runInL1 runs this test binary's TestLinux… tests in an L1 guest.
func runInL1() (results, error) {
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "realkvm: "+format+"\n", a...) }
	tools, err := nestedkvm.EnsureTools(logf)
	if err != nil {
		return results{}, err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return results{}, err
	}
	kernel, err := nestedkvm.EnsureKernel(filepath.Join(cache, "snapfaas", "nested-kvm"), logf)
	if err != nil {
		return results{}, err
	}
	initrd, err := nestedkvm.EnsureInitrd(kernel, tools.Busybox)
	if err != nil {
		return results{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return results{}, err
	}
	wd, err := os.Getwd()
	if err != nil {
		return results{}, err
	}
	checkout := wd
	if out, err := exec.Command("git", "-C", wd, "rev-parse", "--show-toplevel").Output(); err == nil {
		checkout = strings.TrimSpace(string(out))
	}
	// The binary runs its Linux tests there, not recording: this process
	// records what they did.
	command := []string{"env", logEnv + "="}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SNAPFAAS_") && !strings.HasPrefix(kv, logEnv+"=") {
			command = append(command, kv)
		}
	}
	command = append(command, self, "-test.run", "^TestLinux", "-test.v", "-test.count=1", "-test.timeout", l1Timeout.String())
	var out strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	})
	// One L1 at a time on this machine (test binaries run in parallel):
	// several QEMUs under TCG on few cores starve each other.
	unlock, err := lockL1(filepath.Join(cache, "snapfaas", "nested-kvm", "realkvm.lock"), logf)
	if err != nil {
		return results{}, err
	}
	defer unlock()
	var retried string
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("realkvm-%d-%d", os.Getpid(), attempt)
		logf("running %s's Linux tests in L1 (QEMU -name %s)", filepath.Base(self), name)
		ctx, cancel := context.WithTimeout(context.Background(), l1Timeout+5*time.Minute)
		out.Reset()
		// 4 GiB: with 2 GiB a -race test binary holding copies of
		// 256 MiB guest memory, with its stores on L1's tmpfs, was
		// killed (SIGKILL; most likely the OOM killer) in its 2-vCPU
		// snapshot test.
		res, err := nestedkvm.Run(ctx, nestedkvm.Config{
			QEMU: tools.QEMU, Kernel: kernel.Vmlinuz(), Initrd: initrd,
			MemMiB: 4096, CPUs: 2, CPU: "EPYC", Name: name,
			Checkout: checkout, Workdir: wd, Path: os.Getenv("PATH"),
			Command: command, Stdout: w, Stderr: w,
		})
		cancel()
		mu.Lock()
		all := out.String()
		mu.Unlock()
		logf("%s", res.Times)
		// L1 itself dying (its kernel under QEMU TCG, not the tests) is
		// retried once, and said so; anything else is the answer.
		if errors.Is(err, nestedkvm.ErrL1) && attempt == 1 {
			retried = fmt.Sprintf("; the first L1 died and was retried: %v", err)
			logf("L1 died (%v); retrying once", err)
			continue
		}
		if err != nil {
			return results{}, fmt.Errorf("%w%s; output:\n%s", err, retried, tail(all, 40))
		}
		r := parse(all)
		r.times = res.Times.String() + retried
		return r, nil
	}
}

// lockL1 takes an exclusive flock on path, saying so if it has to wait.
func lockL1(path string, logf func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		logf("waiting for another test binary's L1 to finish (%s)", path)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
	return func() { f.Close() }, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

var endLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) `)

// parse splits `go test -v` output into each top-level test's result and
// output (its lines from "=== RUN" to its "--- RESULT" line).
func parse(all string) results {
	r := results{tests: map[string]testResult{}, all: all}
	var cur string
	var buf strings.Builder
	sc := bufio.NewScanner(strings.NewReader(all))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "=== RUN   "); ok && !strings.Contains(name, "/") {
			cur = name
			buf.Reset()
		}
		if cur != "" {
			buf.WriteString(line + "\n")
		}
		if m := endLine.FindStringSubmatch(line); m != nil && m[2] == cur {
			r.tests[cur] = testResult{result: m[1], output: buf.String()}
			cur = ""
		}
	}
	return r
}

// record appends one outcome to $SNAPFAAS_REALKVM_LOG, if set.
func record(name, result, where string) {
	path := os.Getenv(logEnv)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\t%s\t%s\n", name, result, where)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// testName is t's name qualified by its test binary (vmm.test: TestLinuxBoot).
func testName(t *testing.T) string {
	return strings.TrimSuffix(filepath.Base(os.Args[0]), ".test") + "." + t.Name()
}
