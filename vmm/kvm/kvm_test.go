package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"
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
	// At the exit for the second OUT (at 0x1009), PVM has already moved
	// RIP past it; VMX and SVM complete it on the next KVM_RUN.
	want := uint64(0x1009)
	if HostModule("/sys/module") == "kvm_pvm" {
		want = 0x100a
	}
	if r.RIP != want {
		t.Fatalf("RIP %#x at the OUT exit, want %#x on %s", r.RIP, want, HostModule("/sys/module"))
	}
	if _, err := c.MSRs(msrs[:4]); err != nil {
		t.Fatal(err)
	}
}

// stateChange is one setter under test: the state is read, a copy with
// one field changed is set, and the field must read back changed; then the
// original is set back and must read back too.
type stateChange[T comparable] struct {
	name  string // state and field, for messages
	get   func() (T, error)
	set   func(T) error
	apply func(*T)        // changes the field
	field func(*T) []byte // the field's bytes
	// moves: the state changes by itself (time): after restoring, only
	// the field is compared, not the whole state.
	moves bool
}

func (c stateChange[T]) check(t *testing.T) {
	t.Helper()
	orig, err := c.get()
	if err != nil {
		t.Fatalf("%s: get: %v", c.name, err)
	}
	changed := orig
	c.apply(&changed)
	want := bytes.Clone(c.field(&changed))
	if bytes.Equal(want, c.field(&orig)) {
		t.Fatalf("%s: the test's change leaves the field at % x", c.name, want)
	}
	if err := c.set(changed); err != nil {
		t.Fatalf("%s: set changed: %v", c.name, err)
	}
	got, err := c.get()
	if err != nil {
		t.Fatalf("%s: get after set: %v", c.name, err)
	}
	if f := c.field(&got); !bytes.Equal(f, want) {
		t.Errorf("%s: set % x, read back % x (was % x): the setter did not apply it", c.name, want, f, c.field(&orig))
	}
	if err := c.set(orig); err != nil {
		t.Fatalf("%s: set original: %v", c.name, err)
	}
	got, err = c.get()
	if err != nil {
		t.Fatalf("%s: get after restore: %v", c.name, err)
	}
	if f, o := c.field(&got), c.field(&orig); !bytes.Equal(f, o) {
		t.Errorf("%s: restored % x, read back % x", c.name, o, f)
	} else if !c.moves && got != orig {
		t.Errorf("%s: the field is back but the state differs from the original", c.name)
	}
}

func le64(b []byte) []byte { return b[:8] }

