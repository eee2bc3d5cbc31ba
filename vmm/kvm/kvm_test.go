package kvm

import (
	"errors"
	"fmt"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func openOrSkip(t *testing.T) *System {
	t.Helper()
	s, err := Open()
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no KVM here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRealModeIO(t *testing.T) {
	s := openOrSkip(t)
	if s.CheckExtension(CapIRQChip) == 0 || s.CheckExtension(CapUserMemory) == 0 {
		t.Fatal("basic capabilities missing")
	}
	cpuid, err := s.SupportedCPUID()
	if err != nil || len(cpuid) == 0 {
		t.Fatalf("supported CPUID: %d entries, %v", len(cpuid), err)
	}
	msrs, err := s.MSRIndexList()
	if err != nil || len(msrs) == 0 {
		t.Fatalf("MSR index list: %v", err)
	}
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := vm.SetMemory(0, 0, uint64(len(mem)), uintptr(unsafe.Pointer(&mem[0])), false); err != nil {
		t.Fatal(err)
	}
	// mov dx,0x3f8; mov al,'K'; out dx,al; in al,dx; mov al,'V'; out dx,al; hlt
	copy(mem[0x1000:], []byte{0xba, 0xf8, 0x03, 0xb0, 'K', 0xee, 0xec, 0xb0, 'V', 0xee, 0xf4})
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}
	sr, err := c.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	sr.CS.Base, sr.CS.Selector = 0, 0
	if err := c.SetSregs(sr); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(Regs{RIP: 0x1000, RFlags: 2}); err != nil {
		t.Fatal(err)
	}
	var out []byte
	ins := 0
	for len(out) < 2 {
		exit, err := c.Run()
		if err != nil {
			t.Fatal(err)
		}
		if exit != ExitIO {
			t.Fatalf("exit %d, want IO", exit)
		}
		io := c.IOExit()
		if io.Port != 0x3f8 || io.Size != 1 {
			t.Fatalf("io %+v", io)
		}
		if io.Direction == IOOut {
			out = append(out, io.Data...)
		} else {
			io.Data[0] = 0x60
			ins++
		}
	}
	if string(out) != "KV" || ins != 1 {
		t.Fatalf("guest wrote %q with %d reads", out, ins)
	}
	r, err := c.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RIP < 0x100a {
		t.Fatalf("RIP %#x", r.RIP)
	}
	if _, err := c.MSRs(msrs[:4]); err != nil {
		t.Fatal(err)
	}
}

// TestStateRoundTrips checks that every state a snapshot saves can be set
// back: GET, SET, GET gives the same bytes (time-driven state excepted).
func TestStateRoundTrips(t *testing.T) {
	s := openOrSkip(t)
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(); err != nil {
		t.Fatal(err)
	}
	mem, _ := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	defer unix.Munmap(mem)
	if err := vm.SetMemory(0, 0, uint64(len(mem)), uintptr(unsafe.Pointer(&mem[0])), false); err != nil {
		t.Fatal(err)
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	check := func(name string, get func() ([]byte, error), set func() error) {
		t.Helper()
		a, err := get()
		if err != nil {
			t.Fatalf("%s: get: %v", name, err)
		}
		if err := set(); err != nil {
			t.Fatalf("%s: set: %v", name, err)
		}
		b, err := get()
		if err != nil {
			t.Fatalf("%s: get again: %v", name, err)
		}
		if string(a) != string(b) {
			t.Errorf("%s: state changed by a round trip", name)
		}
	}
	mp, _ := c.MPState()
	check("MP_STATE", func() ([]byte, error) { v, err := c.MPState(); return []byte{byte(v)}, err }, func() error { return c.SetMPState(mp) })
	ev, _ := c.Events()
	check("VCPU_EVENTS", func() ([]byte, error) { v, err := c.Events(); return v.B[:], err }, func() error { return c.SetEvents(ev) })
	dr, _ := c.DebugRegs()
	check("DEBUGREGS", func() ([]byte, error) { v, err := c.DebugRegs(); return v.B[:], err }, func() error { return c.SetDebugRegs(dr) })
	xs, _ := c.XSave()
	check("XSAVE", func() ([]byte, error) { v, err := c.XSave(); return v.B[:], err }, func() error { return c.SetXSave(xs) })
	xc, _ := c.XCRs()
	check("XCRS", func() ([]byte, error) { v, err := c.XCRs(); return v.B[:], err }, func() error { return c.SetXCRs(xc) })
	la, _ := c.LAPIC()
	check("LAPIC", func() ([]byte, error) { v, err := c.LAPIC(); return v.Regs[:], err }, func() error { return c.SetLAPIC(la) })
	for _, chip := range []uint32{ChipPICMaster, ChipPICSlave, ChipIOAPIC} {
		st, err := vm.IRQChip(chip)
		if err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("IRQCHIP %d", chip), func() ([]byte, error) { v, err := vm.IRQChip(chip); return v.B[:], err }, func() error { return vm.SetIRQChip(st) })
	}
	// Time moves: only check that these restore.
	pit, err := vm.PIT2()
	if err != nil || vm.SetPIT2(pit) != nil {
		t.Fatalf("PIT2: %v", err)
	}
	clk, err := vm.Clock()
	if err != nil || vm.SetClock(clk) != nil {
		t.Fatalf("CLOCK: %v %v", err, vm.SetClock(clk))
	}
}
