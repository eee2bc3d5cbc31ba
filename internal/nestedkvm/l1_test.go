package nestedkvm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests run scripts/nested-kvm.sh for real: QEMU TCG boots L1 (tens
// of seconds on a loaded machine), so they are not in -short. The harness
// installs QEMU itself; they skip only where it cannot (not root, no
// apt-get) and QEMU is missing.

// script returns the wrapper's path, or skips.
func script(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots an L1 guest under QEMU TCG (tens of seconds); not in -short")
	}
	if _, missing := findTools(); len(missing) > 0 {
		if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
			t.Skipf("missing %v and cannot install it (needs root and apt-get)", missing)
		}
	}
	p, err := filepath.Abs("../../scripts/nested-kvm.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// checkout makes a scratch git repository and returns it and a
// subdirectory to run from.
func checkout(t *testing.T) (repo, sub string) {
	repo = t.TempDir()
	sub = filepath.Join(repo, "sub dir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("git", "init", "-q", repo).CombinedOutput(); err != nil {
		t.Skipf("git init: %v %s", err, out)
	}
	return repo, sub
}

// qemuTagged lists the processes whose command line has "-name tag".
func qemuTagged(tag string) []string {
	var pids []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte("\x00-name\x00"+tag+"\x00")) {
			pids = append(pids, d.Name())
		}
	}
	return pids
}

type line struct {
	text string
	at   time.Time
}

// collect reads r line by line, stamping each with its arrival time.
func collect(r io.Reader, mu *sync.Mutex, into *[]line) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		mu.Lock()
		*into = append(*into, line{sc.Text(), time.Now()})
		mu.Unlock()
	}
}

func texts(ls []line) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

// TestL1HasRealKVM runs a command in L1 that uses /dev/kvm through this
// test binary (TestL1Helper), writes into the checkout, prints on both
// streams with a pause between two stdout lines, and exits 7.
func TestL1HasRealKVM(t *testing.T) {
	sh := script(t)
	repo, sub := checkout(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const prog = `env NESTEDKVM_HELPER=1 "$0" -test.run='^TestL1Helper$' -test.v || exit 99
for d in /dev/kvm /dev/fuse /dev/net/tun /dev/userfaultfd; do test -c $d || { echo "no $d"; exit 98; }; done
echo devices ok
echo "cwd $(pwd)"
echo from-l1 >../probe
touch "$TMPDIR/x" && echo "tmpdir $TMPDIR"
touch /root/x && echo "home writable"
echo first; sleep 4; echo second
echo to-stderr >&2
exit 7`
	cmd := exec.Command(sh, "--timeout", "600", "--", "sh", "-c", prog, self)
	cmd.Dir = sub
	var mu sync.Mutex
	var stdout, stderr []line
	so, _ := cmd.StdoutPipe()
	se, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { collect(so, &mu, &stdout) })
	wg.Go(func() { collect(se, &mu, &stderr) })
	wg.Wait()
	err = cmd.Wait()
	out, errs := texts(stdout), texts(stderr)
	t.Logf("stdout:\n%s\nstderr:\n%s", out, errs)
	if code := cmd.ProcessState.ExitCode(); code != 7 {
		t.Fatalf("exit status %d (%v), want COMMAND's 7", code, err)
	}
	for _, want := range []string{"KVM_GET_API_VERSION 12", "/sys/module/kvm_amd present", "devices ok", "cwd " + sub, "tmpdir /tmp\n", "unix socket in TMPDIR", "home writable"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if !strings.Contains(errs, "to-stderr") || strings.Contains(out, "to-stderr") {
		t.Errorf("COMMAND's stderr should reach stderr only")
	}
	if !strings.Contains(errs, "nested-kvm: kernel ") || !strings.Contains(errs, "L1 boot to init ") {
		t.Errorf("no timings line on stderr")
	}
	if b, err := os.ReadFile(filepath.Join(repo, "probe")); err != nil || string(b) != "from-l1\n" {
		t.Errorf("checkout not written at the same path: %q, %v", b, err)
	}
	var first, second time.Time
	for _, l := range stdout {
		switch l.text {
		case "first":
			first = l.at
		case "second":
			second = l.at
		}
	}
	if first.IsZero() || second.Sub(first) < 3*time.Second {
		t.Errorf("output not streamed: 'first' arrived %v before 'second' (COMMAND slept 4s between)", second.Sub(first))
	}
}

// TestL1Helper is the part of TestL1HasRealKVM that runs inside L1.
func TestL1Helper(t *testing.T) {
	if os.Getenv("NESTEDKVM_HELPER") == "" {
		t.Skip("runs inside L1, started by TestL1HasRealKVM")
	}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, 0xae00) // KVM_GET_API_VERSION
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("KVM_GET_API_VERSION %d\n", v)
	vm, err := unix.IoctlRetInt(fd, 0xae01) // KVM_CREATE_VM
	if err != nil {
		t.Fatalf("KVM_CREATE_VM: %v", err)
	}
	unix.Close(vm)
	if _, err := os.Stat("/sys/module/kvm_amd"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		t.Fatal("kvm_pvm loaded: this is the PVM host, not L1")
	}
	fmt.Println("/sys/module/kvm_amd present")
	l, err := net.Listen("unix", filepath.Join(os.TempDir(), "l1.sock")) // the VMM's tests need this
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	fmt.Println("unix socket in TMPDIR")
}

