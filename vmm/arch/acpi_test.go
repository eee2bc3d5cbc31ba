package arch

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// These tests read the ACPI tables back from guest memory the way a kernel
// does, without the builder's helpers: scan for the RSDP, follow pointers,
// check every checksum and length. Addresses the kernel relies on are
// spelled out (0xfec00000, 0xfee00000, 0xe0000-0xfffff) rather than taken
// from layout.go.

// bootMemory writes every boot structure for n vCPUs and virtio devices
// as vmm.New does.
func bootMemory(t *testing.T, n, virtio int) []byte {
	t.Helper()
	mem := make([]byte, 64<<20)
	if err := WriteMPTable(mem, n); err != nil {
		t.Fatal(err)
	}
	rsdp, err := WriteACPI(mem, n, virtio)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteZeroPage(mem, BootParams{Cmdline: "console=ttyS0", MemSize: uint64(len(mem)), RSDPAddr: rsdp}); err != nil {
		t.Fatal(err)
	}
	if _, err := SetupLongMode(mem, HighMemStart); err != nil {
		t.Fatal(err)
	}
	return mem
}

func sum8(b []byte) (s byte) {
	for _, c := range b {
		s += c
	}
	return s
}

// scanRSDP finds the RSDP as Linux's acpi_scan_rsdp does: the first
// "RSD PTR " on a 16-byte boundary in 0xe0000-0xfffff whose first 20 bytes
// sum to 0.
func scanRSDP(mem []byte) (uint64, bool) {
	for a := uint64(0xe0000); a+36 <= 0x100000; a += 16 {
		if string(mem[a:a+8]) == "RSD PTR " && sum8(mem[a:a+20]) == 0 {
			return a, true
		}
	}
	return 0, false
}

type sdtable struct {
	addr uint64
	b    []byte // the whole table, Length bytes
}

func (s sdtable) sig() string { return string(s.b[:4]) }
func (s sdtable) end() uint64 { return s.addr + uint64(len(s.b)) }

// readSDT reads the system description table at addr and checks its
// length and checksum.
func readSDT(mem []byte, addr uint64) (sdtable, error) {
	if addr == 0 || addr+36 > uint64(len(mem)) {
		return sdtable{}, fmt.Errorf("table at %#x: outside memory", addr)
	}
	n := uint64(le.Uint32(mem[addr+4:]))
	if n < 36 || addr+n > uint64(len(mem)) {
		return sdtable{}, fmt.Errorf("table %.4q at %#x: length %d", mem[addr:addr+4], addr, n)
	}
	b := mem[addr : addr+n]
	if sum8(b) != 0 {
		return sdtable{}, fmt.Errorf("table %.4q at %#x: bytes sum to %#x, not 0", b, addr, sum8(b))
	}
	return sdtable{addr, b}, nil
}

// acpiView is what a kernel finds: the RSDP and the tables by signature.
type acpiView struct {
	rsdp   uint64
	xsdt   sdtable
	tables map[string]sdtable
}

// all lists every ACPI structure as [addr, end) ranges with names.
func (v acpiView) all() []span {
	s := []span{{"RSDP", v.rsdp, v.rsdp + 36}, {"XSDT", v.xsdt.addr, v.xsdt.end()}}
	for _, sig := range slices.Sorted(maps.Keys(v.tables)) {
		s = append(s, span{sig, v.tables[sig].addr, v.tables[sig].end()})
	}
	return s
}

