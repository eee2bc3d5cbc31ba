package vmm

import (
	"errors"
	"math/bits"
	"sync/atomic"

	"github.com/snapfaas/snapfaas/vmm/arch"
)

const pageSize = 4096

// ErrNotTracking: DirtyPages on a VM created without Config.TrackDirty.
var ErrNotTracking = errors.New("vmm: dirty pages are not tracked (Config.TrackDirty)")

// pageBits is a bitmap over guest memory pages (memory offsets, not guest
// physical addresses), safe for concurrent setting.
type pageBits struct{ w []atomic.Uint64 }

func newPageBits(pages uint64) *pageBits {
	return &pageBits{w: make([]atomic.Uint64, (pages+63)/64)}
}

// setRange marks pages first..last.
func (b *pageBits) setRange(first, last uint64) {
	for p := first; p <= last; p++ {
		w := &b.w[p/64]
		if m := uint64(1) << (p % 64); w.Load()&m == 0 {
			w.Or(m)
		}
	}
}

// DirtyPages returns the pages of guest memory (indices into Memory(), in
// order) that changed since the VM was created — or may have: the guest's
// writes as KVM logged them, and every page the device model touched.
// Each call starts a new interval (KVM's log is cleared and so is the
// device model's). Call it with the VM paused or stopped.
func (vm *VM) DirtyPages() ([]uint64, error) {
	if vm.devDirty == nil {
		return nil, ErrNotTracking
	}
	pages := uint64(len(vm.mem)) / pageSize
	all := make([]uint64, (pages+63)/64)
	for i := range all {
		all[i] = vm.devDirty.w[i].Swap(0)
	}
	for i, r := range arch.RAMRegions(uint64(len(vm.mem))) {
		n := r.Size / pageSize
		log := make([]uint64, (n+63)/64)
		if err := vm.vm.DirtyLog(uint32(i), log); err != nil {
			return nil, err
		}
		first := r.Offset / pageSize
		for j, w := range log {
			for w != 0 {
				k := uint64(bits.TrailingZeros64(w))
				w &^= 1 << k
				p := first + uint64(j)*64 + k
				all[p/64] |= 1 << (p % 64)
			}
		}
	}
	var out []uint64
	for i, w := range all {
		for w != 0 {
			k := uint64(bits.TrailingZeros64(w))
			w &^= 1 << k
			out = append(out, uint64(i)*64+k)
		}
	}
	return out, nil
}
