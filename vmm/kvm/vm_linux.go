package kvm

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnavailable: /dev/kvm is missing or unusable.
var ErrUnavailable = errors.New("KVM is unavailable")

// System is an open /dev/kvm.
type System struct {
	fd       int
	mmapSize int
}

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("/dev/kvm: %w: %w", err, ErrUnavailable)
	}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil || v != 12 {
		unix.Close(fd)
		return nil, fmt.Errorf("/dev/kvm: API version %d (%v), want 12: %w", v, err, ErrUnavailable)
	}
	size, err := ioctl(fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return &System{fd: fd, mmapSize: int(size)}, nil
}

// Close closes /dev/kvm.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION for capability c.
func (s *System) CheckExtension(c int) int {
	r, err := ioctl(s.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 64; n <= 4096; n *= 2 {
		b := cpuidBuffer(make([]CPUIDEntry, n))
		_, err := ioctl(s.fd, kvmGetSupportedCPUID, bufPtr(b))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return cpuidEntries(b), nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: too many entries")
}

// MSRIndexList returns the MSRs KVM saves and restores (KVM_GET_MSR_INDEX_LIST).
func (s *System) MSRIndexList() ([]uint32, error) {
	for n := 64; n <= 4096; n *= 2 {
		b := make([]byte, 4+4*n)
		putU32(b, 0, uint32(n))
		_, err := ioctl(s.fd, kvmGetMSRIndexList, bufPtr(b))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		got := int(u32At(b, 0))
		out := make([]uint32, got)
		for i := range out {
			out[i] = u32At(b, 4+4*i)
		}
		return out, nil
	}
	return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: too many entries")
}

// VM is a KVM virtual machine.
type VM struct {
	sys *System
	fd  int
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{sys: s, fd: int(fd)}, nil
}

// Close closes the VM.
func (vm *VM) Close() error { return unix.Close(vm.fd) }

// FD returns the VM's file descriptor.
func (vm *VM) FD() int { return vm.fd }

// SetTSSAddr sets the three-page TSS region (needed on Intel).
func (vm *VM) SetTSSAddr(addr uint64) error {
	_, err := ioctl(vm.fd, kvmSetTSSAddr, uintptr(addr))
	return wrap("KVM_SET_TSS_ADDR", err)
}

// SetIdentityMapAddr sets the identity-map page (needed on Intel).
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	return wrap("KVM_SET_IDENTITY_MAP_ADDR", ioctlPtr(vm.fd, kvmSetIdentityMapAddr, &addr))
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and local APICs.
func (vm *VM) CreateIRQChip() error {
	_, err := ioctl(vm.fd, kvmCreateIRQChip, 0)
	return wrap("KVM_CREATE_IRQCHIP", err)
}

// CreatePIT2 creates the in-kernel PIT.
func (vm *VM) CreatePIT2() error {
	var cfg [64]byte
	return wrap("KVM_CREATE_PIT2", ioctlPtr(vm.fd, kvmCreatePIT2, &cfg))
}

// SetMemory maps host memory at hostAddr into the guest at guest; with
// logDirty, KVM records the pages the guest writes (see DirtyLog).
func (vm *VM) SetMemory(slot uint32, guest, size uint64, hostAddr uintptr, logDirty bool) error {
	r := userspaceMemoryRegion{Slot: slot, GuestPhysAddr: guest, MemorySize: size, UserspaceAddr: uint64(hostAddr)}
	if logDirty {
		r.Flags = memLogDirtyPages
	}
	return wrap("KVM_SET_USER_MEMORY_REGION", ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &r))
}

// DirtyLog fills bitmap (one bit per page of the slot, least significant
// bit first; at least ceil(pages/64) words) with the pages the guest wrote
// since the slot was created or the last call, and clears the log. The
// slot must have been set with logDirty.
func (vm *VM) DirtyLog(slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return nil
	}
	d := dirtyLog{Slot: slot, Bitmap: uintptr(unsafe.Pointer(&bitmap[0]))}
	err := ioctlPtr(vm.fd, kvmGetDirtyLog, &d)
	runtime.KeepAlive(bitmap)
	return wrap("KVM_GET_DIRTY_LOG", err)
}

