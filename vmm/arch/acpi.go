package arch

// ACPI tables, so that kernels built without MP-table parsing (Debian's
// cloud kernel: # CONFIG_X86_MPPARSE is not set) find every vCPU. The
// formats are ACPI 6.3's; the platform is hardware-reduced, as
// Firecracker's (src/vmm/src/acpi):
//
//	RSDPStart        RSDP "RSD PTR ", rev 2, 36 bytes: XsdtAddress → XSDT
//	(0xe0000)        (in the BIOS area Linux scans on 16-byte boundaries;
//	                 also handed over in boot_params.acpi_rsdp_addr)
//	ACPITablesStart  DSDT rev 2: AML Scope (\_SB) { COM1, V000, ... }:
//	(0xa0000; each        the serial port and each virtio-mmio device
//	table 8-byte          with its registers and interrupt
//	aligned)         FACP (FADT) rev 6.3, 276 bytes: X_DSDT → DSDT; flags
//	                      HW_REDUCED_ACPI, no power/sleep button; IA-PC
//	                      boot flags: no VGA, no MSI, no ASPM control
//	                 APIC (MADT) rev 5: local APIC base LAPICStart; for
//	                      vCPU i a local APIC with uid i, id i, enabled;
//	                      one I/O APIC, id ioapicID(n), at IOAPICStart,
//	                      GSI base 0; NMI on LINT1 of every CPU
//	                 XSDT rev 1: → FACP, APIC
//
// Invariants, checked by the tests on the bytes in guest memory: every
// table starts with the 36-byte system description header, its Length
// covers the whole table and all its bytes sum to 0 (mod 256); the RSDP's
// first 20 bytes sum to 0 and so do all 36; the MADT's entries, each
// (type, length, ...), exactly fill the table after its 44-byte header.
// The e820 map marks [EBDAStart, HighMemStart) reserved, so the kernel
// never takes the tables for RAM.
//
// No interrupt source overrides: KVM's in-kernel irqchip routes GSI i to
// I/O APIC pin i (and PIC pin i below 16), the MP table routes ISA IRQ i
// to pin i, and an MADT without overrides means exactly that identity,
// with ISA defaults (edge, active high). Hardware-reduced means no SCI
// and no fixed-feature registers; Linux then also leaves the legacy PIC
// and the PIT alone (acpi_generic_reduced_hw_init), uses the local APIC
// timer, and maps no ISA interrupt by itself: a device gets a working
// interrupt only if the DSDT lists it with one. Hence COM1 (without it
// the console's transmit interrupt never arrives and user space output
// stalls) and the virtio devices, which also stay on the command line for
// kernels without ACPI, as Firecracker does both.

import (
	"encoding/binary"
	"fmt"
)

// Identification in every table header (OEM ID 6 bytes, table ID 8,
// creator ID 4), and the FADT's hypervisor vendor identity.
const (
	acpiOEMID        = "SNAPFA"
	acpiOEMTableID   = "SNAPFAAS"
	acpiOEMRevision  = 1
	acpiCreatorID    = "SNAP"
	acpiCreatorRev   = 1
	acpiHypervisorID = "SNAPFAAS"
)

// Table sizes, revisions, offsets and flags (ACPI 6.3, chapter 5.2).
const (
	sdtHeaderSize = 36
	rsdpSize      = 36
	rsdpV1Size    = 20 // the ACPI 1.0 part the first checksum covers
	rsdpRevision  = 2  // ACPI 2.0+: has XsdtAddress and the extended checksum

	dsdtRevision = 2 // 64-bit AML integers
	xsdtRevision = 1

	fadtSize         = 276
	fadtRevision     = 6
	fadtMinor        = 3
	fadtIAPCBootArch = 109
	fadtFlags        = 112
	fadtMinorVersion = 131
	fadtXDSDT        = 140
	fadtHypervisorID = 268
	// FADT flags: no fixed power or sleep button; hardware-reduced.
	fadtPwrButton = 1 << 4
	fadtSlpButton = 1 << 5
	fadtHWReduced = 1 << 20
	// IA-PC boot architecture flags: no VGA, MSI not supported, OSPM must
	// not enable PCIe ASPM.
	iapcVGANotPresent  = 1 << 2
	iapcMSINotSupport  = 1 << 3
	iapcPCIeASPMNoCtrl = 1 << 4

	madtRevision   = 5
	madtHeaderSize = sdtHeaderSize + 8 // + local APIC address, flags
	madtLAPIC      = 0                 // Processor Local APIC
	madtLAPICSize  = 8
	madtIOAPIC     = 1 // I/O APIC
	madtIOAPICSize = 12
	madtLAPICNMI   = 4 // Local APIC NMI
	madtNMISize    = 6
	madtEnabled    = 1    // local APIC flags: enabled
	madtAllCPUs    = 0xff // processor UID meaning every processor
	nmiLINT        = 1    // the NMI arrives on LINT1, as in the MP table
	acpiAlign      = 8    // tables start 8-byte aligned
	acpiTablesEnd  = ACPITablesStart + ACPITablesSize
	rsdpEnd        = RSDPStart + rsdpSize
)