// parseACPI follows the RSDP to the XSDT, the XSDT to every table and the
// FADT to the DSDT, checking signatures, lengths and checksums.
func parseACPI(mem []byte) (acpiView, error) {
	var v acpiView
	r, ok := scanRSDP(mem)
	if !ok {
		return v, errors.New(`no "RSD PTR " with a valid checksum on a 16-byte boundary in 0xe0000-0xfffff`)
	}
	v.rsdp = r
	rsdp := mem[r : r+36]
	if rsdp[15] < 2 {
		return v, fmt.Errorf("RSDP revision %d: no XSDT", rsdp[15])
	}
	if l := le.Uint32(rsdp[20:]); l != 36 {
		return v, fmt.Errorf("RSDP length %d, want 36", l)
	}
	if sum8(rsdp) != 0 {
		return v, fmt.Errorf("RSDP extended checksum: 36 bytes sum to %#x", sum8(rsdp))
	}
	x, err := readSDT(mem, le.Uint64(rsdp[24:]))
	if err != nil {
		return v, fmt.Errorf("XSDT: %w", err)
	}
	if x.sig() != "XSDT" || (len(x.b)-36)%8 != 0 {
		return v, fmt.Errorf("XSDT: signature %q, length %d", x.sig(), len(x.b))
	}
	v.xsdt = x
	v.tables = map[string]sdtable{}
	for off := 36; off < len(x.b); off += 8 {
		tb, err := readSDT(mem, le.Uint64(x.b[off:]))
		if err != nil {
			return v, fmt.Errorf("XSDT entry %d: %w", (off-36)/8, err)
		}
		if _, dup := v.tables[tb.sig()]; dup {
			return v, fmt.Errorf("XSDT lists %q twice", tb.sig())
		}
		v.tables[tb.sig()] = tb
	}
	fadt, ok := v.tables["FACP"]
	if !ok {
		return v, errors.New("no FADT (FACP) in the XSDT")
	}
	if len(fadt.b) < 148 {
		return v, fmt.Errorf("FADT of %d bytes has no X_DSDT", len(fadt.b))
	}
	xd := le.Uint64(fadt.b[140:])
	if d32 := uint64(le.Uint32(fadt.b[40:])); d32 != 0 && d32 != xd {
		return v, fmt.Errorf("FADT DSDT %#x and X_DSDT %#x differ", d32, xd)
	}
	d, err := readSDT(mem, xd)
	if err != nil {
		return v, fmt.Errorf("DSDT from the FADT's X_DSDT: %w", err)
	}
	if d.sig() != "DSDT" {
		return v, fmt.Errorf("the FADT's X_DSDT %#x points at %q", xd, d.sig())
	}
	v.tables["DSDT"] = d
	return v, nil
}

// maxVirtio is how many virtio devices fit below IRQ 24.
const maxVirtio = 24 - 5

func TestACPITablesForEveryVCPUCount(t *testing.T) {
	for _, c := range []struct{ n, virtio int }{{1, 0}, {2, 1}, {3, 2}, {8, 0}, {MaxVCPUs, maxVirtio}} {
		n := c.n
		t.Run(fmt.Sprintf("%dvcpu-%dvirtio", c.n, c.virtio), func(t *testing.T) {
			mem := bootMemory(t, c.n, c.virtio)
			v, err := parseACPI(mem)
			if err != nil {
				t.Fatal(err)
			}
			if got := le.Uint64(mem[0x7000+0x070:]); got != v.rsdp {
				t.Errorf("boot_params.acpi_rsdp_addr %#x, the RSDP is at %#x", got, v.rsdp)
			}
			if got := slices.Sorted(maps.Keys(v.tables)); !slices.Equal(got, []string{"APIC", "DSDT", "FACP"}) {
				t.Errorf("tables %q, want APIC, DSDT, FACP", got)
			}
			checkFADT(t, v.tables["FACP"])
			checkDSDT(t, v.tables["DSDT"], c.virtio)
			checkMADT(t, v.tables["APIC"], n)
		})
	}
}

func checkFADT(t *testing.T, f sdtable) {
	t.Helper()
	if len(f.b) != 276 || f.b[8] != 6 {
		t.Errorf("FADT length %d revision %d, want 276 and 6", len(f.b), f.b[8])
	}
	const hwReduced, pwrButton, slpButton = 1 << 20, 1 << 4, 1 << 5
	if fl := le.Uint32(f.b[112:]); fl&hwReduced == 0 || fl&(pwrButton|slpButton) != pwrButton|slpButton {
		t.Errorf("FADT flags %#x: want HW_REDUCED_ACPI and no fixed power/sleep buttons", fl)
	}
	const noVGA, noMSI = 1 << 2, 1 << 3
	if ia := le.Uint16(f.b[109:]); ia&(noVGA|noMSI) != noVGA|noMSI {
		t.Errorf("IA-PC boot flags %#x: want VGA not present, MSI not supported", ia)
	}
	if sci := le.Uint16(f.b[46:]); sci != 0 {
		t.Errorf("SCI interrupt %d on a hardware-reduced platform", sci)
	}
}

