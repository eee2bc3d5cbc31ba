//go:build linux

package uffd

// This file holds everything that talks to the kernel through raw ioctls or
// unsafe pointers. golang.org/x/sys/unix (v0.50.0) has no userfaultfd
// definitions, so the constants and structure layouts below are transcribed
// from include/uapi/linux/userfaultfd.h (Linux 6.x). The ioctl numbers use the
// asm-generic _IOC encoding (amd64, arm64, riscv64, loong64, s390x, 386, arm);
// TestIoctlNumbers pins them against the values the C header produces.

import (
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	uffdAPI = 0xAA // UFFD_API

	iocMagic = 0xAA // UFFDIO and USERFAULTFD_IOC

	// _IOC direction bits (asm-generic/ioctl.h).
	iocWrite = 1
	iocRead  = 2

	// ioctl command numbers (_UFFDIO_*).
	nrRegister     = 0x00
	nrUnregister   = 0x01
	nrWake         = 0x02
	nrCopy         = 0x03
	nrZeropage     = 0x04
	nrMove         = 0x05
	nrWriteProtect = 0x06
	nrContinue     = 0x07
	nrPoison       = 0x08
	nrAPI          = 0x3F

	// USERFAULTFD_IOC_NEW = _IO(USERFAULTFD_IOC, 0x00), issued on /dev/userfaultfd.
	iocUserfaultfdNew = iocMagic << 8

	iocAPI        = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioAPI{})<<16 | iocMagic<<8 | nrAPI
	iocRegister   = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioRegister{})<<16 | iocMagic<<8 | nrRegister
	iocUnregister = iocRead<<30 | unsafe.Sizeof(uffdioRange{})<<16 | iocMagic<<8 | nrUnregister
	iocWake       = iocRead<<30 | unsafe.Sizeof(uffdioRange{})<<16 | iocMagic<<8 | nrWake
	iocCopy       = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioCopy{})<<16 | iocMagic<<8 | nrCopy
	iocZeropage   = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioZeropage{})<<16 | iocMagic<<8 | nrZeropage

	// uffdio_copy.mode / uffdio_zeropage.mode bits.
	copyModeDontWake     = 1 << 0 // UFFDIO_COPY_MODE_DONTWAKE
	copyModeWP           = 1 << 1 // UFFDIO_COPY_MODE_WP
	zeropageModeDontWake = 1 << 0 // UFFDIO_ZEROPAGE_MODE_DONTWAKE

	// Size of struct uffd_msg (packed): 8-byte header + 24-byte union.
	msgSize = 32

	// Internal UFFD_FEATURE_INITIALIZED bit that fdinfo shows (fs/userfaultfd.c).
	featureInitialized = 1 << 31
)

// struct uffdio_api
type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// struct uffdio_range
type uffdioRange struct {
	Start uint64
	Len   uint64
}

// struct uffdio_register
type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

// struct uffdio_copy
type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

// struct uffdio_zeropage
type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) syscall.Errno {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	return e
}

// sysUserfaultfd calls userfaultfd(2).
func sysUserfaultfd(flags int) (int, syscall.Errno) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	return int(fd), e
}

// devUserfaultfdNew issues USERFAULTFD_IOC_NEW on an open /dev/userfaultfd.
func devUserfaultfdNew(dev int, flags int) (int, syscall.Errno) {
	fd, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), iocUserfaultfdNew, uintptr(flags))
	return int(fd), e
}

func ioctlAPI(fd int, a *uffdioAPI) syscall.Errno {
	return ioctl(fd, iocAPI, unsafe.Pointer(a))
}

func ioctlRegister(fd int, r *uffdioRegister) syscall.Errno {
	return ioctl(fd, iocRegister, unsafe.Pointer(r))
}

func ioctlRange(fd int, req uintptr, start, length uintptr) syscall.Errno {
	r := uffdioRange{Start: uint64(start), Len: uint64(length)}
	return ioctl(fd, req, unsafe.Pointer(&r))
}

// ioctlCopy runs one UFFDIO_COPY of src to dst and returns the kernel's
// "copy" field (bytes copied, or a negated errno) and the ioctl's errno.
func ioctlCopy(fd int, dst uintptr, src []byte, mode uint64) (int64, syscall.Errno) {
	c := uffdioCopy{
		Dst:  uint64(dst),
		Src:  uint64(uintptr(unsafe.Pointer(unsafe.SliceData(src)))),
		Len:  uint64(len(src)),
		Mode: mode,
	}
	e := ioctl(fd, iocCopy, unsafe.Pointer(&c))
	runtime.KeepAlive(src)
	return c.Copy, e
}

// ioctlZeropage runs one UFFDIO_ZEROPAGE and returns the kernel's
// "zeropage" field and the ioctl's errno.
func ioctlZeropage(fd int, dst, length uintptr, mode uint64) (int64, syscall.Errno) {
	z := uffdioZeropage{Range: uffdioRange{Start: uint64(dst), Len: uint64(length)}, Mode: mode}
	e := ioctl(fd, iocZeropage, unsafe.Pointer(&z))
	return z.Zeropage, e
}

// addrOf returns the address of b's first element (0 for a nil slice).
func addrOf(b []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
