package virtio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// The ring indices (avail.idx, used.idx) are 16-bit words that the driver
// and the device publish to each other. sync/atomic has no 16-bit
// operations, so they are accessed through the naturally aligned 32-bit
// word that contains them; this file is the only one with unsafe.

var bigEndianHost = binary.NativeEndian.Uint16([]byte{0, 1}) == 1

// word32 returns the aligned 32-bit guest word holding the 16-bit field at
// addr, and the field's shift within it (little-endian).
func word32(mem Memory, addr uint64) (*uint32, uint, error) {
	if addr%2 != 0 {
		return nil, 0, fmt.Errorf("16-bit ring field at odd address %#x: %w", addr, ErrQueue)
	}
	b, err := mem.Slice(addr&^3, 4)
	if err != nil {
		return nil, 0, err
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if uintptr(p)%4 != 0 {
		// Guest memory is page-aligned in the host; a Memory that is not
		// is a programming error, not a driver's.
		panic(fmt.Sprintf("virtio: guest word %#x is not 4-byte aligned in host memory (%p)", addr&^3, p))
	}
	shift := uint(8 * (addr & 2)) // guest memory is little-endian
	if bigEndianHost {
		shift = 16 - shift
	}
	return (*uint32)(p), shift, nil
}

// load16 reads the 16-bit ring field at addr with acquire semantics: every
// guest-memory write the other side made before publishing this value is
// visible after it.
func load16(mem Memory, addr uint64) (uint16, error) {
	w, shift, err := word32(mem, addr)
	if err != nil {
		return 0, err
	}
	return uint16(atomic.LoadUint32(w) >> shift), nil
}

// store16 writes the 16-bit ring field at addr with release semantics:
// every guest-memory write made before it is visible to a reader that
// sees the new value. The other half of the word is left as it is.
func store16(mem Memory, addr uint64, v uint16) error {
	w, shift, err := word32(mem, addr)
	if err != nil {
		return err
	}
	for {
		old := atomic.LoadUint32(w)
		nw := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return nil
		}
	}
}
