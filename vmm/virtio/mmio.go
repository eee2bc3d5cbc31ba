package virtio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync/atomic"
)

// Device types.
const (
	TypeBlock = 2
	TypeVsock = 19
)

// FeatureVersion1 is VIRTIO_F_VERSION_1: every device offers it, and the
// modern transport requires it.
const FeatureVersion1 = uint64(1) << 32

// Device is a virtio device behind an MMIO transport.
type Device interface {
	Type() uint32
	Features() uint64
	// QueueSizes returns the maximum size of each queue.
	QueueSizes() []uint16
	ReadConfig(off uint64, data []byte)
	WriteConfig(off uint64, data []byte)
	// Activate starts the device with the negotiated features and its
	// queues attached to guest memory; interrupt raises the device's
	// used-buffer interrupt.
	Activate(features uint64, queues []*Queue, interrupt func()) error
	// Notify processes queue i after the driver kicked it.
	Notify(i int)
	// Reset stops the device.
	Reset()
}

// Status bits.
const (
	statusAcknowledge = 1
	statusDriver      = 2
	statusDriverOK    = 4
	statusFeaturesOK  = 8
	statusNeedsReset  = 64
	statusFailed      = 128
)

// Interrupt status bits.
const (
	IntUsedBuffer = 1
	IntConfig     = 2
)

// MMIOState is the transport's registers.
type MMIOState struct {
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	DriverFeatures    uint64
	QueueSel          uint32
	Status            uint32
	InterruptStatus   uint32
	ConfigGeneration  uint32
	Activated         bool
	Queues            []QueueState
}

// MMIO is the virtio-mmio transport (version 2) for one device.
type MMIO struct {
	State  MMIOState
	dev    Device
	queues []*Queue
	mem    Memory
	irq    func()
	log    *slog.Logger
}

// NewMMIO puts dev behind a transport. irq raises the transport's
// interrupt line (edge).
func NewMMIO(dev Device, mem Memory, irq func(), log *slog.Logger) *MMIO {
	if log == nil {
		log = slog.Default()
	}
	t := &MMIO{dev: dev, mem: mem, irq: irq, log: log}
	for _, n := range dev.QueueSizes() {
		q := NewQueue(n)
		q.Attach(mem)
		t.queues = append(t.queues, q)
	}
	return t
}

// Register offsets (virtio 1.2, 4.2.2).
const (
	regMagic            = 0x000
	regVersion          = 0x004
	regDeviceID         = 0x008
	regVendorID         = 0x00c
	regDeviceFeatures   = 0x010
	regDeviceFeatSel    = 0x014
	regDriverFeatures   = 0x020
	regDriverFeatSel    = 0x024
	regQueueSel         = 0x030
	regQueueNumMax      = 0x034
	regQueueNum         = 0x038
	regQueueReady       = 0x044
	regQueueNotify      = 0x050
	regInterruptStatus  = 0x060
	regInterruptACK     = 0x064
	regStatus           = 0x070
	regQueueDescLow     = 0x080
	regQueueDescHigh    = 0x084
	regQueueDriverLow   = 0x090
	regQueueDriverHigh  = 0x094
	regQueueDeviceLow   = 0x0a0
	regQueueDeviceHigh  = 0x0a4
	regConfigGeneration = 0x0fc
	regConfig           = 0x100

	magicValue = 0x74726976 // "virt"
	vendorID   = 0x534e4150 // "SNAP"
)

func (t *MMIO) queue() *Queue {
	if int(t.State.QueueSel) < len(t.queues) {
		return t.queues[t.State.QueueSel]
	}
	return nil
}

// Read implements devices.Device.
func (t *MMIO) Read(off uint64, data []byte) {
	if off >= regConfig {
		t.dev.ReadConfig(off-regConfig, data)
		return
	}
	if len(data) != 4 {
		clear(data)
		return
	}
	var v uint32
	st := &t.State
	switch off {
	case regMagic:
		v = magicValue
	case regVersion:
		v = 2
	case regDeviceID:
		v = t.dev.Type()
	case regVendorID:
		v = vendorID
	case regDeviceFeatures:
		f := t.dev.Features() | FeatureVersion1
		if st.DeviceFeaturesSel == 0 {
			v = uint32(f)
		} else if st.DeviceFeaturesSel == 1 {
			v = uint32(f >> 32)
		}
	case regQueueNumMax:
		if q := t.queue(); q != nil {
			v = uint32(q.State.MaxSize)
		}
	case regQueueReady:
		if q := t.queue(); q != nil && q.State.Ready {
			v = 1
		}
	case regInterruptStatus:
		v = atomic.LoadUint32(&st.InterruptStatus)
	case regStatus:
		v = st.Status
	case regConfigGeneration:
		v = st.ConfigGeneration
	}
	binary.LittleEndian.PutUint32(data, v)
}