// checkDSDT: one Scope (\_SB) spans the AML; in it COM1 and each virtio
// device with its resources, spelled here in the spec's byte encodings.
func checkDSDT(t *testing.T, d sdtable, virtio int) {
	t.Helper()
	if d.b[8] < 2 {
		t.Errorf("DSDT revision %d: AML integers would be 32-bit", d.b[8])
	}
	body := d.b[36:]
	if len(body) < 2 || body[0] != 0x10 {
		t.Fatalf("DSDT body does not start with a Scope: % x", body[:min(8, len(body))])
	}
	// PkgLength: bits 7-6 of the first byte count the bytes that follow.
	nb := int(body[1] >> 6)
	pkg := int(body[1] & 0x3f)
	if nb > 0 {
		pkg = int(body[1] & 0xf)
		for i := 0; i < nb; i++ {
			pkg |= int(body[2+i]) << (4 + 8*i)
		}
	}
	if 1+pkg != len(body) || string(body[2+nb:6+nb]) != "_SB_" {
		t.Errorf("DSDT: Scope %q of PkgLength %d in an AML body of %d bytes", body[2+nb:6+nb], pkg, len(body))
	}
	count := func(b []byte) int { return bytes.Count(body, b) }
	com1 := [][]byte{
		{0x0c, 0x41, 0xd0, 0x05, 0x01},                      // EisaId ("PNP0501")
		{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08},    // IO (Decode16, 0x3f8, 0x3f8, 1, 8)
		{0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0}, // Interrupt (consumer, edge, high, exclusive) {4}
	}
	for _, b := range com1 {
		if count(b) != 1 {
			t.Errorf("DSDT: COM1's % x appears %d times", b, count(b))
		}
	}
	if got := count([]byte("LNRO0005\x00")); got != virtio {
		t.Errorf("DSDT: %d virtio-mmio devices (LNRO0005), want %d", got, virtio)
	}
	for i := 0; i < virtio; i++ {
		base := 0xd0000000 + 0x1000*uint32(i)
		mem := le.AppendUint32(le.AppendUint32([]byte{0x86, 0x09, 0x00, 0x01}, base), 0x1000)
		irq := le.AppendUint32([]byte{0x89, 0x06, 0x00, 0x03, 0x01}, uint32(5+i))
		if count(mem) != 1 || count(irq) != 1 || count([]byte(fmt.Sprintf("V%03d", i))) != 1 {
			t.Errorf("DSDT: virtio device %d: Memory32Fixed at %#x, interrupt %d, name V%03d: found %d, %d, %d times",
				i, base, 5+i, i, count(mem), count(irq), count([]byte(fmt.Sprintf("V%03d", i))))
		}
	}
}

