package arch

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestPlaceInitrd(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name                           string
		memSize, lowest, addrMax, size uint64
		want                           uint64 // 0: does not fit
	}{
		{"page-sized at the top of 128 MiB", 128 * mib, 0x166000, DefaultInitrdAddrMax, 4096, 128*mib - 4096},
		{"partial page rounds down", 128 * mib, 0x166000, DefaultInitrdAddrMax, 40<<10 + 100, 128*mib - 44<<10},
		{"one byte", 64 * mib, 0x166000, DefaultInitrdAddrMax, 1, 64*mib - 4096},
		{"100 MiB in 128 MiB", 128 * mib, 0x166000, DefaultInitrdAddrMax, 100 * mib, 28 * mib},
		{"capped by initrd_addr_max", 2048 * mib, BzImageLoad + 32*mib, DefaultInitrdAddrMax, 1 * mib, 0x37f00000},
		{"capped by an odd initrd_addr_max", 256 * mib, 0x166000, 0x7fffffe, 4096, 0x7ffe000},
		{"capped by the MMIO gap", 8192 * mib, 0x166000, 0xffffffff, 4096, MMIOGapStart - 4096},
		{"right down to the kernel's end", 64 * mib, 0x200000, DefaultInitrdAddrMax, 62 * mib, 2 * mib},
		{"kernel end rounds up to a page", 64 * mib, 0x200001, DefaultInitrdAddrMax, 62 * mib, 0},
		{"overlaps the kernel", 64 * mib, 0x300000, DefaultInitrdAddrMax, 62 * mib, 0},
		{"larger than memory", 64 * mib, 0x166000, DefaultInitrdAddrMax, 65 * mib, 0},
		{"below initrd_addr_max there is no room", 64 * mib, BzImageLoad + 32*mib, BzImageLoad + 33*mib - 1, 2 * mib, 0},
		{"never below 1 MiB", 16 * mib, 0, DefaultInitrdAddrMax, 15*mib + 1, 0},
	} {
		got, err := PlaceInitrd(c.memSize, c.lowest, c.addrMax, c.size)
		if c.want == 0 {
			if err == nil || !errors.Is(err, ErrMemory) || !strings.Contains(err.Error(), "does not fit in") {
				t.Errorf("%s: %#x, %v; want ErrMemory", c.name, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %#x, %v; want %#x", c.name, got, err, c.want)
			continue
		}
		if got%PageSize != 0 || got < c.lowest || got+c.size-1 > c.addrMax || got+c.size > min(c.memSize, MMIOGapStart) {
			t.Errorf("%s: %#x+%#x breaks a rule", c.name, got, c.size)
		}
	}
	if _, err := PlaceInitrd(64<<20, 0x166000, DefaultInitrdAddrMax, 0); err == nil {
		t.Error("an empty initrd was placed")
	}
}

func TestInitrdAddrMax(t *testing.T) {
	if got := (&Kernel{Format: "elf"}).InitrdAddrMax(); got != DefaultInitrdAddrMax {
		t.Errorf("ELF: %#x", got)
	}
	hdr := make([]byte, 0x1000)
	le.PutUint16(hdr[bpBootFlag:], BootFlagMagic)
	le.PutUint32(hdr[bpHeader:], HdrSMagic)
	le.PutUint16(hdr[bpVersion:], 0x020f)
	le.PutUint16(hdr[bpXLoadFlags:], xlfKernel64)
	hdr[bpRelocatable] = 1
	hdr[bpSetupSects] = 1
	le.PutUint32(hdr[bpInitSize:], 8<<20)
	le.PutUint32(hdr[bpInitrdAddrMax:], 0x7fffffff)
	mem := make([]byte, 64<<20)
	k, err := LoadKernel(mem, bytes.NewReader(hdr), int64(len(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	if got := k.InitrdAddrMax(); got != 0x7fffffff {
		t.Errorf("bzImage 2.15: %#x", got)
	}
	le.PutUint16(hdr[bpVersion:], 0x0202) // too old for a 64-bit entry, but the field's rule
	k.SetupHeader = bytes.Clone(hdr[bpHdr : bpInitSize+4])
	if got := k.InitrdAddrMax(); got != DefaultInitrdAddrMax {
		t.Errorf("protocol 2.02: %#x", got)
	}
	le.PutUint16(hdr[bpVersion:], 0x020f)
	le.PutUint32(hdr[bpInitrdAddrMax:], 0)
	k.SetupHeader = bytes.Clone(hdr[bpHdr : bpInitSize+4])
	if got := k.InitrdAddrMax(); got != DefaultInitrdAddrMax {
		t.Errorf("initrd_addr_max 0: %#x", got)
	}
}

func TestLoadInitrdIntoBootParams(t *testing.T) {
	mem := bytes.Repeat([]byte{0xee}, 64<<20)
	initrd := make([]byte, 40<<10+100)
	for i := range initrd {
		initrd[i] = byte(i*7 + 1)
	}
	k := &Kernel{Entry: 0x100000, End: 0x166000, Format: "elf"}
	addr, err := LoadInitrd(mem, k, bytes.NewReader(initrd), int64(len(initrd)))
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(64<<20 - 44<<10); addr != want {
		t.Fatalf("initrd at %#x, want %#x", addr, want)
	}
	if !bytes.Equal(mem[addr:addr+uint64(len(initrd))], initrd) {
		t.Fatal("initrd bytes differ in guest memory")
	}
	if err := WriteZeroPage(mem, BootParams{Cmdline: "x", MemSize: uint64(len(mem)), InitrdAddr: uint32(addr), InitrdSize: uint32(len(initrd))}); err != nil {
		t.Fatal(err)
	}
	zp := mem[ZeroPageStart:]
	if got := le.Uint32(zp[0x218:]); uint64(got) != addr {
		t.Errorf("ramdisk_image %#x, want %#x", got, addr)
	}
	if got := le.Uint32(zp[0x21c:]); int(got) != len(initrd) {
		t.Errorf("ramdisk_size %d, want %d", got, len(initrd))
	}
	// ext_ramdisk_image/size (0x0c0/0x0c4), the high halves, stay 0.
	if got := le.Uint64(zp[0x0c0:]); got != 0 {
		t.Errorf("ext_ramdisk_image/size %#x", got)
	}

	// Too big, and a short read, are errors, not panics.
	if _, err := LoadInitrd(make([]byte, 16<<20), k, bytes.NewReader(nil), 15<<20); !errors.Is(err, ErrMemory) {
		t.Errorf("15 MiB into 16 MiB: %v", err)
	}
	if _, err := LoadInitrd(mem, k, bytes.NewReader(initrd[:10]), int64(len(initrd))); err == nil {
		t.Error("a short initrd read was accepted")
	}
	if _, err := LoadInitrd(mem, k, bytes.NewReader(nil), -1); err == nil {
		t.Error("a negative size was accepted")
	}
}
