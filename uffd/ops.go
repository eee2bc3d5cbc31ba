//go:build linux

package uffd

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mode is a set of UFFDIO_REGISTER_MODE_* bits.
type Mode uint64

// Registration modes.
const (
	ModeMissing Mode = 1 << 0 // UFFDIO_REGISTER_MODE_MISSING: fault on pages not yet present
	ModeWP      Mode = 1 << 1 // UFFDIO_REGISTER_MODE_WP: fault on writes to write-protected pages
	ModeMinor   Mode = 1 << 2 // UFFDIO_REGISTER_MODE_MINOR: fault on pages present in the page cache but not mapped
)

// Flags modify Copy, ZeroPage and InstallBatch.
type Flags uint64

const (
	// DontWake installs the page without waking the threads faulting on
	// it; the caller must call Wake on the range later.
	DontWake Flags = 1 << 0
	// WriteProtect maps copied pages write-protected (Copy only; requires
	// the range to be registered with ModeWP).
	WriteProtect Flags = 1 << 1
)

// Result reports the progress of an install (Copy, ZeroPage, InstallBatch).
// On error, the bytes Installed+Existed from the start of the request were
// handled and the rest were not.
type Result struct {
	// Installed is the number of bytes this call mapped.
	Installed uintptr
	// Existed is the number of bytes skipped because a page was already
	// present (EEXIST): someone else (a prefetcher, an earlier duplicate
	// fault) installed it first. This counts as success; the faulting
	// threads on those pages have been woken unless DontWake was given.
	Existed uintptr
}

func (r *Result) add(s Result) {
	r.Installed += s.Installed
	r.Existed += s.Existed
}

// Register registers [addr, addr+length) with the uffd in the given mode
// (ModeMissing, optionally with ModeWP/ModeMinor) and returns the ioctls
// available on the range. addr and length must be page aligned.
func (u *FD) Register(addr, length uintptr, mode Mode) (Ioctls, error) {
	if mode == 0 || mode&^(ModeMissing|ModeWP|ModeMinor) != 0 {
		return 0, fmt.Errorf("uffd: register %#x+%#x: invalid mode %#x: %w", addr, length, uint64(mode), unix.EINVAL)
	}
	if err := u.checkRange("register", addr, length); err != nil {
		return 0, err
	}
	if !u.acquire() {
		return 0, ErrClosed
	}
	defer u.release()
	r := uffdioRegister{Range: uffdioRange{Start: uint64(addr), Len: uint64(length)}, Mode: uint64(mode)}
	if errno := ioctlRegister(u.fd, &r); errno != 0 {
		return 0, u.opError("register", addr, length, errno)
	}
	return Ioctls(r.Ioctls), nil
}

// Unregister removes [addr, addr+length) from the uffd. Threads blocked on
// faults in the range are woken (and will see zero/absent pages).
func (u *FD) Unregister(addr, length uintptr) error {
	if err := u.checkRange("unregister", addr, length); err != nil {
		return err
	}
	if !u.acquire() {
		return ErrClosed
	}
	defer u.release()
	if errno := ioctlRange(u.fd, iocUnregister, addr, length); errno != 0 {
		return u.opError("unregister", addr, length, errno)
	}
	return nil
}

// Wake wakes the threads blocked on faults in [addr, addr+length), e.g. after
// installing pages with DontWake.
func (u *FD) Wake(addr, length uintptr) error {
	if err := u.checkRange("wake", addr, length); err != nil {
		return err
	}
	if !u.acquire() {
		return ErrClosed
	}
	defer u.release()
	if errno := ioctlRange(u.fd, iocWake, addr, length); errno != 0 {
		return u.opError("wake", addr, length, errno)
	}
	return nil
}

// Copy atomically installs src at dst with UFFDIO_COPY and, unless DontWake
// is set, wakes the threads faulting there. dst and len(src) must be page
// aligned. Pages already present are skipped and counted in Result.Existed
// (EEXIST is success). A partial copy is resumed where the kernel stopped.
// Errors: ErrAgain (read events, then retry the rest), ErrTargetGone (the
// target mm exited), ErrClosed, or a wrapped errno (e.g. ENOENT: dst is not
// in a registered mapping).
func (u *FD) Copy(dst uintptr, src []byte, flags Flags) (Result, error) {
	if flags&^(DontWake|WriteProtect) != 0 {
		return Result{}, fmt.Errorf("uffd: copy: invalid flags %#x: %w", uint64(flags), unix.EINVAL)
	}
	var mode uint64
	if flags&DontWake != 0 {
		mode |= copyModeDontWake
	}
	if flags&WriteProtect != 0 {
		mode |= copyModeWP
	}
	return u.install("copy", dst, uintptr(len(src)), flags, func(off uintptr) (int64, syscall.Errno) {
		return ioctlCopy(u.fd, dst+off, src[off:], mode)
	})
}

// ZeroPage maps zero-filled pages over [dst, dst+length) with
// UFFDIO_ZEROPAGE (anonymous memory only), with the same semantics and
// errors as Copy. WriteProtect is not accepted.
func (u *FD) ZeroPage(dst, length uintptr, flags Flags) (Result, error) {
	if flags&^DontWake != 0 {
		return Result{}, fmt.Errorf("uffd: zeropage: invalid flags %#x: %w", uint64(flags), unix.EINVAL)
	}
	var mode uint64
	if flags&DontWake != 0 {
		mode |= zeropageModeDontWake
	}
	return u.install("zeropage", dst, length, flags, func(off uintptr) (int64, syscall.Errno) {
		return ioctlZeropage(u.fd, dst+off, length-off, mode)
	})
}

