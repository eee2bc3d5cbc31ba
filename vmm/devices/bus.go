package devices

import (
	"fmt"
	"sort"
	"sync"
)

// Device handles accesses at an offset into the range it was added with.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type busRange struct {
	base, size uint64
	dev        Device
}

// Bus maps address (or port) ranges to devices. Accesses to one device
// are serialized.
type Bus struct {
	mu     sync.RWMutex
	ranges []busRange
	locks  map[Device]*sync.Mutex
}

// Add maps [base, base+size) to dev.
func (b *Bus) Add(base, size uint64, dev Device) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.ranges {
		if base < r.base+r.size && r.base < base+size {
			return fmt.Errorf("bus range %#x+%#x overlaps %#x+%#x", base, size, r.base, r.size)
		}
	}
	b.ranges = append(b.ranges, busRange{base, size, dev})
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	if b.locks == nil {
		b.locks = map[Device]*sync.Mutex{}
	}
	if b.locks[dev] == nil {
		b.locks[dev] = &sync.Mutex{}
	}
	return nil
}

func (b *Bus) find(addr uint64) (*busRange, *sync.Mutex) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > addr })
	if i < len(b.ranges) && b.ranges[i].base <= addr {
		return &b.ranges[i], b.locks[b.ranges[i].dev]
	}
	return nil, nil
}

// Read dispatches a read; it reports false (and fills ones) if nothing is
// mapped there.
func (b *Bus) Read(addr uint64, data []byte) bool {
	r, mu := b.find(addr)
	if r == nil {
		for i := range data {
			data[i] = 0xff
		}
		return false
	}
	mu.Lock()
	defer mu.Unlock()
	r.dev.Read(addr-r.base, data)
	return true
}

// Write dispatches a write; it reports false if nothing is mapped there.
func (b *Bus) Write(addr uint64, data []byte) bool {
	r, mu := b.find(addr)
	if r == nil {
		return false
	}
	mu.Lock()
	defer mu.Unlock()
	r.dev.Write(addr-r.base, data)
	return true
}