// ioapicID is the I/O APIC's id for n vCPUs: after the local APIC ids
// 0..n-1, the same in the MP table and the MADT.
func ioapicID(n int) byte { return byte(n) }

// sdt returns a system description table: the 36-byte header for
// signature sig and revision rev, then body, with Length and Checksum
// filled in.
func sdt(sig string, rev byte, body []byte) []byte {
	le := binary.LittleEndian
	t := make([]byte, sdtHeaderSize+len(body))
	copy(t[0:4], sig)
	le.PutUint32(t[4:], uint32(len(t)))
	t[8] = rev
	copy(t[10:16], acpiOEMID)
	copy(t[16:24], acpiOEMTableID)
	le.PutUint32(t[24:], acpiOEMRevision)
	copy(t[28:32], acpiCreatorID)
	le.PutUint32(t[32:], acpiCreatorRev)
	copy(t[sdtHeaderSize:], body)
	t[9] = checksum(t)
	return t
}

// dsdtAML is the DSDT's definition block: Scope (\_SB) with the serial
// port COM1 (PNP0501: ports PortCOM1, interrupt IRQCOM1) and the virtio
// devices in slots 0..virtio-1 (LNRO0005, Linux's virtio-mmio id: the
// registers and interrupt of VirtioSlot(i); _CCA: DMA is cache-coherent).
func dsdtAML(virtio int) []byte {
	terms := [][]byte{amlDevice("COM1",
		amlName("_HID", amlEISAID("PNP0501")),
		amlName("_UID", amlInteger(0)),
		amlName("_CRS", amlResources(resIO(PortCOM1, 8), resInterrupt(IRQCOM1))))}
	for i := 0; i < virtio; i++ {
		base, irq := VirtioSlot(i)
		terms = append(terms, amlDevice(fmt.Sprintf("V%03d", i),
			amlName("_HID", amlString("LNRO0005")),
			amlName("_UID", amlInteger(uint64(i))),
			amlName("_CCA", amlInteger(1)),
			amlName("_CRS", amlResources(resMemory32Fixed(uint32(base), VirtioMMIOSize), resInterrupt(irq)))))
	}
	return amlScope("_SB_", terms...)
}

// dsdtTable is the DSDT holding dsdtAML.
func dsdtTable(virtio int) []byte { return sdt("DSDT", dsdtRevision, dsdtAML(virtio)) }

// fadtTable is a hardware-reduced FADT whose X_DSDT points at dsdt.
func fadtTable(dsdt uint64) []byte {
	le := binary.LittleEndian
	b := make([]byte, fadtSize-sdtHeaderSize)
	at := func(off int) []byte { return b[off-sdtHeaderSize:] }
	le.PutUint16(at(fadtIAPCBootArch), iapcVGANotPresent|iapcMSINotSupport|iapcPCIeASPMNoCtrl)
	le.PutUint32(at(fadtFlags), fadtPwrButton|fadtSlpButton|fadtHWReduced)
	at(fadtMinorVersion)[0] = fadtMinor
	le.PutUint64(at(fadtXDSDT), dsdt)
	copy(at(fadtHypervisorID), acpiHypervisorID)
	return sdt("FACP", fadtRevision, b)
}