// Write implements devices.Device.
func (t *MMIO) Write(off uint64, data []byte) {
	if off >= regConfig {
		t.dev.WriteConfig(off-regConfig, data)
		return
	}
	if len(data) != 4 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	st := &t.State
	q := t.queue()
	// Queue configuration is only allowed before DRIVER_OK.
	cfgOK := q != nil && st.Status&statusDriverOK == 0
	switch off {
	case regDeviceFeatSel:
		st.DeviceFeaturesSel = v
	case regDriverFeatures:
		if st.Status&statusFeaturesOK == 0 {
			switch st.DriverFeaturesSel {
			case 0:
				st.DriverFeatures = st.DriverFeatures&^0xffffffff | uint64(v)
			case 1:
				st.DriverFeatures = st.DriverFeatures&0xffffffff | uint64(v)<<32
			}
		}
	case regDriverFeatSel:
		st.DriverFeaturesSel = v
	case regQueueSel:
		st.QueueSel = v
	case regQueueNum:
		if cfgOK {
			q.State.Size = uint16(v)
		}
	case regQueueReady:
		if cfgOK {
			q.State.Ready = v == 1
		}
	case regQueueDescLow, regQueueDescHigh, regQueueDriverLow, regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh:
		if cfgOK {
			setHalf(q, off, v)
		}
	case regQueueNotify:
		if st.Activated && int(v) < len(t.queues) {
			t.dev.Notify(int(v))
		}
	case regInterruptACK:
		atomic.AndUint32(&st.InterruptStatus, ^v)
	case regStatus:
		t.setStatus(v)
	}
}

func setHalf(q *Queue, off uint64, v uint32) {
	var p *uint64
	switch off &^ 4 {
	case regQueueDescLow:
		p = &q.State.DescAddr
	case regQueueDriverLow:
		p = &q.State.DriverAddr
	case regQueueDeviceLow:
		p = &q.State.DeviceAddr
	}
	if off&4 == 0 {
		*p = *p&^0xffffffff | uint64(v)
	} else {
		*p = *p&0xffffffff | uint64(v)<<32
	}
}

func (t *MMIO) setStatus(v uint32) {
	st := &t.State
	if v == 0 {
		t.reset()
		return
	}
	// FEATURES_OK only sticks if the driver accepted a subset of ours
	// including VERSION_1.
	if v&statusFeaturesOK != 0 && st.Status&statusFeaturesOK == 0 {
		offered := t.dev.Features() | FeatureVersion1
		if st.DriverFeatures&^offered != 0 || st.DriverFeatures&FeatureVersion1 == 0 {
			v &^= statusFeaturesOK
		}
	}
	st.Status = v
	if v&statusDriverOK != 0 && !st.Activated && v&statusFailed == 0 {
		for i, q := range t.queues {
			if q.State.Ready && !q.Valid() {
				t.log.Warn("virtio: driver configured an invalid queue", "device", t.dev.Type(), "queue", i, "state", q.State)
				st.Status |= statusNeedsReset
				return
			}
		}
		if err := t.dev.Activate(st.DriverFeatures, t.queues, t.interrupt); err != nil {
			t.log.Warn("virtio: device activation failed", "device", t.dev.Type(), "err", err)
			st.Status |= statusNeedsReset
			return
		}
		st.Activated = true
	}
}

func (t *MMIO) interrupt() {
	// Devices may complete requests on their own goroutines.
	atomic.OrUint32(&t.State.InterruptStatus, IntUsedBuffer)
	if t.irq != nil {
		t.irq()
	}
}

func (t *MMIO) reset() {
	if t.State.Activated {
		t.dev.Reset()
	}
	gen := t.State.ConfigGeneration
	t.State = MMIOState{ConfigGeneration: gen}
	for _, q := range t.queues {
		q.Reset()
	}
}

// RestoreState puts the transport and its queues back in a saved state
// and, if the device was running, activates it again on those queues.
func (t *MMIO) RestoreState(st MMIOState) error {
	if len(st.Queues) != len(t.queues) {
		return fmt.Errorf("saved transport has %d queues, device %d", len(st.Queues), len(t.queues))
	}
	for i, q := range t.queues {
		q.State = st.Queues[i]
	}
	st.Queues = nil
	t.State = st
	if st.Activated {
		if err := t.dev.Activate(st.DriverFeatures, t.queues, t.interrupt); err != nil {
			return err
		}
	}
	return nil
}

// SaveState returns the transport's state, queues included.
func (t *MMIO) SaveState() MMIOState {
	st := t.State
	st.Queues = nil
	for _, q := range t.queues {
		st.Queues = append(st.Queues, q.State)
	}
	return st
}