// install drives one UFFDIO_COPY/UFFDIO_ZEROPAGE request to completion.
// call(off) issues the ioctl for [dst+off, dst+length) and returns the
// kernel's progress field and errno.
func (u *FD) install(op string, dst, length uintptr, flags Flags, call func(off uintptr) (int64, syscall.Errno)) (Result, error) {
	var res Result
	if length == 0 {
		return res, nil
	}
	if err := u.checkRange(op, dst, length); err != nil {
		return res, err
	}
	if !u.acquire() {
		return res, ErrClosed
	}
	defer u.release()
	for off := uintptr(0); off < length; {
		n, errno := call(off)
		switch {
		case errno == 0:
			res.Installed += length - off
			off = length
		case n > 0:
			// Partial: the kernel stopped early (EAGAIN with progress,
			// typically at an already-present page). Continue after it.
			res.Installed += uintptr(n)
			off += uintptr(n)
		case errno == unix.EEXIST:
			// The first page is already present: skip it.
			res.Existed += u.pageSize
			off += u.pageSize
		case errno == unix.EINTR:
		case errno == unix.EAGAIN:
			return res, u.wakeAfter(op, dst, off, res, flags, fmt.Errorf("uffd: %s %#x+%#x: %w (%w)", op, dst+off, length-off, ErrAgain, errno))
		default:
			return res, u.wakeAfter(op, dst, off, res, flags, u.opError(op, dst+off, length-off, errno))
		}
	}
	return res, u.wakeAfter(op, dst, length, res, flags, nil)
}

// wakeAfter wakes [dst, dst+done) if some of it was skipped as already
// present: the kernel only wakes what it installed, and a thread may be
// asleep on a page that someone else installed with DontWake.
func (u *FD) wakeAfter(op string, dst, done uintptr, res Result, flags Flags, err error) error {
	if res.Existed == 0 || flags&DontWake != 0 || done == 0 {
		return err
	}
	if errno := ioctlRange(u.fd, iocWake, dst, done); errno != 0 && err == nil {
		err = u.opError(op+": wake", dst, done, errno)
	}
	return err
}

// Page is one range for InstallBatch.
type Page struct {
	// Addr is the page-aligned destination address.
	Addr uintptr
	// Data is the content to copy (a multiple of the page size). If nil,
	// the range is zero-filled instead.
	Data []byte
	// Len is the length of a zero-filled range (Data == nil); 0 means one
	// page. It is ignored when Data is set.
	Len uintptr
}

func (p *Page) length(pageSize uintptr) uintptr {
	switch {
	case p.Data != nil:
		return uintptr(len(p.Data))
	case p.Len == 0:
		return pageSize
	}
	return p.Len
}

// InstallBatch installs pages in order with DontWake and then wakes each
// contiguous run of them with a single UFFDIO_WAKE (pages given in
// ascending, adjacent order form one run). It returns how many pages were
// fully handled and the combined Result (already-present pages count as
// handled, in Result.Existed). On error (ErrAgain, ErrTargetGone, ...)
// everything installed so far has been woken, pages[:n] are done, and the
// progress made on pages[n] is included in res.
func (u *FD) InstallBatch(pages []Page) (n int, res Result, err error) {
	var runStart, runEnd uintptr
	flush := func() error {
		if runEnd == runStart {
			return nil
		}
		err := u.Wake(runStart, runEnd-runStart)
		runStart, runEnd = 0, 0
		return err
	}
	for i := range pages {
		p := &pages[i]
		var r Result
		if p.Data != nil {
			r, err = u.Copy(p.Addr, p.Data, DontWake)
		} else {
			r, err = u.ZeroPage(p.Addr, p.length(u.pageSize), DontWake)
		}
		res.add(r)
		done := r.Installed + r.Existed
		if done > 0 {
			if p.Addr != runEnd {
				if ferr := flush(); ferr != nil && err == nil {
					err = ferr
				}
				runStart = p.Addr
			}
			runEnd = p.Addr + done
		}
		if err != nil {
			if ferr := flush(); ferr != nil {
				err = fmt.Errorf("%w; %w", err, ferr)
			}
			return i, res, err
		}
	}
	return len(pages), res, flush()
}

func (u *FD) checkRange(op string, addr, length uintptr) error {
	mask := u.pageSize - 1
	if addr&mask != 0 || length&mask != 0 || length == 0 || addr+length < addr {
		return fmt.Errorf("uffd: %s %#x+%#x: range not page aligned (page size %d): %w", op, addr, length, u.pageSize, unix.EINVAL)
	}
	return nil
}

func (u *FD) opError(op string, addr, length uintptr, errno syscall.Errno) error {
	switch errno {
	case unix.ESRCH, unix.ENOSPC:
		return fmt.Errorf("uffd: %s %#x+%#x: %w (%w)", op, addr, length, ErrTargetGone, errno)
	case unix.EBADF:
		return fmt.Errorf("uffd: %s %#x+%#x: bad uffd %d: %w", op, addr, length, u.fd, errno)
	}
	return fmt.Errorf("uffd: %s %#x+%#x: %w", op, addr, length, errno)
}
