package arch

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var le = binary.LittleEndian

func TestE820(t *testing.T) {
	m := E820Map(128 << 20)
	want := []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x100000 - 0x9fc00, E820Reserved}, {0x100000, 128<<20 - 0x100000, E820RAM}}
	if len(m) != 3 || m[0] != want[0] || m[1] != want[1] || m[2] != want[2] {
		t.Fatalf("128 MiB: %+v", m)
	}
	m = E820Map(4 << 30)
	if len(m) != 4 || m[2].Addr+m[2].Size != MMIOGapStart || m[3].Addr != 1<<32 || m[3].Size != 4<<30-MMIOGapStart {
		t.Fatalf("4 GiB: %+v", m)
	}
	regs := RAMRegions(4 << 30)
	if regs[1].Guest != 1<<32 || regs[1].Offset != MMIOGapStart || regs[0].Size+regs[1].Size != 4<<30 {
		t.Fatalf("RAM regions: %+v", regs)
	}
}

func TestZeroPage(t *testing.T) {
	mem := make([]byte, 64<<20)
	cmd := "console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5"
	if err := WriteZeroPage(mem, BootParams{Cmdline: cmd, MemSize: uint64(len(mem)), RSDPAddr: 0xe0000}); err != nil {
		t.Fatal(err)
	}
	zp := mem[ZeroPageStart:]
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"boot_flag", uint64(le.Uint16(zp[0x1fe:])), 0xaa55},
		{"header", uint64(le.Uint32(zp[0x202:])), 0x53726448},
		{"type_of_loader", uint64(zp[0x210]), 0xff},
		{"loadflags LOADED_HIGH", uint64(zp[0x211] & 1), 1},
		{"cmd_line_ptr", uint64(le.Uint32(zp[0x228:])), CmdlineStart},
		{"cmdline_size", uint64(le.Uint32(zp[0x238:])), uint64(len(cmd))},
		{"e820_entries", uint64(zp[0x1e8]), 3},
		{"e820[1].addr", le.Uint64(zp[0x2d0+20:]), 0x9fc00},
		{"e820[1].type", uint64(le.Uint32(zp[0x2d0+36:])), E820Reserved},
		{"e820[2].addr", le.Uint64(zp[0x2d0+40:]), 0x100000},
		{"e820[2].size", le.Uint64(zp[0x2d0+48:]), uint64(len(mem)) - 0x100000},
		{"e820[2].type", uint64(le.Uint32(zp[0x2d0+56:])), E820RAM},
		{"acpi_rsdp_addr", le.Uint64(zp[0x070:]), 0xe0000},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if got := string(mem[CmdlineStart : CmdlineStart+len(cmd)+1]); got != cmd+"\x00" {
		t.Errorf("cmdline %q", got)
	}
	if err := WriteZeroPage(mem, BootParams{Cmdline: string(make([]byte, CmdlineMax))}); err == nil {
		t.Error("an overlong cmdline was accepted")
	}
}

func TestPageTablesIdentityMap(t *testing.T) {
	mem := make([]byte, 1<<20)
	cr3, err := WritePageTables(mem)
	if err != nil || cr3 != PML4Start {
		t.Fatal(cr3, err)
	}
	// Walk the tables for a few addresses, as the MMU would.
	for _, va := range []uint64{0, 0x1000, 0x100000, 0x1234567, 1<<30 - 1} {
		pml4e := le.Uint64(mem[cr3+8*((va>>39)&511):])
		pdpte := le.Uint64(mem[(pml4e&^0xfff)+8*((va>>30)&511):])
		pde := le.Uint64(mem[(pdpte&^0xfff)+8*((va>>21)&511):])
		if pml4e&1 == 0 || pdpte&1 == 0 || pde&1 == 0 || pde&ptePS == 0 {
			t.Fatalf("%#x: not present or not a 2 MiB page", va)
		}
		if pa := pde&^0x1fffff | va&0x1fffff; pa != va {
			t.Fatalf("%#x maps to %#x", va, pa)
		}
	}
}

func TestGDT(t *testing.T) {
	mem := make([]byte, 1<<20)
	s, err := WriteGDT(mem)
	if err != nil {
		t.Fatal(err)
	}
	// The encoding Firecracker and Linux use for flat segments.
	if got := le.Uint64(mem[BootGDTStart+8:]); got != 0x00af9b000000ffff {
		t.Errorf("code descriptor %#x", got)
	}
	if got := le.Uint64(mem[BootGDTStart+16:]); got != 0x00cf93000000ffff {
		t.Errorf("data descriptor %#x", got)
	}
	c := s.Code
	if c.Selector != SelectorCode || c.L != 1 || c.DB != 0 || c.Present != 1 || c.S != 1 || c.Type != 0xb || c.Limit != 0xffffffff || c.G != 1 {
		t.Errorf("code segment %+v", c)
	}
	d := s.Data
	if d.Selector != SelectorData || d.DB != 1 || d.L != 0 || d.Type != 3 || d.Limit != 0xffffffff {
		t.Errorf("data segment %+v", d)
	}
	if s.TSS.Selector != SelectorTSS || s.TSS.Type != 0xb || s.TSS.S != 0 {
		t.Errorf("TSS %+v", s.TSS)
	}
	if s.GDTLimit != 31 || s.GDTBase != BootGDTStart {
		t.Errorf("GDT base %#x limit %d", s.GDTBase, s.GDTLimit)
	}
	st, err := SetupLongMode(mem, 0x100000)
	if err != nil {
		t.Fatal(err)
	}
	if st.CR0&(CR0PE|CR0PG) != CR0PE|CR0PG || st.CR4&CR4PAE == 0 || st.EFER != EFERLME|EFERLMA || st.RSI != ZeroPageStart || st.RIP != 0x100000 {
		t.Errorf("entry state %+v", st)
	}
}

