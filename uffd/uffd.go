//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Errors returned by this package wrap one of these where
// they apply, and also wrap the underlying errno (a syscall.Errno) when there
// is one, so both errors.Is(err, ErrTargetGone) and errors.Is(err,
// unix.ESRCH) work.
var (
	// ErrAgain reports that UFFDIO_COPY/UFFDIO_ZEROPAGE hit EAGAIN: the
	// target's memory layout is changing (a non-cooperative event such as
	// REMOVE, UNMAP or REMAP is queued and has not been read yet). The
	// caller must read and handle pending events (ReadEvents), then retry
	// the operation for the bytes not yet installed (see Result).
	ErrAgain = errors.New("uffd: target mappings changed, read pending events and retry")

	// ErrTargetGone reports that the process (mm) the uffd serves has
	// exited: an install returned ESRCH or ENOSPC, or a watched pidfd or
	// connection (see WatchTarget, WatchPeer) signalled the exit.
	ErrTargetGone = errors.New("uffd: target process is gone")

	// ErrUnsupported reports that userfaultfd itself, or a requested
	// feature, ioctl or mode, is not available. It wraps
	// errors.ErrUnsupported.
	ErrUnsupported = fmt.Errorf("uffd: %w", errors.ErrUnsupported)

	// ErrClosed reports use of an FD after Close. It wraps os.ErrClosed.
	ErrClosed = fmt.Errorf("uffd: %w", os.ErrClosed)
)

// Features is a set of UFFD_FEATURE_* bits negotiated with UFFDIO_API.
type Features uint64

// Feature bits (include/uapi/linux/userfaultfd.h).
const (
	FeaturePagefaultFlagWP  Features = 1 << 0  // UFFD_FEATURE_PAGEFAULT_FLAG_WP
	FeatureEventFork        Features = 1 << 1  // UFFD_FEATURE_EVENT_FORK (needs CAP_SYS_PTRACE)
	FeatureEventRemap       Features = 1 << 2  // UFFD_FEATURE_EVENT_REMAP
	FeatureEventRemove      Features = 1 << 3  // UFFD_FEATURE_EVENT_REMOVE
	FeatureMissingHugetlbfs Features = 1 << 4  // UFFD_FEATURE_MISSING_HUGETLBFS
	FeatureMissingShmem     Features = 1 << 5  // UFFD_FEATURE_MISSING_SHMEM
	FeatureEventUnmap       Features = 1 << 6  // UFFD_FEATURE_EVENT_UNMAP
	FeatureSigbus           Features = 1 << 7  // UFFD_FEATURE_SIGBUS
	FeatureThreadID         Features = 1 << 8  // UFFD_FEATURE_THREAD_ID
	FeatureMinorHugetlbfs   Features = 1 << 9  // UFFD_FEATURE_MINOR_HUGETLBFS
	FeatureMinorShmem       Features = 1 << 10 // UFFD_FEATURE_MINOR_SHMEM
	FeatureExactAddress     Features = 1 << 11 // UFFD_FEATURE_EXACT_ADDRESS
	FeatureWPHugetlbfsShmem Features = 1 << 12 // UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	FeatureWPUnpopulated    Features = 1 << 13 // UFFD_FEATURE_WP_UNPOPULATED
	FeaturePoison           Features = 1 << 14 // UFFD_FEATURE_POISON
	FeatureWPAsync          Features = 1 << 15 // UFFD_FEATURE_WP_ASYNC
	FeatureMove             Features = 1 << 16 // UFFD_FEATURE_MOVE
)

// DefaultFeatures is the feature set New requires unless WithFeatures says
// otherwise: the non-cooperative events a snapshot restore needs to keep its
// view of guest memory correct (balloon MADV_DONTNEED, munmap, mremap).
const DefaultFeatures = FeatureEventRemove | FeatureEventUnmap | FeatureEventRemap

var featureNames = [...]string{
	"PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE",
	"MISSING_HUGETLBFS", "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS",
	"THREAD_ID", "MINOR_HUGETLBFS", "MINOR_SHMEM", "EXACT_ADDRESS",
	"WP_HUGETLBFS_SHMEM", "WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
}