// checkMADT: exactly n enabled local APICs with ids (and uids) 0..n-1,
// one I/O APIC at 0xfec00000 with GSI base 0, entries filling the table.
func checkMADT(t *testing.T, m sdtable, n int) {
	t.Helper()
	if a := le.Uint32(m.b[36:]); a != 0xfee00000 {
		t.Errorf("MADT local APIC address %#x", a)
	}
	var ids, uids []int
	var ioapics, isos int
	for off := 44; off < len(m.b); {
		if off+2 > len(m.b) || m.b[off+1] < 2 || off+int(m.b[off+1]) > len(m.b) {
			t.Fatalf("MADT entry at offset %d overruns the table of %d bytes", off, len(m.b))
		}
		e := m.b[off : off+int(m.b[off+1])]
		switch e[0] {
		case 0: // Processor Local APIC
			if len(e) != 8 {
				t.Fatalf("local APIC entry of %d bytes", len(e))
			}
			if le.Uint32(e[4:])&1 == 0 {
				t.Errorf("local APIC id %d not enabled", e[3])
				break
			}
			uids, ids = append(uids, int(e[2])), append(ids, int(e[3]))
		case 1: // I/O APIC
			ioapics++
			if len(e) != 12 || le.Uint32(e[4:]) != 0xfec00000 || le.Uint32(e[8:]) != 0 {
				t.Errorf("I/O APIC entry % x: want address 0xfec00000, GSI base 0", e)
			}
			if int(e[2]) < n {
				t.Errorf("I/O APIC id %d collides with a local APIC id", e[2])
			}
		case 2: // Interrupt Source Override
			isos++
		case 4: // Local APIC NMI
			if len(e) != 6 || e[5] != 1 {
				t.Errorf("local APIC NMI entry % x: want LINT1", e)
			}
		default:
			t.Errorf("unexpected MADT entry type %d", e[0])
		}
		off += len(e)
	}
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	slices.Sort(ids)
	slices.Sort(uids)
	if !slices.Equal(ids, want) || !slices.Equal(uids, want) {
		t.Errorf("%d vCPUs: enabled local APIC ids %v, uids %v; want 0..%d each once", n, ids, uids, n-1)
	}
	if ioapics != 1 || isos != 0 {
		t.Errorf("%d I/O APICs and %d interrupt source overrides, want 1 and 0", ioapics, isos)
	}
}

// TestACPIInReservedE820 reads the e820 map from the zero page: every ACPI
// structure lies in a reserved (2) or ACPI (3) entry and in no RAM entry.
func TestACPIInReservedE820(t *testing.T) {
	mem := bootMemory(t, 2, 2)
	v, err := parseACPI(mem)
	if err != nil {
		t.Fatal(err)
	}
	zp := mem[0x7000:]
	type entry struct {
		addr, end uint64
		typ       uint32
	}
	var m []entry
	for i := 0; i < int(zp[0x1e8]); i++ {
		e := zp[0x2d0+20*i:]
		m = append(m, entry{le.Uint64(e), le.Uint64(e) + le.Uint64(e[8:]), le.Uint32(e[16:])})
	}
	for _, s := range v.all() {
		covered := false
		for _, e := range m {
			if e.typ == 1 && s.addr < e.end && e.addr < s.end {
				t.Errorf("%s [%#x, %#x) overlaps e820 RAM [%#x, %#x)", s.name, s.addr, s.end, e.addr, e.end)
			}
			if (e.typ == 2 || e.typ == 3) && e.addr <= s.addr && s.end <= e.end {
				covered = true
			}
		}
		if !covered {
			t.Errorf("%s [%#x, %#x) not in a reserved or ACPI e820 entry: %+v", s.name, s.addr, s.end, m)
		}
	}
}

type span struct {
	name      string
	addr, end uint64
}

// TestBootStructuresDisjoint: the ACPI tables share no byte with the zero
// page, command line, page tables, GDT, boot stack, MP table or the kernel
// and RAM from 1 MiB (where the test guest's image and heap live), and the
// builders' results do not depend on the order they run in.
func TestBootStructuresDisjoint(t *testing.T) {
	for _, n := range []int{1, 2, MaxVCPUs} {
		mem := bootMemory(t, n, maxVirtio)
		v, err := parseACPI(mem)
		if err != nil {
			t.Fatal(err)
		}
		spans := append(v.all(),
			span{"GDT and IDT", BootGDTStart, BootIDTStart + 8},
			span{"zero page", ZeroPageStart, ZeroPageStart + PageSize},
			span{"boot stack page", BootStackPointer &^ (PageSize - 1), BootStackPointer},
			span{"page tables", PML4Start, PDStart + PageSize},
			span{"command line", CmdlineStart, CmdlineStart + CmdlineMax},
			span{"MP table", MPTableStart, MPTableStart + uint64(MPTableSize(n))},
			span{"kernel and RAM above 1 MiB", HighMemStart, uint64(len(mem))},
		)
		for i, a := range spans {
			for _, b := range spans[i+1:] {
				if a.addr < b.end && b.addr < a.end {
					t.Errorf("%d vCPUs: %s [%#x, %#x) overlaps %s [%#x, %#x)", n, a.name, a.addr, a.end, b.name, b.addr, b.end)
				}
			}
		}
		for _, s := range v.all()[1:] {
			if s.addr < ACPITablesStart || s.end > ACPITablesStart+ACPITablesSize {
				t.Errorf("%s [%#x, %#x) outside the ACPI region", s.name, s.addr, s.end)
			}
		}

		// The other order: ACPI first, the rest over it.
		other := make([]byte, len(mem))
		rsdp, err := WriteACPI(other, n, maxVirtio)
		if err != nil {
			t.Fatal(err)
		}
		SetupLongMode(other, HighMemStart)
		WriteZeroPage(other, BootParams{Cmdline: "console=ttyS0", MemSize: uint64(len(other)), RSDPAddr: rsdp})
		WriteMPTable(other, n)
		if !bytes.Equal(mem[:HighMemStart], other[:HighMemStart]) {
			t.Errorf("%d vCPUs: low memory depends on the order the boot structures are written in", n)
		}
	}
}