// IRQLine sets interrupt line irq to level.
func (vm *VM) IRQLine(irq, level uint32) error {
	l := [2]uint32{irq, level}
	return wrap("KVM_IRQ_LINE", ioctlPtr(vm.fd, kvmIRQLine, &l))
}

// IRQFD makes a write to eventfd fd raise interrupt gsi.
func (vm *VM) IRQFD(fd int, gsi uint32) error {
	r := irqfd{FD: uint32(fd), GSI: gsi}
	return wrap("KVM_IRQFD", ioctlPtr(vm.fd, kvmIRQFD, &r))
}

// IOEventFD makes a guest write of length bytes at MMIO address addr
// signal eventfd fd instead of exiting (datamatch if match != nil).
func (vm *VM) IOEventFD(fd int, addr uint64, length uint32, match *uint64) error {
	r := ioeventfd{Addr: addr, Len: length, FD: int32(fd)}
	if match != nil {
		r.DataMatch = *match
		r.Flags |= 1 // KVM_IOEVENTFD_FLAG_DATAMATCH
	}
	return wrap("KVM_IOEVENTFD", ioctlPtr(vm.fd, kvmIOEventFD, &r))
}

// VCPU is a virtual CPU. Run it from one locked OS thread.
type VCPU struct {
	ID  int
	fd  int
	run []byte
	tid atomic.Int32
}

// CreateVCPU creates vCPU id.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, vm.sys.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run}, nil
}

// Close releases the vCPU.
func (c *VCPU) Close() error {
	unix.Munmap(c.run)
	return unix.Close(c.fd)
}

// Regs returns the general registers.
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	return r, wrap("KVM_GET_REGS", ioctlPtr(c.fd, kvmGetRegs, &r))
}

// SetRegs sets the general registers.
func (c *VCPU) SetRegs(r Regs) error { return wrap("KVM_SET_REGS", ioctlPtr(c.fd, kvmSetRegs, &r)) }

// Sregs returns the special registers.
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	return s, wrap("KVM_GET_SREGS", ioctlPtr(c.fd, kvmGetSregs, &s))
}

// SetSregs sets the special registers.
func (c *VCPU) SetSregs(s Sregs) error { return wrap("KVM_SET_SREGS", ioctlPtr(c.fd, kvmSetSregs, &s)) }

// SetCPUID sets the CPUID the guest sees.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	b := cpuidBuffer(entries)
	_, err := ioctl(c.fd, kvmSetCPUID2, bufPtr(b))
	return wrap("KVM_SET_CPUID2", err)
}

// SetMSRs sets MSRs; all must be accepted.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	b := msrsBuffer(entries)
	n, err := ioctl(c.fd, kvmSetMSRs, bufPtr(b))
	if err != nil {
		return wrap("KVM_SET_MSRS", err)
	}
	if int(n) != len(entries) {
		return fmt.Errorf("KVM_SET_MSRS: set %d of %d (MSR %#x refused)", n, len(entries), entries[n].Index)
	}
	return nil
}

// MSRs reads the given MSRs.
func (c *VCPU) MSRs(indices []uint32) ([]MSREntry, error) {
	es := make([]MSREntry, len(indices))
	for i, idx := range indices {
		es[i].Index = idx
	}
	b := msrsBuffer(es)
	n, err := ioctl(c.fd, kvmGetMSRs, bufPtr(b))
	if err != nil {
		return nil, wrap("KVM_GET_MSRS", err)
	}
	return msrsEntries(b, int(n)), nil
}

// FPU returns the FPU state.
func (c *VCPU) FPU() (FPU, error) {
	var f FPU
	return f, wrap("KVM_GET_FPU", ioctlPtr(c.fd, kvmGetFPU, &f))
}

