package arch

import (
	"encoding/binary"
	"fmt"
)

// MaxVCPUs is the most vCPUs the MP table (in the 1 KiB of EBDA), the
// ACPI tables and the layout support.
const MaxVCPUs = 32

// MP table constants (Intel MultiProcessor Specification 1.4).
const (
	mpFloatSize  = 16
	mpConfigSize = 44
	mpProcSize   = 20
	mpBusSize    = 8
	mpIOAPICSize = 8
	mpIntSize    = 8

	mpEntryProc     = 0
	mpEntryBus      = 1
	mpEntryIOAPIC   = 2
	mpEntryIOInt    = 3
	mpEntryLocalInt = 4

	mpIntINT    = 0
	mpIntNMI    = 1
	mpIntExtINT = 3

	cpuEnabled  = 1
	cpuBoot     = 2
	apicVersion = 0x14
	ioapicVer   = 0x11
	// IRQMax is the highest IOAPIC input pin routed by the MP table.
	IRQMax = 23
)

// MPTableSize returns the bytes the MP table takes for n vCPUs.
func MPTableSize(n int) int {
	return mpFloatSize + mpConfigSize + n*mpProcSize + mpBusSize + mpIOAPICSize + (IRQMax+1)*mpIntSize + 2*mpIntSize
}

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// WriteMPTable writes an MP floating pointer and configuration table for
// n vCPUs (local APIC ids 0..n-1, vCPU 0 the boot processor), one ISA
// bus and one IOAPIC with id n routing ISA IRQs 0..IRQMax to its pins.
// Linux finds it by scanning the EBDA.
func WriteMPTable(mem []byte, n int) error {
	if n < 1 || n > MaxVCPUs {
		return fmt.Errorf("%d vCPUs: want 1 to %d", n, MaxVCPUs)
	}
	size := MPTableSize(n)
	if MPTableStart+size > 0xa0000 || len(mem) < MPTableStart+size {
		return fmt.Errorf("MP table of %d bytes: %w", size, ErrMemory)
	}
	le := binary.LittleEndian
	t := mem[MPTableStart : MPTableStart+size]
	clear(t)

	// Floating pointer.
	fp := t[:mpFloatSize]
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], MPTableStart+mpFloatSize)
	fp[8] = 1 // length in 16-byte units
	fp[9] = 4 // spec revision 1.4
	fp[10] = checksum(fp)

	// Entries after the configuration table header.
	cfg := t[mpFloatSize:]
	e := cfg[mpConfigSize:]
	count := 0
	for i := 0; i < n; i++ {
		p := e[:mpProcSize]
		p[0] = mpEntryProc
		p[1] = byte(i) // local APIC id
		p[2] = apicVersion
		p[3] = cpuEnabled
		if i == 0 {
			p[3] |= cpuBoot
		}
		le.PutUint32(p[4:], 0x600) // CPU signature: family 6
		le.PutUint32(p[8:], 0x201) // features: FPU, APIC
		e, count = e[mpProcSize:], count+1
	}
	bus := e[:mpBusSize]
	bus[0] = mpEntryBus
	bus[1] = 0
	copy(bus[2:], "ISA   ")
	e, count = e[mpBusSize:], count+1

	io := e[:mpIOAPICSize]
	io[0] = mpEntryIOAPIC
	io[1] = ioapicID(n)
	io[2] = ioapicVer
	io[3] = 1 // enabled
	le.PutUint32(io[4:], IOAPICStart)
	e, count = e[mpIOAPICSize:], count+1

	for irq := 0; irq <= IRQMax; irq++ {
		it := e[:mpIntSize]
		it[0] = mpEntryIOInt
		it[1] = mpIntINT
		it[4] = 0 // source bus: ISA
		it[5] = byte(irq)
		it[6] = ioapicID(n)
		it[7] = byte(irq)
		e, count = e[mpIntSize:], count+1
	}
	for _, li := range []struct{ typ, apic, pin byte }{{mpIntExtINT, 0, 0}, {mpIntNMI, 0xff, 1}} {
		it := e[:mpIntSize]
		it[0] = mpEntryLocalInt
		it[1] = li.typ
		it[6] = li.apic
		it[7] = li.pin
		e, count = e[mpIntSize:], count+1
	}

	// Configuration table header, checksummed over header and entries.
	copy(cfg, "PCMP")
	le.PutUint16(cfg[4:], uint16(size-mpFloatSize))
	cfg[6] = 4
	copy(cfg[8:], "SNAPFAAS")
	copy(cfg[16:], "000000000000")
	le.PutUint16(cfg[34:], uint16(count))
	le.PutUint32(cfg[36:], LAPICStart)
	cfg[7] = checksum(cfg[:size-mpFloatSize])
	return nil
}
