//go:build linux

package uffd

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// EventKind is the uffd_msg.event code.
type EventKind uint8

// Event kinds (UFFD_EVENT_*).
const (
	EventPagefault EventKind = 0x12
	EventFork      EventKind = 0x13
	EventRemap     EventKind = 0x14
	EventRemove    EventKind = 0x15
	EventUnmap     EventKind = 0x16
)

func (k EventKind) String() string {
	switch k {
	case EventPagefault:
		return "PAGEFAULT"
	case EventFork:
		return "FORK"
	case EventRemap:
		return "REMAP"
	case EventRemove:
		return "REMOVE"
	case EventUnmap:
		return "UNMAP"
	}
	return fmt.Sprintf("EventKind(%#x)", uint8(k))
}

// FaultFlags are UFFD_PAGEFAULT_FLAG_* bits.
type FaultFlags uint64

// Page fault flags.
const (
	FaultWrite FaultFlags = 1 << 0 // the fault was a write
	FaultWP    FaultFlags = 1 << 1 // write to a write-protected page (ModeWP)
	FaultMinor FaultFlags = 1 << 2 // minor fault (ModeMinor)
)

// Event is one decoded struct uffd_msg. Which fields are set depends on
// Kind.
type Event struct {
	Kind EventKind

	// EventPagefault: the faulting address (page aligned unless
	// FeatureExactAddress), the fault flags, and the faulting thread id
	// (0 unless FeatureThreadID).
	Address  uintptr
	Flags    FaultFlags
	ThreadID int

	// EventFork: a new uffd, installed in this process's fd table, for the
	// child's copy of the registered memory. The receiver owns it (wrap it
	// with FromFD or close it).
	ForkFD int

	// EventRemap: [From, From+Len) moved to [To, To+Len).
	From, To, Len uintptr

	// EventRemove, EventUnmap: [Start, End) was zapped by
	// MADV_DONTNEED/MADV_REMOVE or unmapped. After REMOVE the range is
	// still registered and faults again on access; after UNMAP it is gone.
	Start, End uintptr
}

func (e Event) String() string {
	switch e.Kind {
	case EventPagefault:
		return fmt.Sprintf("PAGEFAULT addr=%#x flags=%#x tid=%d", e.Address, uint64(e.Flags), e.ThreadID)
	case EventFork:
		return fmt.Sprintf("FORK fd=%d", e.ForkFD)
	case EventRemap:
		return fmt.Sprintf("REMAP %#x -> %#x len=%#x", e.From, e.To, e.Len)
	case EventRemove, EventUnmap:
		return fmt.Sprintf("%v [%#x, %#x)", e.Kind, e.Start, e.End)
	}
	return e.Kind.String()
}

func decodeMsg(b []byte) Event {
	ne := binary.NativeEndian
	e := Event{Kind: EventKind(b[0])}
	switch e.Kind {
	case EventPagefault:
		e.Flags = FaultFlags(ne.Uint64(b[8:]))
		e.Address = uintptr(ne.Uint64(b[16:]))
		e.ThreadID = int(ne.Uint32(b[24:]))
	case EventFork:
		e.ForkFD = int(ne.Uint32(b[8:]))
	case EventRemap:
		e.From = uintptr(ne.Uint64(b[8:]))
		e.To = uintptr(ne.Uint64(b[16:]))
		e.Len = uintptr(ne.Uint64(b[24:]))
	case EventRemove, EventUnmap:
		e.Start = uintptr(ne.Uint64(b[8:]))
		e.End = uintptr(ne.Uint64(b[16:]))
	}
	return e
}

// readBatch is how many uffd_msg records one read(2) asks for.
const readBatch = 64

// ReadEvents reads up to len(buf) pending events without blocking and returns
// how many it decoded; (0, nil) means none are pending. Reading a PAGEFAULT
// consumes it: the faulting thread stays blocked until the page is
// installed (or woken), and the kernel will not report it again, so the
// caller must keep track of faults it could not serve yet. Non-cooperative
// events (REMOVE, UNMAP, REMAP, FORK) block the target until they are read.
func (u *FD) ReadEvents(buf []Event) (int, error) {
	if !u.acquire() {
		return 0, ErrClosed
	}
	defer u.release()
	// A per-FD buffer keeps the serving path allocation-free (see the
	// package documentation on serving faults in the same process).
	u.readMu.Lock()
	defer u.readMu.Unlock()
	raw := &u.raw
	n := 0
	for n < len(buf) {
		want := min(len(buf)-n, readBatch) * msgSize
		r, err := unix.Read(u.fd, raw[:want])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return n, nil
		case err != nil:
			return n, fmt.Errorf("uffd: read events: %w", err)
		case r == 0:
			return n, fmt.Errorf("uffd: read events: EOF: %w", ErrTargetGone)
		case r%msgSize != 0:
			return n, fmt.Errorf("uffd: read events: short read of %d bytes: %w", r, unix.EIO)
		}
		for off := 0; off < r; off += msgSize {
			buf[n] = decodeMsg(raw[off : off+msgSize])
			n++
		}
		if r < want {
			return n, nil
		}
	}
	return n, nil
}

// TargetWatch says how a watched descriptor signals that the target process
// is gone.
type TargetWatch int

const (
	// WatchPidfd: a pidfd, readable once the process has exited.
	WatchPidfd TargetWatch = iota
	// WatchHangup: a connected socket or a pipe whose peer hangs up
	// (POLLHUP/POLLRDHUP) when the target exits. Readable data is ignored.
	WatchHangup
)