// SetFPU sets the FPU state.
func (c *VCPU) SetFPU(f FPU) error { return wrap("KVM_SET_FPU", ioctlPtr(c.fd, kvmSetFPU, &f)) }

// LAPIC returns the local APIC state.
func (c *VCPU) LAPIC() (LAPIC, error) {
	var l LAPIC
	return l, wrap("KVM_GET_LAPIC", ioctlPtr(c.fd, kvmGetLAPIC, &l))
}

// SetLAPIC sets the local APIC state.
func (c *VCPU) SetLAPIC(l LAPIC) error { return wrap("KVM_SET_LAPIC", ioctlPtr(c.fd, kvmSetLAPIC, &l)) }

// MPState returns the vCPU's multiprocessing state.
func (c *VCPU) MPState() (uint32, error) {
	var v uint32
	return v, wrap("KVM_GET_MP_STATE", ioctlPtr(c.fd, kvmGetMPState, &v))
}

// SetMPState sets the multiprocessing state.
func (c *VCPU) SetMPState(v uint32) error {
	return wrap("KVM_SET_MP_STATE", ioctlPtr(c.fd, kvmSetMPState, &v))
}

// Events returns pending exceptions, interrupts and NMIs.
func (c *VCPU) Events() (VCPUEvents, error) {
	var e VCPUEvents
	return e, wrap("KVM_GET_VCPU_EVENTS", ioctlPtr(c.fd, kvmGetVCPUEvents, &e))
}

// SetEvents sets pending events.
func (c *VCPU) SetEvents(e VCPUEvents) error {
	return wrap("KVM_SET_VCPU_EVENTS", ioctlPtr(c.fd, kvmSetVCPUEvents, &e))
}

// DebugRegs returns the debug registers.
func (c *VCPU) DebugRegs() (DebugRegs, error) {
	var d DebugRegs
	return d, wrap("KVM_GET_DEBUGREGS", ioctlPtr(c.fd, kvmGetDebugRegs, &d))
}

// SetDebugRegs sets the debug registers.
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	return wrap("KVM_SET_DEBUGREGS", ioctlPtr(c.fd, kvmSetDebugRegs, &d))
}

// XSave returns the extended FPU state.
func (c *VCPU) XSave() (XSave, error) {
	var x XSave
	return x, wrap("KVM_GET_XSAVE", ioctlPtr(c.fd, kvmGetXSave, &x))
}

// SetXSave sets the extended FPU state.
func (c *VCPU) SetXSave(x XSave) error { return wrap("KVM_SET_XSAVE", ioctlPtr(c.fd, kvmSetXSave, &x)) }

// XCRs returns the extended control registers.
func (c *VCPU) XCRs() (XCRs, error) {
	var x XCRs
	return x, wrap("KVM_GET_XCRS", ioctlPtr(c.fd, kvmGetXCRs, &x))
}

// SetXCRs sets the extended control registers.
func (c *VCPU) SetXCRs(x XCRs) error { return wrap("KVM_SET_XCRS", ioctlPtr(c.fd, kvmSetXCRs, &x)) }

// IRQChip returns the state of in-kernel interrupt controller chip.
func (vm *VM) IRQChip(chip uint32) (IRQChip, error) {
	var s IRQChip
	putU32(s.B[:], 0, chip)
	return s, wrap("KVM_GET_IRQCHIP", ioctlPtr(vm.fd, kvmGetIRQChip, &s))
}

// SetIRQChip restores an interrupt controller's state (its chip id is in it).
func (vm *VM) SetIRQChip(s IRQChip) error {
	return wrap("KVM_SET_IRQCHIP", ioctlPtr(vm.fd, kvmSetIRQChip, &s))
}

// Clock returns the VM's kvmclock.
func (vm *VM) Clock() (Clock, error) {
	var c Clock
	return c, wrap("KVM_GET_CLOCK", ioctlPtr(vm.fd, kvmGetClock, &c))
}