// Has reports whether all bits of g are in f.
func (f Features) Has(g Features) bool { return f&g == g }

func (f Features) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for i, name := range featureNames {
		if f&(1<<i) != 0 {
			parts = append(parts, name)
			f &^= 1 << i
		}
	}
	if f != 0 {
		parts = append(parts, "0x"+strconv.FormatUint(uint64(f), 16))
	}
	return strings.Join(parts, "|")
}

// Ioctls is a bitmask of available ioctls, bit n meaning _UFFDIO_* command
// number n, as reported by UFFDIO_API (for the fd) and UFFDIO_REGISTER (for a
// range).
type Ioctls uint64

// Ioctl bits.
const (
	IoctlRegister     Ioctls = 1 << nrRegister
	IoctlUnregister   Ioctls = 1 << nrUnregister
	IoctlWake         Ioctls = 1 << nrWake
	IoctlCopy         Ioctls = 1 << nrCopy
	IoctlZeropage     Ioctls = 1 << nrZeropage
	IoctlMove         Ioctls = 1 << nrMove
	IoctlWriteProtect Ioctls = 1 << nrWriteProtect
	IoctlContinue     Ioctls = 1 << nrContinue
	IoctlPoison       Ioctls = 1 << nrPoison
	IoctlAPI          Ioctls = 1 << nrAPI
)

// Has reports whether all bits of j are in i.
func (i Ioctls) Has(j Ioctls) bool { return i&j == j }

// OpenMethod selects how New obtains a userfaultfd.
type OpenMethod int

const (
	// OpenAuto tries /dev/userfaultfd and falls back to userfaultfd(2).
	OpenAuto OpenMethod = iota
	// OpenDevice uses only /dev/userfaultfd (USERFAULTFD_IOC_NEW).
	OpenDevice
	// OpenSyscall uses only the userfaultfd(2) system call.
	OpenSyscall
)

// Option configures New and FromFD.
type Option func(*config)

type config struct {
	required Features
	optional Features
	method   OpenMethod
	pageSize int
}

