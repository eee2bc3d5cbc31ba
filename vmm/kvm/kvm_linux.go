package kvm

import (
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request encoding (asm-generic/ioctl.h).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
	kvmio    = 0xAE
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }

// ioctl numbers from include/uapi/linux/kvm.h (x86_64 struct sizes).
var (
	kvmGetAPIVersion       = ioc(iocNone, 0x00, 0)
	kvmCreateVM            = ioc(iocNone, 0x01, 0)
	kvmGetMSRIndexList     = ioc(iocRead|iocWrite, 0x02, 4)
	kvmCheckExtension      = ioc(iocNone, 0x03, 0)
	kvmGetVCPUMmapSize     = ioc(iocNone, 0x04, 0)
	kvmGetSupportedCPUID   = ioc(iocRead|iocWrite, 0x05, 8)
	kvmCreateVCPU          = ioc(iocNone, 0x41, 0)
	kvmSetUserMemoryRegion = ioc(iocWrite, 0x46, unsafe.Sizeof(userspaceMemoryRegion{}))
	kvmGetDirtyLog         = ioc(iocWrite, 0x42, unsafe.Sizeof(dirtyLog{}))
	kvmSetTSSAddr          = ioc(iocNone, 0x47, 0)
	kvmSetIdentityMapAddr  = ioc(iocWrite, 0x48, 8)
	kvmCreateIRQChip       = ioc(iocNone, 0x60, 0)
	kvmIRQLine             = ioc(iocWrite, 0x61, 8)
	kvmIRQFD               = ioc(iocWrite, 0x76, unsafe.Sizeof(irqfd{}))
	kvmCreatePIT2          = ioc(iocWrite, 0x77, 64)
	kvmIOEventFD           = ioc(iocWrite, 0x79, unsafe.Sizeof(ioeventfd{}))
	kvmRun                 = ioc(iocNone, 0x80, 0)
	kvmGetRegs             = ioc(iocRead, 0x81, unsafe.Sizeof(Regs{}))
	kvmSetRegs             = ioc(iocWrite, 0x82, unsafe.Sizeof(Regs{}))
	kvmGetSregs            = ioc(iocRead, 0x83, unsafe.Sizeof(Sregs{}))
	kvmSetSregs            = ioc(iocWrite, 0x84, unsafe.Sizeof(Sregs{}))
	kvmGetMSRs             = ioc(iocRead|iocWrite, 0x88, 8)
	kvmSetMSRs             = ioc(iocWrite, 0x89, 8)
	kvmSetCPUID2           = ioc(iocWrite, 0x90, 8)
	kvmGetFPU              = ioc(iocRead, 0x8c, unsafe.Sizeof(FPU{}))
	kvmSetFPU              = ioc(iocWrite, 0x8d, unsafe.Sizeof(FPU{}))
	kvmGetLAPIC            = ioc(iocRead, 0x8e, unsafe.Sizeof(LAPIC{}))
	kvmSetLAPIC            = ioc(iocWrite, 0x8f, unsafe.Sizeof(LAPIC{}))
	kvmGetMPState          = ioc(iocRead, 0x98, 4)
	kvmSetMPState          = ioc(iocWrite, 0x99, 4)
	kvmGetVCPUEvents       = ioc(iocRead, 0x9f, unsafe.Sizeof(VCPUEvents{}))
	kvmSetVCPUEvents       = ioc(iocWrite, 0xa0, unsafe.Sizeof(VCPUEvents{}))
	kvmGetDebugRegs        = ioc(iocRead, 0xa1, unsafe.Sizeof(DebugRegs{}))
	kvmSetDebugRegs        = ioc(iocWrite, 0xa2, unsafe.Sizeof(DebugRegs{}))
	kvmGetXSave            = ioc(iocRead, 0xa4, unsafe.Sizeof(XSave{}))
	kvmSetXSave            = ioc(iocWrite, 0xa5, unsafe.Sizeof(XSave{}))
	kvmGetXCRs             = ioc(iocRead, 0xa6, unsafe.Sizeof(XCRs{}))
	kvmSetXCRs             = ioc(iocWrite, 0xa7, unsafe.Sizeof(XCRs{}))
	kvmGetIRQChip          = ioc(iocRead|iocWrite, 0x62, unsafe.Sizeof(IRQChip{}))
	kvmSetIRQChip          = ioc(iocRead, 0x63, unsafe.Sizeof(IRQChip{})) // _IOR in the kernel's header
	kvmGetClock            = ioc(iocRead, 0x7c, unsafe.Sizeof(Clock{}))
	kvmSetClock            = ioc(iocWrite, 0x7b, unsafe.Sizeof(Clock{}))
	kvmGetPIT2             = ioc(iocRead, 0x9f, unsafe.Sizeof(PIT2{}))
	kvmSetPIT2             = ioc(iocWrite, 0xa0, unsafe.Sizeof(PIT2{}))
)

// Opaque state blobs: a snapshot saves and restores them as KVM hands
// them out, without interpreting them.
type (
	// VCPUEvents is struct kvm_vcpu_events.
	VCPUEvents struct{ B [64]byte }
	// DebugRegs is struct kvm_debugregs.
	DebugRegs struct{ B [128]byte }
	// XSave is struct kvm_xsave (legacy 4 KiB form).
	XSave struct{ B [4096]byte }
	// XCRs is struct kvm_xcrs.
	XCRs struct{ B [392]byte }
	// IRQChip is struct kvm_irqchip; the chip id is its first u32
	// (0 PIC master, 1 PIC slave, 2 IOAPIC).
	IRQChip struct{ B [520]byte }
	// Clock is struct kvm_clock_data.
	Clock struct{ B [48]byte }
	// PIT2 is struct kvm_pit_state2.
	PIT2 struct{ B [112]byte }
)