// SetClock sets the VM's kvmclock. Only the clock value (and, when the
// flags carry KVM_CLOCK_REALTIME, the realtime reference) is used.
func (vm *VM) SetClock(c Clock) error {
	const clockRealtime = 1 << 2 // the only flag KVM_SET_CLOCK accepts
	putU32(c.B[:], 8, u32At(c.B[:], 8)&clockRealtime)
	return wrap("KVM_SET_CLOCK", ioctlPtr(vm.fd, kvmSetClock, &c))
}

// PIT2 returns the in-kernel PIT's state.
func (vm *VM) PIT2() (PIT2, error) {
	var p PIT2
	return p, wrap("KVM_GET_PIT2", ioctlPtr(vm.fd, kvmGetPIT2, &p))
}

// SetPIT2 restores the PIT's state.
func (vm *VM) SetPIT2(p PIT2) error { return wrap("KVM_SET_PIT2", ioctlPtr(vm.fd, kvmSetPIT2, &p)) }

// Run enters the guest until the next exit and returns the exit reason.
// EINTR (a signal, or immediate exit) returns ExitIntr, and so does EAGAIN:
// an application processor waiting for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED)
// blocks in KVM_RUN until an event arrives, then returns EAGAIN, and the
// caller must simply enter again (as Firecracker does) to run it.
func (c *VCPU) Run() (int, error) {
	if c.tid.Load() == 0 {
		runtime.LockOSThread()
		c.tid.Store(int32(unix.Gettid()))
	}
	_, err := ioctl(c.fd, kvmRun, 0)
	if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
		return ExitIntr, nil
	}
	if err != nil {
		return 0, wrap("KVM_RUN", err)
	}
	return int(u32At(c.run, runExitReason)), nil
}

// Kick makes a running KVM_RUN return soon with ExitIntr: it sets
// immediate_exit and signals the vCPU's thread.
func (c *VCPU) Kick() {
	c.run[runImmediateExit] = 1
	if tid := c.tid.Load(); tid != 0 {
		_ = unix.Tgkill(os.Getpid(), int(tid), unix.SIGURG) // Go ignores SIGURG
	}
}

// ClearKick clears immediate_exit.
func (c *VCPU) ClearKick() { c.run[runImmediateExit] = 0 }

// IO describes a port I/O exit. Data is the buffer to read from (OUT) or
// fill (IN): Size*Count bytes inside kvm_run.
type IO struct {
	Direction int
	Size      int
	Port      uint16
	Count     int
	Data      []byte
}

// IOExit decodes the current IO exit.
func (c *VCPU) IOExit() IO {
	e := c.run[runExit:]
	io := IO{Direction: int(e[0]), Size: int(e[1]), Port: uint16(e[2]) | uint16(e[3])<<8, Count: int(u32At(e, 4))}
	off := int(u64At(e, 8))
	io.Data = c.run[off : off+io.Size*io.Count]
	return io
}

// MMIO describes an MMIO exit; for a read, fill Data.
type MMIO struct {
	Addr    uint64
	Data    []byte
	IsWrite bool
}

// MMIOExit decodes the current MMIO exit.
func (c *VCPU) MMIOExit() MMIO {
	e := c.run[runExit:]
	n := int(u32At(e, 16))
	return MMIO{Addr: u64At(e, 0), Data: e[8 : 8+min(n, 8)], IsWrite: e[20] != 0}
}

// InternalError returns the suberror and data of an internal-error exit.
func (c *VCPU) InternalError() (suberror uint32, data []uint64) {
	e := c.run[runExit:]
	n := min(int(u32At(e, 4)), 16)
	for i := 0; i < n; i++ {
		data = append(data, u64At(e, 8+8*i))
	}
	return u32At(e, 0), data
}

// FailEntry returns the hardware entry-failure reason.
func (c *VCPU) FailEntry() uint64 { return u64At(c.run[runExit:], 0) }

// SystemEvent returns the type of a system-event exit.
func (c *VCPU) SystemEvent() uint32 { return u32At(c.run[runExit:], 0) }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