func newConfig(opts []Option) config {
	c := config{required: DefaultFeatures, method: OpenAuto, pageSize: os.Getpagesize()}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithFeatures sets the features New must negotiate (default
// DefaultFeatures); New fails with ErrUnsupported if any is unavailable.
func WithFeatures(f Features) Option { return func(c *config) { c.required = f } }

// WithOptionalFeatures adds features New requests only if the kernel (and,
// for FeatureEventFork, the caller's privileges) allow them. FD.Features
// reports what was granted.
func WithOptionalFeatures(f Features) Option { return func(c *config) { c.optional |= f } }

// WithOpenMethod selects how New obtains the file descriptor (default
// OpenAuto).
func WithOpenMethod(m OpenMethod) Option { return func(c *config) { c.method = m } }

// WithPageSize sets the page size of the registered memory (default
// os.Getpagesize()). It is the granularity at which Copy and ZeroPage skip
// already-present pages, and must match the backing page size (e.g. 2 MiB
// for hugetlbfs).
func WithPageSize(n int) Option { return func(c *config) { c.pageSize = n } }

// FD is an open userfaultfd. Its methods are safe for concurrent use; Close
// interrupts a blocked Poll or Serve.
type FD struct {
	fd       int
	closeEv  int // eventfd made readable by Close
	features Features
	ioctls   Ioctls
	pageSize uintptr

	// mu is held for reading around every system call that uses fd and
	// for writing while Close releases it, so fd is never reused under a
	// running call.
	mu     sync.RWMutex
	closed atomic.Bool

	watchMu sync.Mutex
	watches []watch

	readMu sync.Mutex
	raw    [readBatch * msgSize]byte // ReadEvents buffer, under readMu
}

// uffd creation flags: close-on-exec and non-blocking (poll(2) on a blocking
// uffd reports POLLERR). Never UFFD_USER_MODE_ONLY: such a uffd cannot
// resolve faults taken by the kernel on the target's behalf, which is how
// KVM touches guest memory.
const openFlags = unix.O_CLOEXEC | unix.O_NONBLOCK

// openRaw returns a fresh userfaultfd without the API handshake.
func openRaw(m OpenMethod) (int, error) {
	var devErr error
	if m == OpenAuto || m == OpenDevice {
		dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			fd, errno := devUserfaultfdNew(dev, openFlags)
			unix.Close(dev)
			if errno == 0 {
				return fd, nil
			}
			err = errno
		}
		devErr = fmt.Errorf("/dev/userfaultfd: %w", err)
		if m == OpenDevice {
			return -1, fmt.Errorf("uffd: open %w (%w)", devErr, ErrUnsupported)
		}
	}
	fd, errno := sysUserfaultfd(openFlags)
	if errno == 0 {
		return fd, nil
	}
	err := fmt.Errorf("userfaultfd(2): %w", errno)
	if devErr != nil {
		err = fmt.Errorf("%w; %w", devErr, err)
	}
	switch errno {
	case unix.ENOSYS, unix.EPERM, unix.EACCES, unix.EINVAL:
		return -1, fmt.Errorf("uffd: open: %w (%w)", err, ErrUnsupported)
	}
	return -1, fmt.Errorf("uffd: open: %w", err)
}

// handshake runs UFFDIO_API requesting features and returns what the kernel
// reports (all features it supports, and the fd-level ioctls).
func handshake(fd int, features Features) (Features, Ioctls, error) {
	a := uffdioAPI{API: uffdAPI, Features: uint64(features)}
	if errno := ioctlAPI(fd, &a); errno != 0 {
		return 0, 0, fmt.Errorf("uffd: UFFDIO_API (features %v): %w", features, errno)
	}
	return Features(a.Features), Ioctls(a.Ioctls), nil
}

var probe struct {
	sync.Mutex
	done     bool
	features Features
	ioctls   Ioctls
}

// SupportedFeatures reports the features and fd-level ioctls the running
// kernel offers, probed once (on a throwaway uffd) and cached. It returns an
// error wrapping ErrUnsupported if userfaultfd cannot be opened at all.
func SupportedFeatures() (Features, Ioctls, error) {
	probe.Lock()
	defer probe.Unlock()
	if probe.done {
		return probe.features, probe.ioctls, nil
	}
	fd, err := openRaw(OpenAuto)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	f, i, err := handshake(fd, 0)
	if err != nil {
		return 0, 0, err
	}
	probe.done, probe.features, probe.ioctls = true, f, i
	return f, i, nil
}

// New opens a userfaultfd (O_CLOEXEC|O_NONBLOCK, never user-mode-only) and
// performs the UFFDIO_API handshake, enabling the required features
// (DefaultFeatures unless WithFeatures is given) plus whichever optional
// features are available. It fails with an error wrapping ErrUnsupported if
// userfaultfd or a required feature is unavailable.
func New(opts ...Option) (*FD, error) {
	cfg := newConfig(opts)
	if err := checkPageSize(cfg.pageSize); err != nil {
		return nil, err
	}
	supported, _, err := SupportedFeatures()
	if err != nil {
		return nil, err
	}
	if missing := cfg.required &^ supported; missing != 0 {
		return nil, fmt.Errorf("uffd: kernel lacks required features %v: %w", missing, ErrUnsupported)
	}
	want := cfg.required | cfg.optional&supported
	for {
		fd, err := openRaw(cfg.method)
		if err != nil {
			return nil, err
		}
		_, ioctls, err := handshake(fd, want)
		if err != nil {
			unix.Close(fd)
			// EVENT_FORK needs CAP_SYS_PTRACE; drop it if only optional.
			if errors.Is(err, unix.EPERM) && want.Has(FeatureEventFork) && !cfg.required.Has(FeatureEventFork) {
				want &^= FeatureEventFork
				continue
			}
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w (%w)", err, ErrUnsupported)
			}
			return nil, err
		}
		u, err := newFD(fd, want, ioctls, cfg.pageSize)
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		return u, nil
	}
}

