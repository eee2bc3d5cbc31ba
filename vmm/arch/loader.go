package arch

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrNotKernel: the file is neither an ELF vmlinux nor a bzImage.
var ErrNotKernel = errors.New("not an x86_64 ELF vmlinux or bzImage")

// Kernel is a kernel loaded into guest memory.
type Kernel struct {
	// Entry is the 64-bit entry point (physical).
	Entry uint64
	// End is the first byte after the loaded image.
	End uint64
	// SetupHeader is a bzImage's setup header for the zero page; nil for
	// ELF.
	SetupHeader []byte
	// Format is "elf" or "bzimage".
	Format string
}

// LoadKernel loads an ELF vmlinux (segments at their physical addresses)
// or a bzImage (64-bit kernel at BzImageLoad) into mem.
func LoadKernel(mem []byte, r io.ReaderAt, size int64) (*Kernel, error) {
	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil {
		return nil, fmt.Errorf("%w (%d bytes)", ErrNotKernel, size)
	}
	if string(magic[:]) == elf.ELFMAG {
		return loadELF(mem, r)
	}
	hdr := make([]byte, 0x280)
	if n, _ := r.ReadAt(hdr, 0); n == len(hdr) &&
		binary.LittleEndian.Uint16(hdr[bpBootFlag:]) == BootFlagMagic &&
		binary.LittleEndian.Uint32(hdr[bpHeader:]) == HdrSMagic {
		return loadBzImage(mem, r, size, hdr)
	}
	return nil, ErrNotKernel
}

func loadELF(mem []byte, r io.ReaderAt) (*Kernel, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotKernel, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: ELF %v %v", ErrNotKernel, f.Class, f.Machine)
	}
	k := &Kernel{Entry: f.Entry, Format: "elf"}
	loaded := false
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		if p.Paddr < HighMemStart {
			return nil, fmt.Errorf("ELF segment at %#x is below 1 MiB, where the boot structures live", p.Paddr)
		}
		end := p.Paddr + p.Memsz
		if end > uint64(len(mem)) || end < p.Paddr {
			return nil, fmt.Errorf("ELF segment %#x+%#x does not fit in %d bytes of memory: %w", p.Paddr, p.Memsz, len(mem), ErrMemory)
		}
		if _, err := p.ReadAt(mem[p.Paddr:p.Paddr+p.Filesz], 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("ELF segment at %#x: %w", p.Paddr, err)
		}
		clear(mem[p.Paddr+p.Filesz : end])
		k.End = max(k.End, end)
		loaded = true
	}
	if !loaded {
		return nil, fmt.Errorf("%w: no loadable segment", ErrNotKernel)
	}
	if k.Entry >= uint64(len(mem)) {
		return nil, fmt.Errorf("ELF entry %#x is outside guest memory (a virtual address?)", k.Entry)
	}
	return k, nil
}

func loadBzImage(mem []byte, r io.ReaderAt, size int64, hdr []byte) (*Kernel, error) {
	le := binary.LittleEndian
	version := le.Uint16(hdr[bpVersion:])
	if version < 0x020c || le.Uint16(hdr[bpXLoadFlags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("bzImage boot protocol %d.%02d without a 64-bit entry point (need 2.12+ with XLF_KERNEL_64)", version>>8, version&0xff)
	}
	setupSects := int64(hdr[bpSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects + 1) * 512
	if off >= size {
		return nil, fmt.Errorf("%w: bzImage truncated", ErrNotKernel)
	}
	load := uint64(BzImageLoad)
	if hdr[bpRelocatable] == 0 {
		load = le.Uint64(hdr[bpPrefAddress:])
	}
	kernelSize := uint64(size - off)
	initSize := uint64(le.Uint32(hdr[bpInitSize:]))
	end := load + max(kernelSize, initSize)
	if end > uint64(len(mem)) {
		return nil, fmt.Errorf("bzImage needs memory up to %#x (init_size %d MiB), guest has %d MiB: %w", end, initSize>>20, len(mem)>>20, ErrMemory)
	}
	if _, err := r.ReadAt(mem[load:load+kernelSize], off); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("bzImage: %w", err)
	}
	// The setup header runs from 0x1f1 to the end given by the jump at
	// 0x200 (a two-byte short jump over the header).
	hdrEnd := 0x202 + int(hdr[bpJump+1])
	if hdr[bpJump] != 0xeb || hdrEnd > len(hdr) {
		hdrEnd = bpInitSize + 4
	}
	setup := bytes.Clone(hdr[bpHdr:hdrEnd])
	le.PutUint32(setup[bpCode32Start-bpHdr:], uint32(load))
	return &Kernel{Entry: load + 0x200, End: end, SetupHeader: setup, Format: "bzimage"}, nil
}
