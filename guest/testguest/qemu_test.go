package testguest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests boot the guest under QEMU (TCG, microvm, PVH entry) to check
// it independently of our VMM: serial console, command line, virtio-mmio
// block device (modern), heap contents, faults.

type qemuRun struct {
	Console
	Out    string
	Exited bool // QEMU exited by itself (reset or triple fault)
}

type qemuOpts struct {
	cmdline  string
	memMB    int
	disk     []byte // nil: no block device
	serial   string // the block device's serial id
	until    string // stop once this line is printed (QEMU would idle)
	dumpHeap func(t *testing.T, monitor string, c Console)
}

func qemuBinary(t *testing.T) string {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (Debian: apt-get install qemu-system-x86)")
	}
	return p
}

func runQEMU(t *testing.T, o qemuOpts) qemuRun {
	t.Helper()
	qemu := qemuBinary(t)
	elfPath := guestELF(t)
	dir := t.TempDir()
	if o.memMB == 0 {
		o.memMB = 128
	}
	monitor := filepath.Join(dir, "mon.sock")
	args := []string{
		"-M", "microvm,acpi=off", "-accel", "tcg", "-m", fmt.Sprint(o.memMB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio", "-monitor", "unix:" + monitor + ",server=on,wait=off",
		"-kernel", elfPath, "-append", o.cmdline,
		"-global", "virtio-mmio.force-legacy=false",
	}
	if o.disk != nil {
		img := filepath.Join(dir, "disk.img")
		if err := os.WriteFile(img, o.disk, 0o644); err != nil {
			t.Fatal(err)
		}
		dev := "virtio-blk-device,drive=d0"
		if o.serial != "" {
			dev += ",serial=" + o.serial
		}
		args = append(args, "-drive", "id=d0,file="+img+",format=raw,if=none", "-device", dev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	stopped := false
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if o.until != "" && strings.TrimRight(sc.Text(), "\r") == o.until {
			if o.dumpHeap != nil {
				o.dumpHeap(t, monitor, ParseConsole(out.String()))
			}
			stopped = true
			cmd.Process.Kill()
			break
		}
	}
	werr := cmd.Wait()
	r := qemuRun{Console: ParseConsole(out.String()), Out: out.String()}
	if ctx.Err() != nil {
		t.Fatalf("QEMU timed out; output:\n%s\nstderr:\n%s", out.String(), stderr.String())
	}
	if !stopped {
		if werr != nil {
			t.Fatalf("QEMU: %v\n%s\noutput:\n%s", werr, stderr.String(), out.String())
		}
		r.Exited = true
	}
	t.Logf("guest output:\n%s", out.String())
	return r
}

// hmp sends one human-monitor command and waits for its prompt.
func hmp(t *testing.T, sock, command string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	readPrompt := func() {
		var b []byte
		for !bytes.HasSuffix(b, []byte("(qemu) ")) {
			x, err := r.ReadByte()
			if err != nil {
				t.Fatalf("monitor: %v after %q", err, b)
			}
			b = append(b, x)
		}
	}
	readPrompt()
	fmt.Fprintf(c, "%s\n", command)
	readPrompt()
}

func TestQEMUBootDiskHeap(t *testing.T) {
	payload := append([]byte("hello from the disk\nsecond line\n"), bytes.Repeat([]byte{0, 1, 2, 0xfe, '\n'}, 300)...)
	const seed, heapMB = 7, 2
	var heapDump []byte
	r := runQEMU(t, qemuOpts{
		cmdline: fmt.Sprintf("console=ttyS0 testguest.heap_mb=%d testguest.seed=%d bogus=1", heapMB, seed),
		disk:    DiskImage(payload),
		serial:  "tg-disk-1",
		until:   "ready",
		dumpHeap: func(t *testing.T, mon string, c Console) {
			f := filepath.Join(t.TempDir(), "heap")
			// Quoted: unquoted, "8192 /tmp/..." parses as a division.
			hmp(t, mon, fmt.Sprintf("pmemsave %#x %d %q", c.HeapAddr, c.HeapPages*PageSize, f))
			var err error
			if heapDump, err = os.ReadFile(f); err != nil {
				t.Fatal(err)
			}
		},
	})
	if !r.Banner {
		t.Errorf("no banner")
	}
	if want := fmt.Sprintf("heap_mb=%d seed=%d port=%d fault=none virtio=1 boot=pvh", heapMB, seed, DefaultPort); r.Config != want {
		t.Errorf("config %q, want %q", r.Config, want)
	}
	if r.Disk != DiskLine(payload) || r.DiskChecksum != DiskChecksum(payload) || r.DiskID != "tg-disk-1" {
		t.Errorf("disk %q %q %q, want %q %q tg-disk-1", r.Disk, r.DiskChecksum, r.DiskID, DiskLine(payload), DiskChecksum(payload))
	}
	if r.HeapPages != HeapPages(heapMB) || r.HeapAddr%HeapAlign != 0 || r.HeapAddr < LoadAddr {
		t.Errorf("heap: %d pages at %#x", r.HeapPages, r.HeapAddr)
	}
	if !r.Ready || r.Exception != "" {
		t.Errorf("ready %v, exception %q", r.Ready, r.Exception)
	}
	if uint64(len(heapDump)) != HeapPages(heapMB)*PageSize {
		t.Fatalf("heap dump of %d bytes", len(heapDump))
	}
	for p := uint64(0); p < HeapPages(heapMB); p++ {
		if !bytes.Equal(heapDump[p*PageSize:(p+1)*PageSize], PageBytes(seed, p, 0)) {
			t.Fatalf("heap page %d differs from PageBytes", p)
		}
	}
}

func TestQEMUNoDisk(t *testing.T) {
	r := runQEMU(t, qemuOpts{cmdline: "testguest.heap_mb=1", until: "ready"})
	if !r.Banner || r.Disk != "none" || r.HeapPages != 256 || !r.Ready {
		t.Errorf("%+v", r.Console)
	}
}

func TestQEMUDiskVariants(t *testing.T) {
	for _, c := range []struct {
		name, want string
		disk       []byte
	}{
		{"unformatted", "unformatted", make([]byte, 4096)},
		{"truncated", "truncated", DiskImage(make([]byte, 2000))[:1024]},
		{"large", DiskLine(bytes.Repeat([]byte("y"), 70000)), DiskImage(bytes.Repeat([]byte("y"), 70000))},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runQEMU(t, qemuOpts{cmdline: "testguest.heap_mb=0", disk: c.disk, until: "ready"})
			if r.Disk != c.want {
				t.Errorf("disk: %q, want %q", r.Disk, c.want)
			}
			if c.name == "large" && r.DiskChecksum != DiskChecksum(bytes.Repeat([]byte("y"), 70000)) {
				t.Errorf("checksum %s", r.DiskChecksum)
			}
			if r.DiskID != "" {
				t.Errorf("disk-id %q without a serial", r.DiskID)
			}
		})
	}
}

func TestQEMUFaults(t *testing.T) {
	r := runQEMU(t, qemuOpts{cmdline: "testguest.fault=sse"})
	if !r.Exited || !strings.HasPrefix(r.Exception, "EXCEPTION vector=6 rip=0x") || !strings.HasSuffix(r.Exception, " err=0x0") {
		t.Errorf("sse: exited %v, exception %q", r.Exited, r.Exception)
	}
	r = runQEMU(t, qemuOpts{cmdline: "testguest.fault=triple"})
	if !r.Exited || r.Exception != "" || !strings.Contains(r.Config, "fault=triple") || len(r.Lines) != 2 {
		t.Errorf("triple: exited %v, lines %q", r.Exited, r.Lines)
	}
	r = runQEMU(t, qemuOpts{cmdline: "testguest.heap_mb=64", memMB: 32})
	if !r.Exited || !strings.Contains(r.Out, "does not fit in RAM") || r.Ready {
		t.Errorf("heap too large: exited %v, output %q", r.Exited, r.Out)
	}
}