func TestACPIRejects(t *testing.T) {
	mem := make([]byte, 2<<20)
	for _, n := range []int{0, MaxVCPUs + 1} {
		if _, err := WriteACPI(mem, n, 0); err == nil {
			t.Errorf("%d vCPUs accepted", n)
		}
	}
	for _, v := range []int{-1, maxVirtio + 1} {
		if _, err := WriteACPI(mem, 1, v); err == nil {
			t.Errorf("%d virtio devices accepted", v)
		}
	}
	if _, err := WriteACPI(mem[:0xe0000], 1, 0); !errors.Is(err, ErrMemory) {
		t.Errorf("memory ending below the RSDP: %v", err)
	}
}

// TestACPIWithIASL disassembles each table with ACPICA's iasl (Debian
// package acpica-tools), requires no warning, compiles the disassembly back
// and requires the same bytes apart from the checksum and the compiler
// id/revision iasl stamps in (header bytes 9 and 28-35). The RSDP is not a
// table iasl reads; parseACPI checks it.
func TestACPIWithIASL(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl not installed (Debian package acpica-tools)")
	}
	for _, virtio := range []int{0, maxVirtio} {
		t.Run(fmt.Sprintf("%dvirtio", virtio), func(t *testing.T) { checkWithIASL(t, iasl, bootMemory(t, 4, virtio)) })
	}
}

func checkWithIASL(t *testing.T, iasl string, mem []byte) {
	v, err := parseACPI(mem)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command(iasl, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("iasl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	bad := []string{"Warning", "Error", "Incorrect", "Invalid", "should be"}
	tables := map[string]sdtable{"XSDT": v.xsdt}
	for k, tb := range v.tables {
		tables[k] = tb
	}
	for sig, tb := range tables {
		name := strings.ToLower(sig)
		if err := os.WriteFile(filepath.Join(dir, name+".dat"), tb.b, 0o644); err != nil {
			t.Fatal(err)
		}
		out := run("-d", name+".dat")
		dsl, err := os.ReadFile(filepath.Join(dir, name+".dsl"))
		if err != nil {
			t.Fatalf("%s: no disassembly: %v\n%s", sig, err, out)
		}
		for _, w := range bad {
			if strings.Contains(out, w) || strings.Contains(string(dsl), w) {
				t.Errorf("iasl -d %s says %q:\n%s\n%s", sig, w, out, dsl)
			}
		}
		out = run("-p", "rt_"+name, name+".dsl")
		if !strings.Contains(out, "0 Errors, 0 Warnings") {
			t.Errorf("%s: recompiling the disassembly:\n%s", sig, out)
		}
		rt, err := os.ReadFile(filepath.Join(dir, "rt_"+name+".aml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(rt) != len(tb.b) {
			t.Errorf("%s: iasl rebuilt %d bytes from our %d", sig, len(rt), len(tb.b))
			continue
		}
		for i := range rt {
			if rt[i] != tb.b[i] && i != 9 && (i < 28 || i >= 36) {
				t.Errorf("%s: byte %d is %#x, iasl rebuilt %#x", sig, i, tb.b[i], rt[i])
			}
		}
	}
}
