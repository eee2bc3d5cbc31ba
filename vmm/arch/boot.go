package arch

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMemory: guest memory is too small or a structure does not fit.
var ErrMemory = errors.New("guest memory too small")

// E820 entry types.
const (
	E820RAM      = 1
	E820Reserved = 2
	E820ACPI     = 3 // ACPI tables, reclaimable once parsed
)

// E820Entry is one entry of the BIOS memory map.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// E820Map returns the memory map for memSize bytes of RAM: low memory up
// to the EBDA; the EBDA and the BIOS area up to 1 MiB reserved (MP table,
// ACPI tables, RSDP); then RAM from 1 MiB, split around the MMIO gap when
// memory reaches it. Guest memory is one contiguous host mapping; RAM that
// would fall in the gap is placed above 4 GiB.
func E820Map(memSize uint64) []E820Entry {
	m := []E820Entry{{0, EBDAStart, E820RAM}, {EBDAStart, HighMemStart - EBDAStart, E820Reserved}}
	switch {
	case memSize <= MMIOGapStart:
		m = append(m, E820Entry{HighMemStart, memSize - HighMemStart, E820RAM})
	default:
		m = append(m, E820Entry{HighMemStart, MMIOGapStart - HighMemStart, E820RAM})
		m = append(m, E820Entry{MMIOGapEnd, memSize - MMIOGapStart, E820RAM})
	}
	return m
}

// RAMRegions returns the guest-physical ranges of RAM for memSize bytes,
// with their offset into the single host mapping: [guest, guest+size) is
// host offset [off, off+size).
type RAMRegion struct {
	Guest, Size, Offset uint64
}

// RAMRegions splits memory around the MMIO gap.
func RAMRegions(memSize uint64) []RAMRegion {
	if memSize <= MMIOGapStart {
		return []RAMRegion{{0, memSize, 0}}
	}
	return []RAMRegion{{0, MMIOGapStart, 0}, {MMIOGapEnd, memSize - MMIOGapStart, MMIOGapStart}}
}

// Zero-page (struct boot_params) offsets, from
// arch/x86/include/uapi/asm/bootparam.h.
const (
	bpACPIRSDPAddr  = 0x070 // acpi_rsdp_addr (boot protocol 2.14)
	bpExtCmdlinePtr = 0x0c8 // ext_cmd_line_ptr (0x0c0/0x0c4: ext_ramdisk_image/size, left 0)
	bpE820Entries   = 0x1e8
	bpHdr           = 0x1f1 // struct setup_header starts here
	bpSetupSects    = 0x1f1
	bpBootFlag      = 0x1fe
	bpJump          = 0x200
	bpHeader        = 0x202
	bpVersion       = 0x206
	bpTypeOfLoader  = 0x210
	bpLoadFlags     = 0x211
	bpCode32Start   = 0x214
	bpRamdiskImage  = 0x218
	bpRamdiskSize   = 0x21c
	bpHeapEndPtr    = 0x224
	bpCmdlinePtr    = 0x228
	bpKernelAlign   = 0x230
	bpRelocatable   = 0x234
	bpXLoadFlags    = 0x236
	bpCmdlineSize   = 0x238
	bpPrefAddress   = 0x258
	bpInitSize      = 0x260
	bpE820Table     = 0x2d0
	e820Max         = 128
	e820EntrySize   = 20

	// HdrSMagic is "HdrS", the setup header signature.
	HdrSMagic = 0x53726448
	// BootFlagMagic is the 0xAA55 boot sector signature.
	BootFlagMagic = 0xaa55
	// LoaderUndefined is type_of_loader 0xff: a loader without an id.
	LoaderUndefined = 0xff
	loadedHigh      = 0x01 // loadflags: protected-mode code at 0x100000
	canUseHeap      = 0x80
	xlfKernel64     = 0x01 // xloadflags: has a 64-bit entry at +0x200
)

