package vmm

import "unsafe"

// hostAddr is the host virtual address of guest memory, for KVM's memory
// slots and userfaultfd registration.
func hostAddr(mem []byte) uintptr { return uintptr(unsafe.Pointer(&mem[0])) }
