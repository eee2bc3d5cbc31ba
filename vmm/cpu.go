package vmm

import (
	"fmt"
	"strings"

	"github.com/snapfaas/snapfaas/vmm/arch"
	"github.com/snapfaas/snapfaas/vmm/kvm"
)

// CPUID feature bits hidden from guests on emulated hosts (PVM): the
// instruction emulator cannot run them, and a guest that sees them uses
// them. Leaf 1 ECX and leaf 7 EBX/ECX.
const (
	cpuidSSE3    = 1 << 0
	cpuidPCLMUL  = 1 << 1
	cpuidSSSE3   = 1 << 9
	cpuidFMA     = 1 << 12
	cpuidCX16    = 1 << 13
	cpuidSSE41   = 1 << 19
	cpuidSSE42   = 1 << 20
	cpuidMOVBE   = 1 << 22
	cpuidPOPCNT  = 1 << 23
	cpuidAES     = 1 << 25
	cpuidXSAVE   = 1 << 26
	cpuidOSXSAVE = 1 << 27
	cpuidAVX     = 1 << 28
	cpuidF16C    = 1 << 29
	cpuidRDRAND  = 1 << 30
	cpuidHyper   = 1 << 31

	// Leaf 7 EBX: AVX2 and every AVX-512 and SHA bit.
	hiddenLeaf7EBX = 1<<5 | 1<<16 | 1<<17 | 1<<21 | 1<<26 | 1<<27 | 1<<28 | 1<<29 | 1<<30 | 1<<31

	hiddenLeaf1ECX = cpuidSSE3 | cpuidPCLMUL | cpuidSSSE3 | cpuidFMA | cpuidCX16 | cpuidSSE41 | cpuidSSE42 |
		cpuidMOVBE | cpuidPOPCNT | cpuidAES | cpuidXSAVE | cpuidOSXSAVE | cpuidAVX | cpuidF16C | cpuidRDRAND
)

// KVM paravirtual features (leaf 0x40000001 EAX) never offered to guests:
// asynchronous page faults. With them, a vCPU touching a page that is not
// yet resident (every page of a lazily restored VM, served through
// userfaultfd) is handed back to the guest with a "page not present"
// event instead of waiting, and the guest's bookkeeping for it lives in
// its memory and in MSRs that a snapshot freezes mid-flight: a restored
// guest would wait for "page ready" events for faults of the VM that was
// saved. Firecracker (on AMD) and Cloud Hypervisor hide it too.
const (
	kvmFeatureAsyncPF       = 1 << 4
	kvmFeatureAsyncPFVMExit = 1 << 10
	kvmFeatureAsyncPFInt    = 1 << 14

	hiddenKVMFeatures = kvmFeatureAsyncPF | kvmFeatureAsyncPFVMExit | kvmFeatureAsyncPFInt
)

// guestCPUID adapts KVM's supported CPUID for vCPU id of n: APIC ids and
// topology, the hypervisor bit, no asynchronous page faults, and with hide
// the features an instruction emulator cannot run.
func guestCPUID(supported []kvm.CPUIDEntry, id, n int, hide bool) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	for _, e := range supported {
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000ffff | uint32(n)<<16 | uint32(id)<<24
			if n > 1 {
				e.EDX |= 1 << 28 // HTT: the logical-processor count is valid
			}
			e.ECX |= cpuidHyper
			if hide {
				e.ECX &^= hiddenLeaf1ECX
			}
		case 7:
			if hide && e.Index == 0 {
				e.EBX &^= hiddenLeaf7EBX
				e.ECX = 0
				e.EDX = 0
			}
		case 0xb, 0x1f:
			e.EDX = uint32(id) // x2APIC id
		case 0xd:
			if hide {
				continue // no XSAVE state components
			}
		case 0x40000001: // KVM_CPUID_FEATURES
			e.EAX &^= hiddenKVMFeatures
		}
		out = append(out, e)
	}
	return out
}

// MSRs configured at boot (Firecracker's create_boot_msr_entries).
var bootMSRs = []kvm.MSREntry{
	{Index: 0x174}, {Index: 0x175}, {Index: 0x176}, // SYSENTER_CS/ESP/EIP
	{Index: 0xc0000081}, {Index: 0xc0000082}, {Index: 0xc0000083}, {Index: 0xc0000084}, // STAR LSTAR CSTAR SFMASK
	{Index: 0xc0000102},             // KERNEL_GS_BASE
	{Index: 0x10},                   // TSC
	{Index: 0x1a0, Data: 1},         // MISC_ENABLE: fast strings
	{Index: 0x2ff, Data: 1<<11 | 6}, // MTRRdefType: enabled, write-back
}