// stopped runs the script with args until ready(stdout so far) is true,
// then calls stop; it returns the exit status and stderr, and fails if a
// QEMU named tag is left.
func stopped(t *testing.T, tag string, args []string, ready func(string) bool, stop func(*exec.Cmd)) (int, string) {
	sh := script(t)
	_, sub := checkout(t)
	cmd := exec.Command(sh, append([]string{"--name", tag}, args...)...)
	cmd.Dir = sub
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	so, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, log, ok := strings.Cut(stderr.String(), "; console log: "); ok {
			os.Remove(strings.TrimSpace(log))
		}
		for _, pid := range qemuTagged(tag) { // only if the test failed: do not leave it to others
			var p int
			fmt.Sscan(pid, &p)
			syscall.Kill(p, syscall.SIGKILL)
		}
	})
	var out strings.Builder
	sc := bufio.NewScanner(so)
	for !ready(out.String()) && sc.Scan() {
		out.WriteString(sc.Text() + "\n")
	}
	if stop != nil {
		if len(qemuTagged(tag)) == 0 {
			t.Fatalf("no QEMU process named %s while COMMAND runs: the check below would prove nothing", tag)
		}
		stop(cmd)
	}
	io.Copy(io.Discard, so)
	cmd.Wait()
	if left := qemuTagged(tag); len(left) > 0 {
		t.Errorf("QEMU left running: pids %v", left)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// oneLine checks that stderr is exactly one line starting with want.
func oneLine(t *testing.T, stderr, want string) {
	t.Helper()
	if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
		t.Errorf("stderr: want one line with %q, got:\n%s", want, stderr)
	}
}

// TestInterruptStopsQEMU sends SIGINT while COMMAND runs.
func TestInterruptStopsQEMU(t *testing.T) {
	tag := fmt.Sprintf("nested-kvm-test-int-%d", os.Getpid())
	code, stderr := stopped(t, tag, []string{"--", "sh", "-c", "echo started; sleep 600"},
		func(out string) bool { return strings.Contains(out, "started") },
		func(c *exec.Cmd) { c.Process.Signal(syscall.SIGINT) })
	if code != 130 {
		t.Errorf("exit status %d, want 130 (SIGINT)", code)
	}
	oneLine(t, stderr, "nested-kvm: interrupted by SIGINT: L1 had booted and loaded kvm_amd; COMMAND still running")
}

// TestTimeoutStopsQEMU lets a 2-second --timeout expire while L1 boots.
func TestTimeoutStopsQEMU(t *testing.T) {
	tag := fmt.Sprintf("nested-kvm-test-timeout-%d", os.Getpid())
	code, stderr := stopped(t, tag, []string{"--timeout", "2", "--", "sleep", "600"},
		func(string) bool { return false }, nil)
	if code != 124 {
		t.Errorf("exit status %d, want 124 (timeout)", code)
	}
	oneLine(t, stderr, "nested-kvm: timeout after 2s: L1 had not reached init")
}

// TestKVMRefused boots L1 on a CPU model without SVM: kvm_amd must be
// refused with the kernel's reason, and COMMAND must not run.
func TestKVMRefused(t *testing.T) {
	tag := fmt.Sprintf("nested-kvm-test-nosvm-%d", os.Getpid())
	code, stderr := stopped(t, tag, []string{"--cpu", "qemu64,-svm", "--timeout", "600", "--", "echo", "ran"},
		func(string) bool { return false }, nil)
	if code != 123 {
		t.Errorf("exit status %d, want 123 (kvm_amd refused)", code)
	}
	oneLine(t, stderr, "nested-kvm: kvm_amd refused: insmod: can't insert '/modules/kvm-amd.ko'")
	if !strings.Contains(stderr, "kernel: has_svm: svm not available") {
		t.Errorf("no kernel reason in %q", stderr)
	}
}
