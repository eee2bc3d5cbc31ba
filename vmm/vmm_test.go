package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/vmm/arch"
	"github.com/snapfaas/snapfaas/vmm/kvm"
)

func skipWithoutKVM(t *testing.T) {
	t.Helper()
	s, err := kvm.Open()
	if err != nil {
		t.Skipf("no KVM here: %v", err)
	}
	s.Close()
}

// asmGuest links a tiny 64-bit guest from assembly with gcc.
func asmGuest(t *testing.T, body string) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "g.S")
	prog := `.code64
.globl _start
_start:
` + body + `
msg: .ascii "hello from the guest\n"
msgend:
`
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "g.elf")
	if b, err := exec.Command("gcc", "-nostdlib", "-static", "-no-pie", "-Wl,-Ttext=0x200000", "-Wl,--build-id=none", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v: %s", err, b)
	}
	return out
}

// printAndReset writes msg to COM1, signals both snapshot points, then
// resets through the i8042.
const printAndReset = `
	lea msg(%rip), %rsi
	mov $(msgend-msg), %rcx
	mov $0x3f8, %dx
1:	lodsb
	outb %al, %dx
	loop 1b
	mov $0x3f0, %dx
	mov $123, %al
	outb %al, %dx
	mov $124, %al
	outb %al, %dx
	mov $0x64, %dx
	mov $0xfe, %al
	outb %al, %dx
2:	jmp 2b
`

// syncBuf is a console the test reads while the VM writes it.
type syncBuf = testutil.Buffer

func runGuest(t *testing.T, cfg Config) (string, []uint8, error) {
	t.Helper()
	var console syncBuf
	var points []uint8
	cfg.Console = &console
	cfg.HideEmulatorUnsafe = true
	cfg.OnSnapshotPoint = func(v uint8) { points = append(points, v) }
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = vm.Run(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("guest hung; console: %q", console.String())
	}
	return console.String(), points, err
}

func TestBootELFPrintsAndResets(t *testing.T) {
	skipWithoutKVM(t)
	for _, n := range []int{1, 2} {
		out, points, err := runGuest(t, Config{Kernel: asmGuest(t, printAndReset), MemMiB: 32, VCPUs: n})
		if err != nil {
			t.Fatalf("%d vCPUs: %v", n, err)
		}
		if out != "hello from the guest\n" {
			t.Fatalf("console %q", out)
		}
		if len(points) != 2 || points[0] != 123 || points[1] != 124 {
			t.Fatalf("snapshot points %v", points)
		}
	}
}

func TestTripleFaultIsReported(t *testing.T) {
	skipWithoutKVM(t)
	// An IDT of limit 0 makes any exception a triple fault.
	guest := asmGuest(t, `
	lea idtr(%rip), %rax
	lidt (%rax)
	ud2
idtr: .word 0
	.quad 0
`)
	_, _, err := runGuest(t, Config{Kernel: guest, MemMiB: 32})
	var ee *ExitError
	if !errors.Is(err, ErrTripleFault) || !errors.As(err, &ee) || ee.Regs.RIP == 0 {
		t.Fatalf("got %v; want an *ExitError for ErrTripleFault with the registers", err)
	}
	t.Log(err)
}

func TestUnsupportedInstructionIsReported(t *testing.T) {
	skipWithoutKVM(t)
	// SSE without CR4.OSFXSR: #UD on hardware (a triple fault with no IDT),
	// an emulation failure under PVM. Either way a clear error, not a hang.
	guest := asmGuest(t, `
	lea idtr(%rip), %rax
	lidt (%rax)
sse:	pxor %xmm0, %xmm0
idtr: .word 0
	.quad 0
`)
	_, _, err := runGuest(t, Config{Kernel: guest, MemMiB: 32})
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("got %v; want an *ExitError", err)
	}
	if emulatingKVM(t) {
		if sse := testutil.ELFSymbol(t, guest, "sse"); !errors.Is(err, ErrEmulation) || ee.Regs.RIP != sse {
			t.Fatalf("got %v; want ErrEmulation at the pxor (%#x)", err, sse)
		}
	} else if !errors.Is(err, ErrTripleFault) {
		t.Fatalf("got %v; want ErrTripleFault (#UD with an empty IDT)", err)
	}
	t.Log(err)
}

// emulatingKVM reports whether /dev/kvm here is PVM, whose instruction
// emulator stops at SSE with an emulation failure where hardware raises
// #UD: its read-only signature MSR 0x4b564d11 reads "PVM".
func emulatingKVM(t *testing.T) bool {
	t.Helper()
	s, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const msrPVMSignature, pvm = 0x4b564d11, 0x4d5650
	es, err := c.MSRs([]uint32{msrPVMSignature})
	if err != nil {
		t.Fatal(err)
	}
	return len(es) == 1 && es[0].Data == pvm
}