// BootParams describes what the zero page says.
type BootParams struct {
	// SetupHeader is the bzImage's setup header (file bytes 0x1f1 to the
	// end of the header), copied in as the boot protocol asks; nil for an
	// ELF kernel, for which a minimal header is written.
	SetupHeader []byte
	Cmdline     string
	MemSize     uint64
	InitrdAddr  uint32
	InitrdSize  uint32
	// RSDPAddr is the ACPI RSDP's guest address (WriteACPI), 0 for none;
	// the kernel uses it before scanning the BIOS area.
	RSDPAddr uint64
}

// WriteZeroPage writes boot_params, the command line and the e820 map into
// guest memory mem.
func WriteZeroPage(mem []byte, p BootParams) error {
	if uint64(len(mem)) < HighMemStart {
		return fmt.Errorf("%d bytes: %w", len(mem), ErrMemory)
	}
	if len(p.Cmdline)+1 > CmdlineMax {
		return fmt.Errorf("kernel command line of %d bytes exceeds %d", len(p.Cmdline), CmdlineMax-1)
	}
	zp := mem[ZeroPageStart : ZeroPageStart+PageSize]
	clear(zp)
	le := binary.LittleEndian
	if p.SetupHeader != nil {
		copy(zp[bpHdr:], p.SetupHeader)
	} else {
		le.PutUint16(zp[bpBootFlag:], BootFlagMagic)
		le.PutUint32(zp[bpHeader:], HdrSMagic)
		le.PutUint16(zp[bpVersion:], 0x020f)
		le.PutUint32(zp[bpKernelAlign:], 0x01000000)
	}
	zp[bpTypeOfLoader] = LoaderUndefined
	zp[bpLoadFlags] |= loadedHigh | canUseHeap
	le.PutUint16(zp[bpHeapEndPtr:], 0xfe00)
	le.PutUint32(zp[bpCmdlinePtr:], CmdlineStart)
	le.PutUint32(zp[bpExtCmdlinePtr:], 0)
	le.PutUint32(zp[bpCmdlineSize:], uint32(len(p.Cmdline)))
	le.PutUint32(zp[bpRamdiskImage:], p.InitrdAddr)
	le.PutUint32(zp[bpRamdiskSize:], p.InitrdSize)
	le.PutUint64(zp[bpACPIRSDPAddr:], p.RSDPAddr)

	cl := mem[CmdlineStart : CmdlineStart+CmdlineMax]
	clear(cl)
	copy(cl, p.Cmdline)

	m := E820Map(p.MemSize)
	if len(m) > e820Max {
		return fmt.Errorf("e820 map of %d entries", len(m))
	}
	zp[bpE820Entries] = byte(len(m))
	for i, e := range m {
		b := zp[bpE820Table+i*e820EntrySize:]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint64(b[8:], e.Size)
		le.PutUint32(b[16:], e.Type)
	}
	return nil
}

// Page-table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7 // 2 MiB page in a PD entry
)

// WritePageTables writes an identity map of the first 1 GiB with 2 MiB
// pages and returns the value for CR3.
func WritePageTables(mem []byte) (cr3 uint64, err error) {
	if len(mem) < PDStart+PageSize {
		return 0, ErrMemory
	}
	le := binary.LittleEndian
	for _, t := range []int{PML4Start, PDPTStart, PDStart} {
		clear(mem[t : t+PageSize])
	}
	le.PutUint64(mem[PML4Start:], PDPTStart|ptePresent|pteWrite)
	le.PutUint64(mem[PDPTStart:], PDStart|ptePresent|pteWrite)
	for i := uint64(0); i < 512; i++ {
		le.PutUint64(mem[PDStart+8*i:], i<<21|ptePresent|pteWrite|ptePS)
	}
	return PML4Start, nil
}

// Segment is a code/data/TSS segment as KVM's kvm_segment describes it.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
}

