// Package virtio implements virtio 1.x devices for snapfaas microVMs over the
// virtio-mmio transport (version 2, "modern"): the transport's register
// file, split virtqueues read straight out of guest memory, and the devices
// (block, vsock).
//
// Every device and queue keeps its state in plain exported structs
// (MMIOState, QueueState) so a snapshot can save and restore them. Queues
// are processed on the vCPU thread that writes QueueNotify; a device
// signals the guest through an interrupt callback (an irqfd or IRQ line).
//
// # Memory ordering
//
// The driver (the guest, or a test's fake driver on another goroutine)
// and the device share the rings with no lock. Each side publishes with
// one 16-bit index and the other side consumes through it:
//
//   - driver → device: descriptors and the avail ring entry are written
//     first, then avail.idx is stored with release semantics; the device
//     loads avail.idx with acquire semantics (Pop) before it reads the
//     entry and the descriptors.
//   - device → driver: the buffer contents and the used element (id, len)
//     are written first, then used.idx is stored with release semantics
//     (Push); the driver loads used.idx with acquire semantics before it
//     reads the element and the buffer.
//
// Only the indices and avail.flags are accessed atomically, through
// sync/atomic on the aligned 32-bit word that holds each 16-bit field
// (atomic.go: a load, or a compare-and-swap that keeps the other half);
// descriptors, ring entries and buffers are plain memory ordered by the
// index that publishes them. On x86 (TSO) plain
// stores are not reordered with each other in hardware, but the Go
// compiler may reorder or merge plain accesses, and the Go memory model,
// and so the race detector, only orders goroutines through
// synchronization: without the atomics a fake driver in a -race test
// races with the device, and nothing would stop the compiler moving the
// index store before the element store.
package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Memory is guest memory as the devices see it.
type Memory interface {
	// Slice returns the guest bytes [addr, addr+n); error if out of range.
	Slice(addr uint64, n int) ([]byte, error)
}

// ErrQueue: the driver put something malformed on a queue.
var ErrQueue = errors.New("malformed virtqueue")

// Descriptor flags.
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4
)

// QueueState is a split virtqueue's configuration and device-side indices.
type QueueState struct {
	MaxSize    uint16
	Size       uint16
	Ready      bool
	DescAddr   uint64
	DriverAddr uint64 // available ring
	DeviceAddr uint64 // used ring
	// NextAvail is the next available-ring index the device will read;
	// NextUsed the next used-ring index it will write.
	NextAvail uint16
	NextUsed  uint16
}

// Desc is one descriptor of a chain.
type Desc struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Queue is a split virtqueue over guest memory.
type Queue struct {
	State QueueState
	mem   Memory
}

// NewQueue returns a queue of at most max entries.
func NewQueue(max uint16) *Queue { return &Queue{State: QueueState{MaxSize: max, Size: max}} }

// Attach gives the queue its guest memory (on activation or restore).
func (q *Queue) Attach(mem Memory) { q.mem = mem }

// Reset returns the queue to its initial state.
func (q *Queue) Reset() { q.State = QueueState{MaxSize: q.State.MaxSize, Size: q.State.MaxSize} }

// Valid reports whether the driver configured the queue sensibly.
func (q *Queue) Valid() bool {
	s := q.State
	return s.Ready && s.Size > 0 && s.Size <= s.MaxSize && s.Size&(s.Size-1) == 0 &&
		s.DescAddr%16 == 0 && s.DriverAddr%2 == 0 && s.DeviceAddr%4 == 0
}

func (q *Queue) u16(addr uint64) (uint16, error) {
	b, err := q.mem.Slice(addr, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

// Pop returns the next available descriptor chain (its head index and
// descriptors), or ok=false if the driver has made none available.
func (q *Queue) Pop() (head uint16, chain []Desc, ok bool, err error) {
	s := &q.State
	// Acquire: the ring entry and descriptors the driver wrote before
	// publishing availIdx are visible below.
	availIdx, err := load16(q.mem, s.DriverAddr+2)
	if err != nil {
		return 0, nil, false, err
	}
	if availIdx == s.NextAvail {
		return 0, nil, false, nil
	}
	if uint16(availIdx-s.NextAvail) > s.Size {
		return 0, nil, false, fmt.Errorf("available index %d is %d ahead of %d (queue size %d): %w", availIdx, availIdx-s.NextAvail, s.NextAvail, s.Size, ErrQueue)
	}
	head, err = q.u16(s.DriverAddr + 4 + 2*uint64(s.NextAvail%s.Size))
	if err != nil {
		return 0, nil, false, err
	}
	s.NextAvail++
	chain, err = q.chain(head)
	return head, chain, true, err
}

func (q *Queue) chain(head uint16) ([]Desc, error) {
	s := &q.State
	var chain []Desc
	idx := head
	for n := 0; ; n++ {
		if idx >= s.Size || n >= int(s.Size) {
			return nil, fmt.Errorf("descriptor chain from %d: index %d or length %d out of range: %w", head, idx, n, ErrQueue)
		}
		d, err := q.mem.Slice(s.DescAddr+16*uint64(idx), 16)
		if err != nil {
			return nil, err
		}
		le := binary.LittleEndian
		flags := le.Uint16(d[12:])
		if flags&descIndirect != 0 {
			return nil, fmt.Errorf("indirect descriptor (not negotiated): %w", ErrQueue)
		}
		chain = append(chain, Desc{Addr: le.Uint64(d[0:]), Len: le.Uint32(d[8:]), Write: flags&descWrite != 0})
		if flags&descNext == 0 {
			return chain, nil
		}
		idx = le.Uint16(d[14:])
	}
}

// Push returns chain head to the driver with written bytes of it filled.
func (q *Queue) Push(head uint16, written uint32) error {
	s := &q.State
	e, err := q.mem.Slice(s.DeviceAddr+4+8*uint64(s.NextUsed%s.Size), 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	// Release: the element above (and the buffer contents written
	// before Push) are visible to a driver that sees the new index.
	if err := store16(q.mem, s.DeviceAddr+2, s.NextUsed+1); err != nil {
		return err
	}
	s.NextUsed++
	return nil
}

// NeedsInterrupt reports whether the driver wants an interrupt for used
// buffers (VIRTQ_AVAIL_F_NO_INTERRUPT clear; event idx is not offered).
func (q *Queue) NeedsInterrupt() bool {
	flags, err := load16(q.mem, q.State.DriverAddr)
	return err != nil || flags&1 == 0
}