// TestStateRoundTrips checks every state a snapshot saves: each setter
// takes a changed value (a setter that does nothing fails), and the
// original state can be set back.
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
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := vm.SetMemory(0, 0, uint64(len(mem)), uintptr(unsafe.Pointer(&mem[0])), false); err != nil {
		t.Fatal(err)
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cpuid, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	u32 := func(v *uint32) []byte { return le.AppendUint32(nil, *v) }

	stateChange[Regs]{name: "REGS rax", get: c.Regs, set: c.SetRegs,
		apply: func(r *Regs) { r.RAX ^= 0x5a5a5a5a },
		field: func(r *Regs) []byte { return le.AppendUint64(nil, r.RAX) }}.check(t)
	stateChange[Sregs]{name: "SREGS cr2", get: c.Sregs, set: c.SetSregs,
		apply: func(s *Sregs) { s.CR2 ^= 0x12345000 },
		field: func(s *Sregs) []byte { return le.AppendUint64(nil, s.CR2) }}.check(t)
	stateChange[FPU]{name: "FPU fcw", get: c.FPU, set: c.SetFPU,
		apply: func(f *FPU) { f.FCW ^= 0x0c00 }, // rounding control
		field: func(f *FPU) []byte { return le.AppendUint16(nil, f.FCW) }}.check(t)
	stateChange[uint32]{name: "MP_STATE", get: c.MPState, set: c.SetMPState,
		apply: func(v *uint32) {
			if *v == mpStateHalted {
				*v = mpStateRunnable
			} else {
				*v = mpStateHalted
			}
		},
		field: u32}.check(t)
	stateChange[VCPUEvents]{name: "VCPU_EVENTS nmi.masked", get: c.Events, set: c.SetEvents,
		apply: func(e *VCPUEvents) { e.B[14] ^= 1 },
		field: func(e *VCPUEvents) []byte { return e.B[14:15] }}.check(t)
	stateChange[DebugRegs]{name: "DEBUGREGS db0", get: c.DebugRegs, set: c.SetDebugRegs,
		apply: func(d *DebugRegs) { le.PutUint64(d.B[0:], le.Uint64(d.B[0:])^0x7000) },
		field: func(d *DebugRegs) []byte { return le64(d.B[0:]) }}.check(t)
	stateChange[XSave]{name: "XSAVE x87 fcw", get: c.XSave, set: c.SetXSave,
		apply: func(x *XSave) {
			le.PutUint16(x.B[0:], le.Uint16(x.B[0:])^0x0c00)
			x.B[512] |= 1 // XSTATE_BV: the x87 state is not in its init state
		},
		field: func(x *XSave) []byte { return x.B[0:2] }}.check(t)
	stateChange[XCRs]{name: "XCRS xcr0", get: c.XCRs, set: c.SetXCRs,
		apply: func(x *XCRs) {
			// nr_xcrs, flags, then {xcr, reserved, value}: XCR0 with SSE
			// toggled (x87 must stay on).
			le.PutUint32(x.B[0:], 1)
			le.PutUint32(x.B[8:], 0)
			le.PutUint64(x.B[16:], le.Uint64(x.B[16:])^2|1)
		},
		field: func(x *XCRs) []byte { return le64(x.B[16:]) }}.check(t)
	stateChange[LAPIC]{name: "LAPIC tpr", get: c.LAPIC, set: c.SetLAPIC,
		apply: func(l *LAPIC) { l.Regs[0x80] ^= 0x20 },
		field: func(l *LAPIC) []byte { return l.Regs[0x80:0x84] }}.check(t)

	// The chips: a field of each (after chip id and padding).
	for _, chip := range []struct {
		id    uint32
		name  string
		field [2]int // offset and length
	}{
		{ChipPICMaster, "IRQCHIP PIC master irq_base", [2]int{8 + 5, 1}},
		{ChipPICSlave, "IRQCHIP PIC slave irq_base", [2]int{8 + 5, 1}},
		{ChipIOAPIC, "IRQCHIP IOAPIC id", [2]int{8 + 12, 4}},
	} {
		off, n := chip.field[0], chip.field[1]
		stateChange[IRQChip]{name: chip.name,
			get:   func() (IRQChip, error) { return vm.IRQChip(chip.id) },
			set:   vm.SetIRQChip,
			apply: func(s *IRQChip) { s.B[off] ^= 0x08 },
			field: func(s *IRQChip) []byte { return s.B[off : off+n] }}.check(t)
	}
	// PIT channel 1's mode (channels of 24 bytes: count, latched_count,
	// count_latched, status_latched, status, read_state, write_state,
	// write_latch, rw_mode, mode, ...). Load times move.
	stateChange[PIT2]{name: "PIT2 channel 1 mode", get: vm.PIT2, set: vm.SetPIT2, moves: true,
		apply: func(p *PIT2) {
			if p.B[24+13] == 2 {
				p.B[24+13] = 3
			} else {
				p.B[24+13] = 2
			}
		},
		field: func(p *PIT2) []byte { return p.B[24+13 : 24+14] }}.check(t)

	// The clock moves: set it an hour ahead and it must read an hour
	// ahead (plus the little time that passed), then back.
	clk, err := vm.Clock()
	if err != nil {
		t.Fatalf("CLOCK: %v", err)
	}
	const hour, slack = uint64(time.Hour), uint64(time.Minute)
	ahead := clk
	le.PutUint64(ahead.B[0:], le.Uint64(clk.B[0:])+hour)
	le.PutUint32(ahead.B[8:], 0) // flags: set the clock value only
	if err := vm.SetClock(ahead); err != nil {
		t.Fatalf("CLOCK: set an hour ahead: %v", err)
	}
	got, err := vm.Clock()
	if err != nil {
		t.Fatal(err)
	}
	if g, w := le.Uint64(got.B[0:]), le.Uint64(ahead.B[0:]); g < w || g > w+slack {
		t.Errorf("CLOCK: set %d ns, read back %d ns (was %d): the setter did not apply it", w, g, le.Uint64(clk.B[0:]))
	}
	back := clk
	le.PutUint32(back.B[8:], 0)
	if err := vm.SetClock(back); err != nil {
		t.Fatalf("CLOCK: set back: %v", err)
	}
	if got, err := vm.Clock(); err != nil || le.Uint64(got.B[0:]) >= le.Uint64(clk.B[0:])+hour {
		t.Errorf("CLOCK: after setting it back: %d ns, %v (original %d)", le.Uint64(got.B[0:]), err, le.Uint64(clk.B[0:]))
	}
}

// KVM_MP_STATE_* values.
const (
	mpStateRunnable = 0
	mpStateHalted   = 3
)