func bootMSRList(supported []uint32) []kvm.MSREntry {
	ok := map[uint32]bool{}
	for _, i := range supported {
		ok[i] = true
	}
	var out []kvm.MSREntry
	for _, m := range bootMSRs {
		if ok[m.Index] {
			out = append(out, m)
		}
	}
	return out
}

func kvmSegment(s arch.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL}
}

// setupVCPU puts a vCPU in the 64-bit boot protocol's entry state.
func setupVCPU(c *kvm.VCPU, st arch.EntryState, cpuid []kvm.CPUIDEntry, msrs []kvm.MSREntry) error {
	if err := c.SetCPUID(cpuid); err != nil {
		return err
	}
	if err := c.SetMSRs(msrs); err != nil {
		return err
	}
	sr, err := c.Sregs()
	if err != nil {
		return err
	}
	code, data := kvmSegment(st.Segments.Code), kvmSegment(st.Segments.Data)
	sr.CS = code
	sr.DS, sr.ES, sr.FS, sr.GS, sr.SS = data, data, data, data, data
	sr.TR = kvmSegment(st.Segments.TSS)
	sr.GDT = kvm.DTable{Base: st.Segments.GDTBase, Limit: st.Segments.GDTLimit}
	sr.IDT = kvm.DTable{Base: st.Segments.IDTBase, Limit: st.Segments.IDTLimit}
	sr.CR0, sr.CR3, sr.CR4, sr.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if err := c.SetSregs(sr); err != nil {
		return err
	}
	if err := c.SetRegs(kvm.Regs{RIP: st.RIP, RSP: st.RSP, RBP: st.RSP, RSI: st.RSI, RFlags: st.RFlags}); err != nil {
		return err
	}
	fpu := kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	if err := c.SetFPU(fpu); err != nil {
		return err
	}
	// LINT0 delivers ExtINT (the PIC), LINT1 NMI, as on a PC.
	l, err := c.LAPIC()
	if err != nil {
		return err
	}
	setLVT(&l, 0x350, 7)
	setLVT(&l, 0x360, 4)
	return c.SetLAPIC(l)
}

func setLVT(l *kvm.LAPIC, off int, mode uint32) {
	v := uint32(l.Regs[off]) | uint32(l.Regs[off+1])<<8 | uint32(l.Regs[off+2])<<16 | uint32(l.Regs[off+3])<<24
	v = v&^0x700 | mode<<8
	l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// ExitError reports a guest that stopped abnormally: the exit, the vCPU
// and its registers. Callers branch on its kind with errors.Is
// (ErrTripleFault, ErrEmulation).
type ExitError struct {
	VCPU int
	// Err is the sentinel for the kind of exit, or nil for one without
	// its own sentinel.
	Err    error
	Reason string
	Regs   kvm.Regs
	Sregs  kvm.Sregs
	Detail string
}

// Unwrap returns the exit's sentinel (nil if it has none).
func (e *ExitError) Unwrap() error { return e.Err }

func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vCPU %d: %s", e.VCPU, e.Reason)
	if e.Detail != "" {
		fmt.Fprintf(&b, " (%s)", e.Detail)
	}
	r := e.Regs
	fmt.Fprintf(&b, "\n  rip=%#016x rsp=%#016x rflags=%#x", r.RIP, r.RSP, r.RFlags)
	fmt.Fprintf(&b, "\n  rax=%#016x rbx=%#016x rcx=%#016x rdx=%#016x", r.RAX, r.RBX, r.RCX, r.RDX)
	fmt.Fprintf(&b, "\n  rsi=%#016x rdi=%#016x rbp=%#016x", r.RSI, r.RDI, r.RBP)
	fmt.Fprintf(&b, "\n  r8=%#x r9=%#x r10=%#x r11=%#x r12=%#x r13=%#x r14=%#x r15=%#x", r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15)
	s := e.Sregs
	fmt.Fprintf(&b, "\n  cr0=%#x cr2=%#x cr3=%#x cr4=%#x efer=%#x cs=%#x", s.CR0, s.CR2, s.CR3, s.CR4, s.EFER, s.CS.Selector)
	return b.String()
}
