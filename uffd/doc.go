// Package uffd is a small, low-level binding to Linux userfaultfd(2), the
// mechanism snapfaas uses to restore microVM guest memory lazily: guest
// memory is an anonymous mapping registered with a userfaultfd, and a handler
// (usually another process that received the uffd over a Unix socket) fills
// pages in as the guest touches them and prefetches a recorded working set
// concurrently.
//
// # What the package owns
//
//   - Opening a uffd (New): /dev/userfaultfd (USERFAULTFD_IOC_NEW) with a
//     fallback to the userfaultfd(2) system call, always O_CLOEXEC|O_NONBLOCK,
//     followed by the UFFDIO_API handshake. FromFD wraps a uffd whose
//     handshake was done elsewhere, e.g. one received with Receive.
//   - Registration (Register, Unregister), installing pages (Copy, ZeroPage,
//     InstallBatch), waking faulting threads (Wake).
//   - Reading and decoding events (ReadEvents), waiting for them (Poll), and
//     an event loop (Serve), with shutdown through Close or a context and
//     target-exit detection through watched descriptors (WatchTarget,
//     WatchPid, WatchPeer).
//   - The handoff message (Send, Receive): the uffd as SCM_RIGHTS plus a JSON
//     array of Region in Firecracker's format.
//
// Policy (what to install where, from which store, in which order) belongs to
// the caller.
//
// # Invariants
//
// Never user-mode-only. The package never sets UFFD_USER_MODE_ONLY: such a
// uffd only handles faults raised in user mode, and KVM touches guest memory
// from the kernel (get_user_pages on behalf of a vCPU), so a VM restored on
// one would see those accesses fail (EFAULT/SIGBUS) instead of reaching the
// handler.
//
// EEXIST is success. Installing a page that is already present (a prefetcher
// won the race, or the kernel reported the same fault twice, which happens
// whenever the faulting thread is interrupted by a signal and retries) is not
// an error: Copy and ZeroPage skip the page, count it in Result.Existed, and
// wake the range unless DontWake was given.
//
// EAGAIN means "read events first". UFFDIO_COPY and UFFDIO_ZEROPAGE fail with
// EAGAIN while a non-cooperative event (REMOVE, UNMAP, REMAP, FORK) is queued
// and unread, because the target's mappings are changing. Copy and ZeroPage
// return an error wrapping ErrAgain together with how far they got (Result).
// The caller must drain the pending events with ReadEvents, update its view
// of memory (a REMOVE means those pages were dropped and fault again on the
// next access, as zero-filled memory for a balloon; an UNMAP means they must
// not be served any more), and then retry the remainder if it is still
// wanted. The target only clears the condition after it resumes from the
// event, so a retry right after the read may see EAGAIN again: retry after a
// short pause while no further events are pending. A partial copy reported
// with EAGAIN and a positive byte count is not this case: the package
// resumes it internally.
//
// A read fault is consumed. Once ReadEvents returns a PAGEFAULT, the kernel
// will not report it again; the faulting thread sleeps until the page is
// installed or woken, so a handler that cannot serve a fault right away (for
// example after ErrAgain) must remember and retry it.
//
// Target exit is not visible on the uffd. When the process that owns the
// memory exits, the kernel neither signals POLLHUP nor returns EOF on the
// uffd: poll(2) just never becomes ready. Installs then fail with ESRCH,
// reported as ErrTargetGone. To notice the exit while idle, watch the target
// with WatchPeer (the Unix connection the uffd arrived on), WatchPid, or
// WatchTarget (a pidfd, or a socket or pipe that hangs up); Poll and Serve
// then return ErrTargetGone.
//
// Non-cooperative events block the target until read: a thread in
// madvise(MADV_DONTNEED), munmap or mremap on a registered range waits until
// the handler has read the corresponding event, so the handler must keep
// reading events even while it is busy installing pages.
//
// Serving faults of the same process needs care. While a goroutine is
// blocked on a fault, the Go runtime considers it running; a garbage
// collection must preempt it before it can stop the world. A thread faulting
// inside a system call (KVM_RUN, where the kernel takes the fault on the
// vCPU's behalf, issued with syscall.Syscall rather than RawSyscall) does not
// hold up the collector, and a fault taken in ordinary Go code is preempted by
// a signal. A fault taken in assembly such as memmove (copy) cannot be
// preempted: if the handler goroutine then starts a collection, the process
// deadlocks, the collector waiting for the faulting thread and the faulting
// thread for the handler. ReadEvents, Copy, ZeroPage and Wake do not
// allocate, but handlers in the same process should not either. The handler
// also needs a P of its own (GOMAXPROCS >= 2): a goroutine blocked on a fault
// in Go code keeps its P, and preempting it to free the P withdraws the
// pending fault from the uffd before the handler can read it, so with one P
// the two livelock. Serving from another process (the normal case) has none
// of these constraints.
//
// # Kernel requirements
//
// Linux with CONFIG_USERFAULTFD; /dev/userfaultfd (Linux 6.1+) or the
// userfaultfd(2) system call with CAP_SYS_PTRACE or
// vm.unprivileged_userfaultfd=1. New requires DefaultFeatures
// (UFFD_FEATURE_EVENT_REMOVE, UFFD_FEATURE_EVENT_UNMAP,
// UFFD_FEATURE_EVENT_REMAP, all Linux 4.11+) unless told otherwise with
// WithFeatures; UFFD_FEATURE_EVENT_FORK (needs CAP_SYS_PTRACE) and
// UFFD_FEATURE_THREAD_ID (4.14+) are optional (WithOptionalFeatures).
// Registering uses UFFDIO_REGISTER_MODE_MISSING (4.3+); the WP (5.7+) and
// MINOR (5.13+) modes are accepted but the package offers no
// UFFDIO_WRITEPROTECT/UFFDIO_CONTINUE wrappers. UFFDIO_COPY, UFFDIO_ZEROPAGE
// and UFFDIO_WAKE are used on anonymous private memory with the system page
// size (use WithPageSize for other page sizes).
package uffd
