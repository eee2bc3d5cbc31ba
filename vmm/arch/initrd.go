package arch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// DefaultInitrdAddrMax is the highest address an initrd's last byte may
// have when the kernel does not say (an ELF vmlinux, or a bzImage before
// boot protocol 2.03): the boot protocol's historical 0x37ffffff.
const DefaultInitrdAddrMax = 0x37ffffff

// bpInitrdAddrMax is initrd_addr_max in the setup header (protocol 2.03+).
const bpInitrdAddrMax = 0x22c

// InitrdAddrMax returns the highest address the kernel allows for the
// initrd's last byte: initrd_addr_max from a bzImage's setup header, or
// DefaultInitrdAddrMax.
func (k *Kernel) InitrdAddrMax() uint64 {
	h, le := k.SetupHeader, binary.LittleEndian
	if len(h) < bpInitrdAddrMax+4-bpHdr || le.Uint16(h[bpVersion-bpHdr:]) < 0x0203 {
		return DefaultInitrdAddrMax
	}
	if v := le.Uint32(h[bpInitrdAddrMax-bpHdr:]); v != 0 {
		return uint64(v)
	}
	return DefaultInitrdAddrMax
}

// PlaceInitrd returns where an initrd of size bytes goes, as Linux's boot
// loaders and Firecracker place it: page-aligned, as high as possible with
// its last byte at or below addrMax and inside the first RAM region
// (below the MMIO gap) of memSize bytes, and not below lowest (the end of
// the kernel; the boot structures all lie below 1 MiB, which is never
// used). It fails with ErrMemory when it does not fit.
func PlaceInitrd(memSize, lowest, addrMax, size uint64) (uint64, error) {
	if size == 0 {
		return 0, errors.New("empty file")
	}
	top := RAMRegions(memSize)[0].Size
	if addrMax < top-1 {
		top = addrMax + 1
	}
	floor := (max(lowest, HighMemStart) + PageSize - 1) &^ (PageSize - 1)
	if size > top || (top-size)&^(PageSize-1) < floor {
		return 0, fmt.Errorf("%d bytes (%d MiB): does not fit in %d MiB of guest memory between the kernel's end %#x and %#x: %w",
			size, (size+(1<<20)-1)>>20, memSize>>20, floor, top, ErrMemory)
	}
	return (top - size) &^ (PageSize - 1), nil
}

// LoadInitrd reads an initrd of size bytes from r into guest memory mem
// (offset = guest physical address) at the place PlaceInitrd gives for
// kernel k, and returns its address. Put the address and size in
// BootParams.InitrdAddr and InitrdSize.
func LoadInitrd(mem []byte, k *Kernel, r io.ReaderAt, size int64) (uint64, error) {
	if size < 0 || uint64(size) > MMIOGapStart {
		return 0, fmt.Errorf("%d bytes: %w", size, ErrMemory)
	}
	addr, err := PlaceInitrd(uint64(len(mem)), k.End, k.InitrdAddrMax(), uint64(size))
	if err != nil {
		return 0, err
	}
	n, err := r.ReadAt(mem[addr:addr+uint64(size)], 0)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == size) {
		return 0, fmt.Errorf("reading %d bytes: %w", size, err)
	}
	return addr, nil
}