func TestMPTable(t *testing.T) {
	mem := make([]byte, 1<<20)
	for _, n := range []int{1, 2, 4, MaxVCPUs} {
		if err := WriteMPTable(mem, n); err != nil {
			t.Fatal(err)
		}
		fp := mem[MPTableStart : MPTableStart+16]
		if string(fp[:4]) != "_MP_" || checksum(fp) != 0 || fp[9] != 4 {
			t.Fatalf("%d: floating pointer %x", n, fp)
		}
		addr := le.Uint32(fp[4:])
		cfg := mem[addr:]
		length := int(le.Uint16(cfg[4:]))
		if string(cfg[:4]) != "PCMP" || checksum(cfg[:length]) != 0 {
			t.Fatalf("%d: config table bad signature or checksum", n)
		}
		if le.Uint32(cfg[36:]) != LAPICStart {
			t.Fatalf("LAPIC address %#x", le.Uint32(cfg[36:]))
		}
		count := int(le.Uint16(cfg[34:]))
		if count != n+1+1+IRQMax+1+2 {
			t.Fatalf("%d vCPUs: %d entries", n, count)
		}
		// Walk the entries.
		e := cfg[44:length]
		procs, boot := 0, 0
		for i := 0; i < count; i++ {
			switch e[0] {
			case mpEntryProc:
				if e[1] != byte(procs) || e[3]&cpuEnabled == 0 {
					t.Fatalf("processor entry %d: %x", procs, e[:20])
				}
				if e[3]&cpuBoot != 0 {
					boot++
				}
				procs++
				e = e[20:]
			case mpEntryIOAPIC:
				if e[1] != byte(n) || le.Uint32(e[4:]) != IOAPICStart {
					t.Fatalf("IOAPIC entry %x", e[:8])
				}
				e = e[8:]
			default:
				e = e[8:]
			}
		}
		if procs != n || boot != 1 || len(e) != 0 {
			t.Fatalf("%d vCPUs: %d processors, %d boot, %d bytes left", n, procs, boot, len(e))
		}
	}
	if err := WriteMPTable(mem, MaxVCPUs+1); err == nil {
		t.Fatal("too many vCPUs accepted")
	}
}

func TestLoadELF(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("gcc is needed to link a test ELF: %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "k.S")
	os.WriteFile(src, []byte(".globl _start\n_start: hlt\n.data\nv: .quad 0x1122334455667788\n.bss\nb: .space 8192\n"), 0o644)
	bin := filepath.Join(dir, "k.elf")
	out, err := exec.Command("gcc", "-nostdlib", "-static", "-Wl,-Ttext=0x200000", "-Wl,--build-id=none", "-o", bin, src).CombinedOutput()
	if err != nil {
		t.Fatalf("gcc is installed but cannot link a test ELF: %v: %s", err, out)
	}
	f, _ := os.Open(bin)
	defer f.Close()
	st, _ := f.Stat()
	mem := bytes.Repeat([]byte{0xee}, 8<<20)
	k, err := LoadKernel(mem, f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	ef, _ := elf.Open(bin)
	defer ef.Close()
	if k.Entry != ef.Entry || k.Format != "elf" || mem[k.Entry] != 0xf4 {
		t.Fatalf("entry %#x (%#x in file), byte %#x", k.Entry, ef.Entry, mem[k.Entry])
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && p.Memsz > p.Filesz && mem[p.Paddr+p.Filesz] != 0 {
			t.Fatal("bss not zeroed")
		}
	}
}

func TestLoadRejectsGarbageAndSmallMemory(t *testing.T) {
	mem := make([]byte, 4<<20)
	garbage := bytes.NewReader(bytes.Repeat([]byte("not a kernel"), 100))
	if _, err := LoadKernel(mem, garbage, int64(garbage.Len())); !errors.Is(err, ErrNotKernel) {
		t.Fatalf("garbage: %v", err)
	}
	// A bzImage header claiming the 64-bit entry, with too little memory.
	hdr := make([]byte, 0x1000)
	le.PutUint16(hdr[bpBootFlag:], BootFlagMagic)
	le.PutUint32(hdr[bpHeader:], HdrSMagic)
	le.PutUint16(hdr[bpVersion:], 0x020f)
	le.PutUint16(hdr[bpXLoadFlags:], xlfKernel64)
	hdr[bpRelocatable] = 1
	hdr[bpSetupSects] = 1
	le.PutUint32(hdr[bpInitSize:], 32<<20)
	if _, err := LoadKernel(mem, bytes.NewReader(hdr), int64(len(hdr))); !errors.Is(err, ErrMemory) {
		t.Fatalf("bzImage in too little memory: %v", err)
	}
	big := make([]byte, 64<<20)
	k, err := LoadKernel(big, bytes.NewReader(hdr), int64(len(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	if k.Entry != BzImageLoad+0x200 || k.Format != "bzimage" || le.Uint32(k.SetupHeader[bpCode32Start-bpHdr:]) != BzImageLoad {
		t.Fatalf("bzImage: %+v", k)
	}
	le.PutUint16(hdr[bpXLoadFlags:], 0)
	if _, err := LoadKernel(big, bytes.NewReader(hdr), int64(len(hdr))); err == nil {
		t.Fatal("a bzImage without a 64-bit entry was accepted")
	}
}
