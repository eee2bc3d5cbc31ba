package vmm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostAddr is the host virtual address of guest memory, for KVM's memory
// slots and userfaultfd registration.
func hostAddr(mem []byte) uintptr { return uintptr(unsafe.Pointer(&mem[0])) }

// firstResident returns the index of the first page of mem that is
// mapped (mincore), or -1 when none is (or mincore fails).
func firstResident(mem []byte) int {
	vec := make([]byte, (len(mem)+pageSize-1)/pageSize)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, hostAddr(mem), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return -1
	}
	for p, v := range vec {
		if v&1 != 0 {
			return p
		}
	}
	return -1
}
