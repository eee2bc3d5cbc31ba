// Command nestedkvm runs a command as root inside an L1 Linux guest with a
// real /dev/kvm (kvm_amd on QEMU TCG's emulated SVM); see package
// internal/nestedkvm for the design. scripts/nested-kvm.sh builds and runs
// it:
//
//	scripts/nested-kvm.sh [--mem MiB] [--cpus N] [--timeout S] [--cpu MODEL] [--name TAG] -- COMMAND...
//
// It exits with COMMAND's status, or with 121 (missing qemu or busybox),
// 122 (L1 kernel), 123 (kvm_amd refused), 124 (timeout), 125 (L1 failed),
// 128+N (signal N), 2 (usage), each after one line on stderr. When COMMAND
// ran to its end, a line with the stage times follows its output on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/snapfaas/snapfaas/internal/nestedkvm"
	"golang.org/x/sys/unix"
)

func main() {
	os.Exit(run())
}

func run() int {
	fl := flag.NewFlagSet("nested-kvm", flag.ContinueOnError)
	mem := fl.Int("mem", 2048, "L1 memory in MiB")
	cpus := fl.Int("cpus", 2, "L1 vCPUs")
	cpu := fl.String("cpu", "EPYC", "QEMU's -cpu model for L1 (it needs svm for kvm_amd)")
	timeout := fl.Int("timeout", 0, "stop L1 after this many seconds (0: never)")
	name := fl.String("name", fmt.Sprintf("nested-kvm-%d", os.Getpid()), "QEMU's -name (to find its process)")
	fl.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: nested-kvm.sh [--mem MiB] [--cpus N] [--timeout S] [--cpu MODEL] [--name TAG] -- COMMAND...")
		fl.PrintDefaults()
	}
	if err := fl.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fl.NArg() == 0 {
		fl.Usage()
		return 2
	}
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "nested-kvm: "+format+"\n", args...) }
	fail := func(err error) int {
		logf("%v", err)
		return nestedkvm.ExitCode(err)
	}

	wd, err := os.Getwd()
	if err != nil {
		return fail(err)
	}
	checkout := wd
	if out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output(); err == nil {
		checkout = strings.TrimSpace(string(out))
	}
	if checkout == "/" {
		return fail(errors.New("the checkout would be / : run from a repository or a directory other than /"))
	}
	tools, err := nestedkvm.EnsureTools(logf)
	if err != nil {
		return fail(err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return fail(fmt.Errorf("%w: %v", nestedkvm.ErrKernel, err))
	}
	kernel, err := nestedkvm.EnsureKernel(filepath.Join(cache, "snapfaas", "nested-kvm"), logf)
	if err != nil {
		return fail(err)
	}
	initrd, err := nestedkvm.EnsureInitrd(kernel, tools.Busybox)
	if err != nil {
		return fail(err)
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}

	// A signal cancels the run with the signal's name as the cause; QEMU
	// is stopped and waited for before we exit 128+N.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var got atomic.Int32
	go func() {
		s := (<-sigs).(syscall.Signal)
		got.Store(int32(s))
		cancel(errors.New(unix.SignalName(s)))
	}()

	res, err := nestedkvm.Run(ctx, nestedkvm.Config{
		QEMU: tools.QEMU, Kernel: kernel.Vmlinuz(), Initrd: initrd,
		MemMiB: *mem, CPUs: *cpus, CPU: *cpu, Timeout: time.Duration(*timeout) * time.Second,
		Name: *name, Checkout: checkout, Workdir: wd, Path: path,
		Command: fl.Args(), Stdout: os.Stdout, Stderr: os.Stderr,
	})
	if err != nil {
		if errors.Is(err, nestedkvm.ErrInterrupted) {
			logf("%v", err)
			return 128 + int(got.Load())
		}
		return fail(err)
	}
	logf("kernel %s: %s", kernel.Version, res.Times)
	return res.Status
}