func TestConfigErrors(t *testing.T) {
	if _, err := New(Config{Kernel: "/nonexistent/vmlinux"}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing kernel: %v", err)
	}
	if _, err := New(Config{Kernel: "/etc/hostname", MemMiB: 8}); !errors.Is(err, ErrConfig) {
		t.Fatalf("tiny memory: %v", err)
	}
	skipWithoutKVM(t)
	if _, err := New(Config{Kernel: "/etc/hostname"}); err == nil || !strings.Contains(err.Error(), "not an x86_64 ELF vmlinux or bzImage") {
		t.Fatalf("not a kernel: %v", err)
	}
}

// TestApplicationProcessorStartsOnSIPI: vCPU 0 copies a real-mode
// trampoline to 0x10000 and starts vCPU 1 there with INIT and a startup
// IPI (vector 0x10), as Linux brings up the CPUs the MADT lists; vCPU 1
// prints and resets. KVM_RUN on an AP waiting for SIPI returns EAGAIN once
// the SIPI arrives; the VMM has to enter again, not fail.
func TestApplicationProcessorStartsOnSIPI(t *testing.T) {
	skipWithoutKVM(t)
	guest := asmGuest(t, `
	lea ap(%rip), %rsi
	mov $0x10000, %edi
	mov $(apend-ap), %ecx
	rep movsb
	mov $0x1b, %ecx          # IA32_APIC_BASE: x2APIC mode
	rdmsr
	or $0xc00, %eax
	wrmsr
	mov $0x830, %ecx         # x2APIC ICR, destination APIC id 1
	mov $1, %edx
	mov $0x4500, %eax        # INIT
	wrmsr
	mov $0x4610, %eax        # startup IPI, vector 0x10: 0x1000:0000
	wrmsr
1:	jmp 1b
	.code16
ap:	mov $0x3f8, %dx
	mov $'A', %al
	outb %al, %dx
	mov $'P', %al
	outb %al, %dx
	mov $'\n', %al
	outb %al, %dx
	mov $0x64, %dx
	mov $0xfe, %al
	outb %al, %dx
2:	jmp 2b
apend:
	.code64
`)
	out, _, err := runGuest(t, Config{Kernel: guest, MemMiB: 32, VCPUs: 2})
	if err != nil || out != "AP\n" {
		t.Fatalf("console %q, VM ended with %v", out, err)
	}
}

// TestACPIDescribesTheVirtioDevices: the DSDT New writes lists each
// virtio-mmio device of the command line (LNRO0005 with its registers and
// interrupt), so a kernel on ACPI gets their interrupts mapped.
func TestACPIDescribesTheVirtioDevices(t *testing.T) {
	skipWithoutKVM(t)
	dir := t.TempDir()
	var disks []Disk
	for _, name := range []string{"a", "b"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, Disk{Path: p, ReadOnly: true})
	}
	vm, err := New(Config{Kernel: asmGuest(t, printAndReset), MemMiB: 32, VCPUs: 2, Disks: disks,
		Vsock: &Vsock{CID: 3, Path: filepath.Join(dir, "v.sock")}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	acpi := vm.Memory()[arch.ACPITablesStart : arch.ACPITablesStart+arch.ACPITablesSize]
	cmdline := vm.cmdline()
	if n, want := bytes.Count(acpi, []byte("LNRO0005\x00")), strings.Count(cmdline, "virtio_mmio.device="); n != want || want != 3 {
		t.Fatalf("DSDT lists %d virtio devices, the command line %d (%q)", n, want, cmdline)
	}
	for i := 0; i < 3; i++ {
		base, irq := arch.VirtioSlot(i)
		if !strings.Contains(cmdline, fmt.Sprintf("4K@%#x:%d", base, irq)) {
			t.Errorf("command line %q lacks device %d at %#x, IRQ %d", cmdline, i, base, irq)
		}
		mem := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32([]byte{0x86, 9, 0, 1}, uint32(base)), 0x1000)
		intr := binary.LittleEndian.AppendUint32([]byte{0x89, 6, 0, 3, 1}, irq)
		if !bytes.Contains(acpi, mem) || !bytes.Contains(acpi, intr) {
			t.Errorf("DSDT lacks device %d's Memory32Fixed at %#x or its interrupt %d", i, base, irq)
		}
	}
}
