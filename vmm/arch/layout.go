// Package arch holds the x86_64 guest layout and the boot structures a VMM
// writes into guest memory to start a kernel through Linux's 64-bit boot
// protocol (Documentation/arch/x86/boot.rst): the zero page (boot_params)
// with its e820 map and command line, identity-mapped page tables, a GDT,
// the MP table and the ACPI tables that describe the vCPUs and interrupt
// controllers, and the register state at entry.
//
// Every guest address lives in this file. The builders write into a plain
// []byte that is guest memory (offset = guest physical address) and return
// values for the vCPU registers; nothing here talks to KVM, so all of it is
// unit-tested against the documented boot-protocol values.
package arch

// Guest physical layout, as Firecracker's arch/x86_64/layout.rs.
const (
	// BootGDTStart and BootIDTStart hold the boot GDT and an empty IDT.
	BootGDTStart = 0x500
	BootIDTStart = 0x520
	// ZeroPageStart is the boot_params page handed to the kernel in RSI.
	ZeroPageStart = 0x7000
	// BootStackPointer is the initial RSP/RBP.
	BootStackPointer = 0x8ff0
	// PML4Start, PDPTStart and PDStart are the boot page tables: an
	// identity map of the first 1 GiB with 2 MiB pages.
	PML4Start = 0x9000
	PDPTStart = 0xa000
	PDStart   = 0xb000
	// CmdlineStart is where the kernel command line is written.
	CmdlineStart = 0x20000
	// CmdlineMax is the longest command line accepted (with its NUL).
	CmdlineMax = 4096
	// EBDAStart is the start of the extended BIOS data area; RAM below 1
	// MiB ends here. The MP table lives at its start. From here to
	// HighMemStart the e820 map says reserved: the system data below
	// (MP table, ACPI tables, RSDP) lives there and the kernel never uses
	// it as RAM.
	EBDAStart    = 0x9fc00
	MPTableStart = EBDAStart
	// ACPITablesStart..+ACPITablesSize holds the ACPI tables the RSDP
	// leads to (DSDT, FADT, MADT, XSDT), right after the EBDA, as in
	// Firecracker's layout.rs.
	ACPITablesStart = 0xa0000
	ACPITablesSize  = 0x2000
	// RSDPStart is the ACPI Root System Description Pointer: in the BIOS
	// area 0xe0000-0xfffff that Linux scans on 16-byte boundaries (and
	// also handed over in boot_params.acpi_rsdp_addr).
	RSDPStart = 0xe0000
	// HighMemStart is where RAM above the legacy hole begins; a bzImage's
	// protected-mode kernel is loaded here.
	HighMemStart = 0x100000
	// BzImageLoad is where a bzImage's 64-bit kernel is placed (2 MiB
	// aligned, as the kernel's default CONFIG_PHYSICAL_ALIGN wants).
	BzImageLoad = 0x1000000

	// MMIOGapStart..MMIOGapEnd is kept free of RAM for device MMIO:
	// 3.25 GiB to 4 GiB, as on real machines.
	MMIOGapStart = 0xd0000000
	MMIOGapEnd   = 0x100000000
	// VirtioMMIOBase is the first virtio-mmio device; each takes
	// VirtioMMIOSize bytes and interrupt VirtioIRQBase + index.
	VirtioMMIOBase = MMIOGapStart
	VirtioMMIOSize = 0x1000
	VirtioIRQBase  = 5
	// IOAPICStart and LAPICStart are the interrupt controllers' MMIO.
	IOAPICStart = 0xfec00000
	LAPICStart  = 0xfee00000

	// TSSAddress and IdentityMapAddress are the three pages (TSS) and one
	// page (identity map) KVM needs below 4 GiB on Intel.
	TSSAddress         = 0xfffbd000
	IdentityMapAddress = 0xfffbc000

	// PageSize is the guest page size.
	PageSize = 4096
)

// Legacy I/O ports.
const (
	PortCOM1      = 0x3f8 // 8250 UART
	PortI8042Data = 0x60
	PortI8042Cmd  = 0x64
	PortCMOS      = 0x70 // MC146818 RTC: index, data
	// PortSnapshot is the snapshot-point port: the guest writes 123 when
	// boot is done and 124 to ask for a snapshot now (SnapFaaS's values).
	PortSnapshot = 0x3f0
)

// Snapshot-point values written to PortSnapshot.
const (
	SnapshotBootDone = 123
	SnapshotNow      = 124
)

// IRQs.
const (
	IRQCOM1 = 4
)

// VirtioSlot returns where virtio-mmio device i lives: its registers'
// guest address and its interrupt (GSI). The command line and the DSDT
// both describe devices by it.
func VirtioSlot(i int) (base uint64, irq uint32) {
	return VirtioMMIOBase + uint64(i)*VirtioMMIOSize, uint32(VirtioIRQBase + i)
}