// GDT entries written by WriteGDT, as (flags, base, limit) in
// Firecracker's gdt_entry encoding.
var bootGDT = [4]uint64{
	0,                            // null
	gdtEntry(0xa09b, 0, 0xfffff), // 0x08: 64-bit code
	gdtEntry(0xc093, 0, 0xfffff), // 0x10: data
	gdtEntry(0x808b, 0, 0xfffff), // 0x18: TSS
}

// Selectors of the boot GDT.
const (
	SelectorCode = 0x08
	SelectorData = 0x10
	SelectorTSS  = 0x18
)

func gdtEntry(flags uint16, base, limit uint32) uint64 {
	return uint64(base&0xff000000)<<(56-24) |
		uint64(flags&0xf0ff)<<40 |
		uint64(limit&0x000f0000)<<(48-16) |
		uint64(base&0x00ffffff)<<16 |
		uint64(limit&0x0000ffff)
}

// segmentFromGDT decodes a GDT entry into KVM's segment form.
func segmentFromGDT(e uint64, index uint16) Segment {
	limit := uint32(e&0xffff) | uint32((e>>48)&0xf)<<16
	s := Segment{
		Base:     (e>>16)&0xffffff | (e>>56)<<24,
		Limit:    limit,
		Selector: index * 8,
		Type:     uint8((e >> 40) & 0xf),
		S:        uint8((e >> 44) & 1),
		DPL:      uint8((e >> 45) & 3),
		Present:  uint8((e >> 47) & 1),
		AVL:      uint8((e >> 52) & 1),
		L:        uint8((e >> 53) & 1),
		DB:       uint8((e >> 54) & 1),
		G:        uint8((e >> 55) & 1),
	}
	if s.G == 1 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	return s
}

// Segments is the segment state for entry in 64-bit mode.
type Segments struct {
	Code, Data, TSS Segment
	GDTBase         uint64
	GDTLimit        uint16
	IDTBase         uint64
	IDTLimit        uint16
}

// WriteGDT writes the boot GDT and an empty IDT and returns the segments.
func WriteGDT(mem []byte) (Segments, error) {
	if len(mem) < BootIDTStart+8 {
		return Segments{}, ErrMemory
	}
	le := binary.LittleEndian
	for i, e := range bootGDT {
		le.PutUint64(mem[BootGDTStart+8*i:], e)
	}
	le.PutUint64(mem[BootIDTStart:], 0)
	return Segments{
		Code:     segmentFromGDT(bootGDT[1], 1),
		Data:     segmentFromGDT(bootGDT[2], 2),
		TSS:      segmentFromGDT(bootGDT[3], 3),
		GDTBase:  BootGDTStart,
		GDTLimit: uint16(len(bootGDT)*8 - 1),
		IDTBase:  BootIDTStart,
		IDTLimit: 7,
	}, nil
}

// Control-register and EFER bits for long mode.
const (
	CR0PE   = 1 << 0
	CR0ET   = 1 << 4
	CR0PG   = 1 << 31
	CR4PAE  = 1 << 5
	EFERLME = 1 << 8
	EFERLMA = 1 << 10
)

// EntryState is the vCPU state at kernel entry.
type EntryState struct {
	RIP, RSP, RSI uint64
	RFlags        uint64
	CR0, CR3, CR4 uint64
	EFER          uint64
	Segments      Segments
}

// SetupLongMode writes page tables, GDT and IDT and returns the state for
// entering the kernel at entry in 64-bit mode with RSI pointing at the
// zero page, as the 64-bit boot protocol asks.
func SetupLongMode(mem []byte, entry uint64) (EntryState, error) {
	cr3, err := WritePageTables(mem)
	if err != nil {
		return EntryState{}, err
	}
	segs, err := WriteGDT(mem)
	if err != nil {
		return EntryState{}, err
	}
	return EntryState{
		RIP: entry, RSP: BootStackPointer, RSI: ZeroPageStart, RFlags: 2,
		CR0: CR0PE | CR0ET | CR0PG, CR3: cr3, CR4: CR4PAE, EFER: EFERLME | EFERLMA,
		Segments: segs,
	}, nil
}