type watch struct {
	fd   int
	kind TargetWatch
}

// WatchTarget makes Poll and Serve return ErrTargetGone once fd signals that
// the target is gone. The kernel does not report the target's exit on the
// uffd itself (poll never returns POLLHUP and read keeps returning EAGAIN),
// so without a watch a dead target is only noticed when an install fails
// with ESRCH. fd is duplicated; the caller keeps ownership of its own copy.
func (u *FD) WatchTarget(fd int, kind TargetWatch) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("uffd: watch fd %d: %w", fd, err)
	}
	return u.addWatch(dup, kind)
}

// WatchPid watches process pid (through a pidfd) like WatchTarget.
func (u *FD) WatchPid(pid int) error {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("uffd: pidfd_open(%d): %w", pid, err)
	}
	return u.addWatch(pfd, WatchPidfd)
}

func (u *FD) addWatch(fd int, kind TargetWatch) error {
	if kind != WatchPidfd && kind != WatchHangup {
		unix.Close(fd)
		return fmt.Errorf("uffd: watch: unknown kind %d: %w", kind, unix.EINVAL)
	}
	if !u.acquire() {
		unix.Close(fd)
		return ErrClosed
	}
	defer u.release()
	u.watchMu.Lock()
	u.watches = append(u.watches, watch{fd, kind})
	u.watchMu.Unlock()
	return nil
}

// Poll waits until events can be read from the uffd (true), the timeout
// expires (false; a negative timeout waits forever), Close is called
// (ErrClosed) or a watched target is gone (ErrTargetGone).
func (u *FD) Poll(timeout time.Duration) (bool, error) {
	return u.poll(timeout, -1)
}

// poll is Poll that also returns (false, nil) when the optional interrupt
// eventfd intr becomes readable.
func (u *FD) poll(timeout time.Duration, intr int) (bool, error) {
	if !u.acquire() {
		return false, ErrClosed
	}
	defer u.release()
	u.watchMu.Lock()
	pfds := make([]unix.PollFd, 0, 3+len(u.watches))
	pfds = append(pfds,
		unix.PollFd{Fd: int32(u.fd), Events: unix.POLLIN},
		unix.PollFd{Fd: int32(u.closeEv), Events: unix.POLLIN},
		unix.PollFd{Fd: int32(intr), Events: unix.POLLIN}) // negative fd: ignored by poll(2)
	for _, w := range u.watches {
		ev := int16(unix.POLLIN)
		if w.kind == WatchHangup {
			ev = unix.POLLRDHUP
		}
		pfds = append(pfds, unix.PollFd{Fd: int32(w.fd), Events: ev})
	}
	u.watchMu.Unlock()

	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		ms := -1
		if timeout >= 0 {
			left := time.Until(deadline)
			if left < 0 {
				left = 0
			}
			ms = int(min((left+time.Millisecond-1)/time.Millisecond, math.MaxInt32))
		}
		n, err := unix.Poll(pfds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("uffd: poll: %w", err)
		}
		if n == 0 {
			return false, nil
		}
		if pfds[1].Revents != 0 {
			return false, ErrClosed
		}
		if re := pfds[0].Revents; re != 0 {
			switch {
			case re&unix.POLLIN != 0:
				return true, nil
			case re&unix.POLLHUP != 0:
				return false, fmt.Errorf("uffd: poll: POLLHUP: %w", ErrTargetGone)
			case re&unix.POLLNVAL != 0:
				return false, fmt.Errorf("uffd: poll: %w", unix.EBADF)
			default:
				// POLLERR: handshake not done, or the fd is blocking.
				return false, fmt.Errorf("uffd: poll: POLLERR (no UFFDIO_API handshake or fd not O_NONBLOCK): %w", unix.EINVAL)
			}
		}
		if pfds[2].Revents != 0 {
			return false, nil
		}
		for _, p := range pfds[3:] {
			if p.Revents != 0 {
				return false, fmt.Errorf("uffd: watched fd %d signalled exit: %w", p.Fd, ErrTargetGone)
			}
		}
	}
}

// Handler processes a batch of events read by Serve. The slice is reused
// after the handler returns. Returning an error stops Serve, which returns
// it. A handler may call ReadEvents itself, e.g. to drain pending events
// after ErrAgain.
type Handler func(events []Event) error

// Serve reads events and passes them to h in batches until ctx is done
// (returns ctx.Err()), Close is called (ErrClosed), a watched target is gone
// (ErrTargetGone), or h or a read fails (that error). h runs on the calling
// goroutine; other goroutines may install pages concurrently.
func (u *FD) Serve(ctx context.Context, h Handler) error {
	intr := -1
	if ctx.Done() != nil {
		ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return fmt.Errorf("uffd: serve: eventfd: %w", err)
		}
		intr = ev
		fired := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			one := [8]byte{1}
			unix.Write(ev, one[:])
			close(fired)
		})
		defer func() {
			if !stop() {
				<-fired
			}
			unix.Close(ev)
		}()
	}
	buf := make([]Event, readBatch)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := u.ReadEvents(buf)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := h(buf[:n]); err != nil {
				return err
			}
			if n == len(buf) {
				continue // probably more queued: read again
			}
		}
		// Drained (a short read): wait rather than spend a read on EAGAIN.
		if _, err := u.poll(-1, intr); err != nil {
			return err
		}
	}
}