// struct kvm_pic_state's fields, after kvm_irqchip's chip_id and pad.
const (
	picIRR     = 8 + 1
	picIMR     = 8 + 2
	picISR     = 8 + 3
	picIRQBase = 8 + 5
)

// PICState is part of an 8259 PIC's state (an IRQChip of ChipPICMaster or
// ChipPICSlave): its request, mask and in-service registers and the
// vector of its input 0.
type PICState struct{ IRR, IMR, ISR, IRQBase uint8 }

// PIC decodes a PIC's registers.
func (s *IRQChip) PIC() PICState {
	return PICState{IRR: s.B[picIRR], IMR: s.B[picIMR], ISR: s.B[picISR], IRQBase: s.B[picIRQBase]}
}

// SetPICMask sets a PIC's interrupt mask register and vector base, as
// initialisation (ICW2) and OCW1 would.
func (s *IRQChip) SetPICMask(imr, base uint8) { s.B[picIMR], s.B[picIRQBase] = imr, base }

// IRQ chip ids.
const (
	ChipPICMaster = 0
	ChipPICSlave  = 1
	ChipIOAPIC    = 2
)

// FPU is struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW, FSW   uint16
	FTWX, pad1 uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	pad2       uint32
}

// LAPIC is struct kvm_lapic_state: the local APIC's 1 KiB register page.
type LAPIC struct {
	Regs [1024]byte
}

// Capabilities (KVM_CAP_*).
const (
	CapIRQChip       = 0
	CapUserMemory    = 3
	CapSetTSSAddr    = 4
	CapIRQFD         = 32
	CapPIT2          = 33
	CapIOEventFD     = 36
	CapImmediateExit = 136
)

// Exit reasons (KVM_EXIT_*).
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// I/O directions in an IO exit.
const (
	IOIn  = 0
	IOOut = 1
)

// Regs is struct kvm_regs.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFlags                            uint64
}

// Segment is struct kvm_segment.
type Segment struct {
	Base                         uint64
	Limit                        uint32
	Selector                     uint16
	Type, Present, DPL, DB, S, L uint8
	G, AVL, Unusable, padding    uint8
}

// DTable is struct kvm_dtable.
type DTable struct {
	Base    uint64
	Limit   uint16
	padding [3]uint16
}

// Sregs is struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS  Segment
	TR, LDT                 Segment
	GDT, IDT                DTable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64
}

type userspaceMemoryRegion struct {
	Slot, Flags   uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// memLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES.
const memLogDirtyPages = 1

type dirtyLog struct {
	Slot, _ uint32
	Bitmap  uintptr
}

type irqfd struct {
	FD, GSI, Flags, ResampleFD uint32
	pad                        [16]uint8
}

type ioeventfd struct {
	DataMatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	pad       [36]uint8
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
	padding                [3]uint32
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index    uint32
	reserved uint32
	Data     uint64
}

// kvm_run offsets.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runExit          = 32 // the exit union
)

func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == syscall.EINTR && req != kvmRun {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

func ioctlPtr[T any](fd int, req uintptr, v *T) error {
	_, err := ioctl(fd, req, uintptr(unsafe.Pointer(v)))
	return err
}

// cpuidBuffer is struct kvm_cpuid2 with room for n entries.
func cpuidBuffer(entries []CPUIDEntry) []byte {
	b := make([]byte, 8+len(entries)*int(unsafe.Sizeof(CPUIDEntry{})))
	*(*uint32)(unsafe.Pointer(&b[0])) = uint32(len(entries))
	if len(entries) > 0 {
		copy(unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&b[8])), len(entries)), entries)
	}
	return b
}

func cpuidEntries(b []byte) []CPUIDEntry {
	n := *(*uint32)(unsafe.Pointer(&b[0]))
	if n == 0 {
		return nil
	}
	return append([]CPUIDEntry(nil), unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&b[8])), n)...)
}

func msrsBuffer(entries []MSREntry) []byte {
	b := make([]byte, 8+len(entries)*int(unsafe.Sizeof(MSREntry{})))
	*(*uint32)(unsafe.Pointer(&b[0])) = uint32(len(entries))
	if len(entries) > 0 {
		copy(unsafe.Slice((*MSREntry)(unsafe.Pointer(&b[8])), len(entries)), entries)
	}
	return b
}

func msrsEntries(b []byte, n int) []MSREntry {
	if n == 0 {
		return nil
	}
	return append([]MSREntry(nil), unsafe.Slice((*MSREntry)(unsafe.Pointer(&b[8])), n)...)
}

func bufPtr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func u32At(b []byte, off int) uint32     { return *(*uint32)(unsafe.Pointer(&b[off])) }
func u64At(b []byte, off int) uint64     { return *(*uint64)(unsafe.Pointer(&b[off])) }
func putU32(b []byte, off int, v uint32) { *(*uint32)(unsafe.Pointer(&b[off])) = v }

// HostModule names the KVM module loaded on this host as sysModule
// (/sys/module) shows it: "kvm_pvm" (software virtualization),
// "kvm_intel" or "kvm_amd"; "" if none is.
func HostModule(sysModule string) string {
	for _, m := range []string{"kvm_pvm", "kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join(sysModule, m)); err == nil {
			return m
		}
	}
	return ""
}