// FromFD wraps fd, a userfaultfd whose UFFDIO_API handshake was already done
// (typically by the process that sent it over a Unix socket). The FD takes
// ownership of fd and closes it on Close. FromFD checks that fd is a
// userfaultfd, sets O_NONBLOCK on it if missing (this changes the open file
// description shared with the sender), and reads the negotiated features from
// /proc/self/fdinfo when available. Only WithPageSize is meaningful here.
func FromFD(fd int, opts ...Option) (*FD, error) {
	cfg := newConfig(opts)
	if err := checkPageSize(cfg.pageSize); err != nil {
		return nil, err
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("uffd: fd %d: %w", fd, err)
	}
	if link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil && link != "anon_inode:[userfaultfd]" {
		return nil, fmt.Errorf("uffd: fd %d is %q, not a userfaultfd: %w", fd, link, unix.EINVAL)
	}
	if fl&unix.O_NONBLOCK == 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
			return nil, fmt.Errorf("uffd: fd %d: set O_NONBLOCK: %w", fd, err)
		}
	}
	features, _ := fdinfoFeatures(fd)
	ioctls := IoctlAPI | IoctlRegister | IoctlUnregister
	return newFD(fd, features, ioctls, cfg.pageSize)
}

// fdinfoFeatures parses the "API:\t<api>:<features>:<ioctls>" line that
// fs/userfaultfd.c writes to /proc/<pid>/fdinfo/<fd>.
func fdinfoFeatures(fd int) (Features, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		v, ok := strings.CutPrefix(line, "API:")
		if !ok {
			continue
		}
		parts := strings.Split(strings.TrimSpace(v), ":")
		if len(parts) != 3 {
			break
		}
		f, err := strconv.ParseUint(parts[1], 16, 64)
		if err != nil {
			return 0, err
		}
		return Features(f &^ featureInitialized), nil
	}
	return 0, errors.New("no API line in fdinfo")
}

func checkPageSize(n int) error {
	if n <= 0 || n&(n-1) != 0 {
		return fmt.Errorf("uffd: page size %d is not a power of two: %w", n, unix.EINVAL)
	}
	return nil
}

func newFD(fd int, features Features, ioctls Ioctls, pageSize int) (*FD, error) {
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("uffd: eventfd: %w", err)
	}
	return &FD{fd: fd, closeEv: ev, features: features, ioctls: ioctls, pageSize: uintptr(pageSize)}, nil
}

// Fd returns the underlying file descriptor, e.g. to send it to another
// process. It stays owned by the FD and is invalid after Close.
func (u *FD) Fd() int { return u.fd }

// Features reports the features enabled on this uffd. For an FD made by
// FromFD it is read from /proc/self/fdinfo and is 0 if that was unavailable.
func (u *FD) Features() Features { return u.features }

// Ioctls reports the fd-level ioctls from the UFFDIO_API handshake.
func (u *FD) Ioctls() Ioctls { return u.ioctls }

// PageSize reports the page size used for EEXIST skipping and alignment
// checks.
func (u *FD) PageSize() int { return int(u.pageSize) }

// acquire pins fd for one system call; it fails once Close has begun.
func (u *FD) acquire() bool {
	u.mu.RLock()
	if u.closed.Load() {
		u.mu.RUnlock()
		return false
	}
	return true
}

func (u *FD) release() { u.mu.RUnlock() }

// Close interrupts any Poll or Serve in progress (they return ErrClosed),
// waits for in-flight calls to finish, then closes the uffd and any watched
// descriptors. Closing the last reference to a uffd makes the kernel wake
// all faulting threads and unregister its ranges (the faults are then
// resolved with zero pages in the target). A second Close returns ErrClosed.
func (u *FD) Close() error {
	if !u.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	one := [8]byte{1}
	unix.Write(u.closeEv, one[:]) // wake pollers; they hold mu.RLock
	u.mu.Lock()
	defer u.mu.Unlock()
	err := unix.Close(u.fd)
	unix.Close(u.closeEv)
	u.watchMu.Lock()
	for _, w := range u.watches {
		unix.Close(w.fd)
	}
	u.watches = nil
	u.watchMu.Unlock()
	if err != nil {
		return fmt.Errorf("uffd: close: %w", err)
	}
	return nil
}
