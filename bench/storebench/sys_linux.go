package main

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dropCaches writes back dirty data and drops the OS page cache.
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// residency reports whether pages of a file are in the OS page cache, by
// mincore on a read-only mapping (which faults nothing in).
type residency struct {
	m   []byte
	vec []byte
}

// newResidency maps f; it returns nil where that fails.
func newResidency(f *os.File) *residency {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil
	}
	return &residency{m: m, vec: make([]byte, 1)}
}

// resident reports whether the system page holding byte off is cached.
func (r *residency) resident(off int64) (bool, error) {
	ps := int64(os.Getpagesize())
	a := off / ps * ps
	// x/sys has no Mincore wrapper on Linux.
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&r.m[a])), 1, uintptr(unsafe.Pointer(&r.vec[0])))
	if errno != 0 {
		return false, errno
	}
	return r.vec[0]&1 != 0, nil
}

func (r *residency) close() { unix.Munmap(r.m) }