// madtTable describes n local APICs (vCPU i has uid and APIC id i, all
// enabled), the I/O APIC with GSI base 0, and NMI on LINT1.
func madtTable(n int) []byte {
	le := binary.LittleEndian
	b := make([]byte, madtHeaderSize-sdtHeaderSize, madtHeaderSize-sdtHeaderSize+n*madtLAPICSize+madtIOAPICSize+madtNMISize)
	le.PutUint32(b[0:], LAPICStart)
	le.PutUint32(b[4:], 0) // flags: no PCAT_COMPAT; Linux bypasses the 8259s
	for i := 0; i < n; i++ {
		e := []byte{madtLAPIC, madtLAPICSize, byte(i), byte(i), 0, 0, 0, 0}
		le.PutUint32(e[4:], madtEnabled)
		b = append(b, e...)
	}
	io := make([]byte, madtIOAPICSize)
	io[0], io[1], io[2] = madtIOAPIC, madtIOAPICSize, ioapicID(n)
	le.PutUint32(io[4:], IOAPICStart)
	le.PutUint32(io[8:], 0) // GSI base
	b = append(b, io...)
	b = append(b, madtLAPICNMI, madtNMISize, madtAllCPUs, 0, 0, nmiLINT) // flags 0: bus defaults
	return sdt("APIC", madtRevision, b)
}

// xsdtTable lists the 64-bit addresses of tables.
func xsdtTable(tables ...uint64) []byte {
	b := make([]byte, 8*len(tables))
	for i, a := range tables {
		binary.LittleEndian.PutUint64(b[8*i:], a)
	}
	return sdt("XSDT", xsdtRevision, b)
}

// rsdpStruct is an ACPI 2.0+ RSDP pointing at the XSDT (no RSDT).
func rsdpStruct(xsdt uint64) []byte {
	le := binary.LittleEndian
	r := make([]byte, rsdpSize)
	copy(r[0:8], "RSD PTR ")
	copy(r[9:15], acpiOEMID)
	r[15] = rsdpRevision
	le.PutUint32(r[16:], 0) // RsdtAddress: none, the XSDT replaces it
	le.PutUint32(r[20:], rsdpSize)
	le.PutUint64(r[24:], xsdt)
	r[8] = checksum(r[:rsdpV1Size])
	r[32] = checksum(r)
	return r
}

// WriteACPI writes the ACPI tables for n vCPUs and virtio virtio-mmio
// devices (slots 0..virtio-1) into guest memory mem (DSDT, FADT, MADT and
// XSDT from ACPITablesStart, the RSDP at RSDPStart) and returns the RSDP's
// guest address, for boot_params.acpi_rsdp_addr.
func WriteACPI(mem []byte, n, virtio int) (rsdp uint64, err error) {
	if n < 1 || n > MaxVCPUs {
		return 0, fmt.Errorf("%d vCPUs: want 1 to %d", n, MaxVCPUs)
	}
	if virtio < 0 || VirtioIRQBase+virtio-1 > IRQMax {
		return 0, fmt.Errorf("%d virtio devices: their interrupts would pass IRQ %d", virtio, IRQMax)
	}
	if len(mem) < rsdpEnd {
		return 0, fmt.Errorf("ACPI tables up to %#x: %w", rsdpEnd, ErrMemory)
	}
	clear(mem[ACPITablesStart:acpiTablesEnd])
	next := uint64(ACPITablesStart)
	var full error
	place := func(t []byte) uint64 {
		addr := next
		if addr+uint64(len(t)) > acpiTablesEnd {
			full = fmt.Errorf("ACPI table %.4s of %d bytes beyond %#x", t, len(t), acpiTablesEnd)
			return 0
		}
		copy(mem[addr:], t)
		next = (addr + uint64(len(t)) + acpiAlign - 1) &^ (acpiAlign - 1)
		return addr
	}
	dsdt := place(dsdtTable(virtio))
	fadt := place(fadtTable(dsdt))
	madt := place(madtTable(n))
	xsdt := place(xsdtTable(fadt, madt))
	if full != nil {
		return 0, full
	}
	copy(mem[RSDPStart:rsdpEnd], rsdpStruct(xsdt))
	return RSDPStart, nil
}
