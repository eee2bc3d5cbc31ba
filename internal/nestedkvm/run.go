package nestedkvm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config is one run of COMMAND in L1.
type Config struct {
	QEMU           string
	Kernel, Initrd string
	MemMiB, CPUs   int
	CPU            string        // QEMU's -cpu; EPYC is fastest, and has svm
	Timeout        time.Duration // 0: none
	Name           string        // QEMU's -name, to find its process
	Checkout       string        // shared writable at the same path
	Workdir        string        // COMMAND's working directory
	Path           string        // COMMAND's PATH
	Command        []string
	Stdout, Stderr io.Writer
}

// Result is what a run reached.
type Result struct {
	Status int   // COMMAND's exit status, when the error is nil
	Times  Times // as far as L1 got
}

// Times are what each stage took, seen from the host; zero if not reached.
type Times struct {
	Boot    time.Duration // QEMU start to /init
	KVM     time.Duration // insmod irqbypass, kvm, ccp, kvm-amd
	Modules time.Duration // the other modules
	Mounts  time.Duration // 9p shares, proc, overlays
	Command time.Duration
	Total   time.Duration // QEMU start to its exit
}

func (t Times) String() string {
	var parts []string
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"L1 boot to init", t.Boot}, {"kvm_amd", t.KVM}, {"other modules", t.Modules}, {"mounts", t.Mounts}, {"command", t.Command}} {
		if p.d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1fs", p.name, p.d.Seconds()))
		}
	}
	return strings.Join(parts, ", ") + fmt.Sprintf("; total %.1fs", t.Total.Seconds())
}

// Run boots L1, runs c.Command there and returns its exit status. COMMAND's
// output is copied to c.Stdout and c.Stderr as it comes. A cancelled ctx
// (its cause names the signal) or the timeout stops QEMU; the error then
// says what L1 had reached. On an L1 failure or a timeout the console log
// is kept and its path is in the error.
func Run(ctx context.Context, c Config) (res Result, err error) {
	rundir, err := os.MkdirTemp("", "nested-kvm-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(rundir)
	if err := os.WriteFile(filepath.Join(rundir, "job.sh"), jobScript(c), 0o644); err != nil {
		return res, err
	}
	consoleLog, err := os.CreateTemp("", "nested-kvm-console-*.log")
	if err != nil {
		return res, err
	}
	keepLog := false
	defer func() {
		consoleLog.Close()
		if !keepLog {
			os.Remove(consoleLog.Name())
		}
	}()

	// fd 3: console, 4: COMMAND's stdout, 5: its stderr (see qemuArgs).
	var readers, writers []*os.File
	for range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			return res, err
		}
		defer r.Close()
		readers, writers = append(readers, r), append(writers, w)
	}
	cmd := exec.Command(c.QEMU, qemuArgs(c, rundir)...)
	cmd.ExtraFiles = writers
	var qemuStderr bytes.Buffer
	cmd.Stderr = &qemuStderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &progress{start: time.Now(), at: map[string]time.Time{}}
	err = cmd.Start()
	for _, w := range writers {
		w.Close()
	}
	if err != nil {
		return res, fmt.Errorf("%w: start qemu: %v", ErrL1, err)
	}
	var drained sync.WaitGroup
	drained.Go(func() { p.readConsole(readers[0], consoleLog) })
	drained.Go(func() { io.Copy(c.Stdout, readers[1]) })
	drained.Go(func() { io.Copy(c.Stderr, readers[2]) })
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var timeout <-chan time.Time
	if c.Timeout > 0 {
		t := time.NewTimer(c.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var stopped error
	var qemuErr error
	select {
	case qemuErr = <-waited:
	case <-ctx.Done():
		stopped = fmt.Errorf("%w by %v: %s", ErrInterrupted, context.Cause(ctx), p.reached())
		qemuErr = killGroup(cmd.Process.Pid, waited)
	case <-timeout:
		keepLog = true
		stopped = fmt.Errorf("%w after %s: %s; console log: %s", ErrTimeout, c.Timeout, p.reached(), consoleLog.Name())
		qemuErr = killGroup(cmd.Process.Pid, waited)
	}
	drained.Wait()
	res.Times = p.times(time.Now())
	if stopped != nil {
		return res, stopped
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		res.Status = p.status
		return res, nil
	}
	keepLog = true
	if stage, why, ok := strings.Cut(p.fail, " "); ok {
		if stage == "kvm" {
			return res, fmt.Errorf("%w: %s; console log: %s", ErrKVM, why, consoleLog.Name())
		}
		return res, fmt.Errorf("%w at %s: %s; console log: %s", ErrL1, stage, why, consoleLog.Name())
	}
	why := fmt.Sprint(qemuErr)
	if qemuErr == nil {
		why = "qemu exited"
	}
	if l := lastLine(qemuStderr.String()); l != "" {
		why += " (" + l + ")"
	}
	return res, fmt.Errorf("%w: stopped before COMMAND's status was known (%s): %s; console log: %s", ErrL1, p.reachedLocked(), why, consoleLog.Name())
}

// qemuArgs is QEMU's command line: ENVIRONMENT.md's L1, with the console
// on fd 3 and COMMAND's stdout and stderr on virtio-serial ports (fd 4, 5).
func qemuArgs(c Config, rundir string) []string {
	rw := "security_model=passthrough,multidevs=remap"
	if os.Geteuid() != 0 {
		rw = "security_model=none,multidevs=remap" // passthrough needs root to set owners
	}
	return []string{
		"-name", c.Name,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", "tcg,thread=multi", "-M", "q35", "-cpu", c.CPU,
		"-m", strconv.Itoa(c.MemMiB), "-smp", strconv.Itoa(c.CPUs),
		"-kernel", c.Kernel, "-initrd", c.Initrd,
		"-append", "console=ttyS0 loglevel=4 printk.devkmsg=on mitigations=off panic=-1 rdinit=/init",
		"-chardev", "file,id=con,path=/dev/fd/3", "-serial", "chardev:con",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "file,id=out,path=/dev/fd/4", "-device", "virtserialport,bus=vser.0,chardev=out,name=stdout",
		"-chardev", "file,id=err,path=/dev/fd/5", "-device", "virtserialport,bus=vser.0,chardev=err,name=stderr",
		"-virtfs", "local,path=/,mount_tag=root,security_model=passthrough,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + c.Checkout + ",mount_tag=checkout," + rw,
		"-virtfs", "local,path=" + rundir + ",mount_tag=run," + rw,
	}
}

// jobScript is job.sh, which init.sh sources: the paths and, as its
// positional parameters, COMMAND.
func jobScript(c Config) []byte {
	var b bytes.Buffer
	for _, kv := range [][2]string{
		{"CHECKOUT", c.Checkout}, {"WORKDIR", c.Workdir},
		{"CMD_PATH", c.Path},
	} {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], shellQuote(kv[1]))
	}
	b.WriteString("set --")
	for _, a := range c.Command {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.Bytes()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// killGroup stops QEMU's process group: SIGTERM, then SIGKILL after 5 s.
// It returns once QEMU has been waited for.
func killGroup(pid int, waited <-chan error) error {
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case err := <-waited:
		return err
	case <-time.After(5 * time.Second):
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	return <-waited
}

// progress follows the markers init.sh writes on the console.
type progress struct {
	mu     sync.Mutex
	start  time.Time
	at     map[string]time.Time // stage → when its marker arrived
	last   string               // the last stage reached
	exited bool
	status int
	fail   string // "STAGE REASON"
}

const markerPrefix = "@@nestedkvm "

// readConsole copies the console to log and records the markers.
func (p *progress) readConsole(r io.Reader, log io.Writer) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		log.Write([]byte(line))
		p.line(line, time.Now())
		if err != nil {
			return
		}
	}
}

