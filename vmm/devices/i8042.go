package devices

// I8042State is the controller's state (nothing survives but a flag).
type I8042State struct {
	ResetRequested bool
}

// I8042 emulates just enough of the keyboard controller for a guest to
// reset the machine: command 0xFE on port 0x64 calls Reset. Reads return a
// controller with nothing to say.
type I8042 struct {
	State I8042State
	Reset func()
}

// Read implements Device (ports 0x60..0x64, offset from 0x60).
func (d *I8042) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write implements Device.
func (d *I8042) Write(off uint64, data []byte) {
	if off == 4 && len(data) > 0 && data[0] == 0xfe {
		d.State.ResetRequested = true
		if d.Reset != nil {
			d.Reset()
		}
	}
}

// SnapshotPort receives the guest's snapshot-point signals on port 0x3f0
// (123: boot done, 124: snapshot now) and hands each value to Signal.
type SnapshotPort struct {
	Signal func(value uint8)
}

// Read implements Device.
func (d *SnapshotPort) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write implements Device.
func (d *SnapshotPort) Write(off uint64, data []byte) {
	if len(data) > 0 && d.Signal != nil {
		d.Signal(data[0])
	}
}
