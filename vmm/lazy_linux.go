package vmm

import (
	"errors"
	"fmt"

	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/uffd"
)

// ErrPageServerLost: the sidecar serving guest memory went away; the VM
// was stopped because its page faults could never be served again.
var ErrPageServerLost = errors.New("page server lost")

// ErrLazyTooLate: LazyMemory was called after Restore had restored the
// VM's state, which may already have had KVM write guest memory.
var ErrLazyTooLate = errors.New("called after the VM's state was restored; call it from the Memory passed to Restore")

// LazyMemory hands guest memory to the sidecar at socket: memory is
// registered with a userfaultfd (missing mode, not user-mode-only, so KVM's
// own accesses fault too) and the sidecar serves snapshot's pages as they
// are touched, prefetching or recording the working set as h asks. Call it
// from the Memory given to Restore, before any state is restored (see
// Memory). The VM keeps its copy of the uffd open and stops with
// ErrPageServerLost if the sidecar dies.
func (vm *VM) LazyMemory(socket, snapshot string, h pageserver.Handoff) (*pageserver.Client, pageserver.Reply, error) {
	if vm.stateRestored {
		return nil, pageserver.Reply{}, fmt.Errorf("lazy memory: %w", ErrLazyTooLate)
	}
	// A page already present would shadow the snapshot's: the guest
	// would see whatever the VMM put there (zeros) instead.
	if p := firstResident(vm.mem); p >= 0 {
		return nil, pageserver.Reply{}, fmt.Errorf("lazy memory: guest page %d is already present before the page server takes over (call it from the Memory passed to Restore, before anything touches guest memory)", p)
	}
	u, err := uffd.New()
	if err != nil {
		return nil, pageserver.Reply{}, fmt.Errorf("lazy memory: %w", err)
	}
	base := hostAddr(vm.mem)
	if _, err := u.Register(base, uintptr(len(vm.mem)), uffd.ModeMissing); err != nil {
		u.Close()
		return nil, pageserver.Reply{}, fmt.Errorf("lazy memory: %w", err)
	}
	h.Snapshot = snapshot
	h.Regions = []uffd.Region{{BaseHostVirtAddr: uint64(base), Size: uint64(len(vm.mem)), Offset: 0, PageSize: 4096}}
	c, reply, err := pageserver.Connect(socket, u.Fd(), h)
	if err != nil {
		u.Close()
		return nil, reply, fmt.Errorf("lazy memory: %w", err)
	}
	vm.uffd = u
	go func() {
		select {
		case <-c.Lost():
			vm.stop(fmt.Errorf("guest memory of snapshot %q: %w (%v)", snapshot, ErrPageServerLost, c.Err()))
			// A vCPU, or a device touching guest memory, may be
			// blocked on a fault nobody will serve, where the kick does
			// not reach it (PVM: the instruction emulator's fetch
			// retries forever). Closing the last uffd unregisters guest
			// memory: the fault is retried on plain anonymous memory
			// and the thread goes on. The VM is stopping; that memory
			// is not used again.
			u.Close()
		case <-vm.done:
		}
	}()
	return c, reply, nil
}