func (p *progress) line(s string, now time.Time) {
	i := strings.Index(s, markerPrefix)
	if i < 0 {
		return
	}
	stage, detail, _ := strings.Cut(strings.TrimRight(s[i+len(markerPrefix):], "\r\n"), " ")
	p.mu.Lock()
	defer p.mu.Unlock()
	switch stage {
	case "fail":
		p.fail = detail
		return
	case "exit":
		n, err := strconv.Atoi(detail)
		if err != nil {
			return
		}
		p.exited, p.status = true, n
	}
	p.at[stage] = now
	p.last = stage
}

func (p *progress) reached() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reachedLocked()
}

func (p *progress) reachedLocked() string {
	switch p.last {
	case "init":
		return "L1 had booted to init; loading kvm_amd"
	case "kvm":
		return "L1 had booted and loaded kvm_amd; loading the other modules"
	case "modules":
		return "L1 had booted and loaded its modules; mounting the shares"
	case "mounted":
		return "L1 had booted, loaded kvm_amd and mounted the shares; starting COMMAND"
	case "run":
		return "L1 had booted and loaded kvm_amd; COMMAND still running"
	case "exit":
		return fmt.Sprintf("COMMAND had exited with %d; L1 powering off", p.status)
	}
	return "L1 had not reached init (kernel still booting)"
}

// times turns the marker arrival times into stage durations; a stage still
// running at end counts until end.
func (p *progress) times(end time.Time) Times {
	p.mu.Lock()
	defer p.mu.Unlock()
	span := func(from, to string) time.Duration {
		t0, ok := p.at[from]
		if from == "" {
			t0, ok = p.start, true
		}
		if !ok {
			return 0
		}
		t1, ok := p.at[to]
		if !ok {
			if p.last != from {
				return 0
			}
			t1 = end
		}
		return t1.Sub(t0)
	}
	return Times{
		Boot:    span("", "init"),
		KVM:     span("init", "kvm"),
		Modules: span("kvm", "modules"),
		Mounts:  span("modules", "mounted"),
		Command: span("run", "exit"),
		Total:   end.Sub(p.start),
	}
}
