package devices

import "time"

// CMOS emulates the PC's MC146818 real-time clock and CMOS RAM at ports
// 0x70 (index; bit 7 is the NMI mask, ignored) and 0x71 (data), as far as
// a guest reading the time needs: the time and date registers read the
// host's clock (UTC) in the format register B asks for (BCD or binary,
// 24- or 12-hour), the update-in-progress flag is never set, register D
// reports valid time, and the rest is 128 bytes of RAM. Writes to the
// time registers are ignored: the guest's clock is the host's.
//
// Without it, every port read answers 0xff, so the update-in-progress
// flag looks stuck: Linux's rtc_cmos probe polled it for about 10 s of
// boot (under nested KVM on QEMU TCG, the window where stock kernels
// stalled or triple-faulted) and gave up with "broken or not accessible".
// It raises no interrupt (no update, alarm or periodic IRQ 8).
//
// Its state is not part of a snapshot: a restored VM starts from the
// power-on registers (BCD, 24-hour), which Linux reads back each time.
type CMOS struct {
	// Now is the clock; nil means time.Now.
	Now   func() time.Time
	index uint8
	ram   [128]byte
	init  bool
}

// MC146818 registers.
const (
	cmosSeconds = 0x00
	cmosMinutes = 0x02
	cmosHours   = 0x04
	cmosWeekday = 0x06
	cmosDay     = 0x07
	cmosMonth   = 0x08
	cmosYear    = 0x09
	cmosA       = 0x0a
	cmosB       = 0x0b
	cmosC       = 0x0c
	cmosD       = 0x0d
	cmosCentury = 0x32

	cmosUIP    = 0x80 // register A: update in progress
	cmosDM     = 0x04 // register B: binary, not BCD
	cmos24h    = 0x02 // register B: 24-hour mode
	cmosSET    = 0x80 // register B: updates stopped while the guest sets the time
	cmosVRT    = 0x80 // register D: valid RAM and time
	cmosHourPM = 0x80 // hours register, 12-hour mode
)

func (d *CMOS) powerOn() {
	if !d.init {
		d.init = true
		d.ram[cmosA] = 0x26 // 32.768 kHz time base, 1024 Hz periodic rate
		d.ram[cmosB] = cmos24h
		d.ram[cmosD] = cmosVRT
	}
}

// Read implements Device (offset 0: index, 1: data).
func (d *CMOS) Read(off uint64, data []byte) {
	d.powerOn()
	for i := range data {
		data[i] = 0xff
	}
	if off != 1 || len(data) == 0 {
		return
	}
	data[0] = d.reg(d.index)
}

// Write implements Device.
func (d *CMOS) Write(off uint64, data []byte) {
	d.powerOn()
	if len(data) == 0 {
		return
	}
	v := data[0]
	switch {
	case off == 0:
		d.index = v & 0x7f
	case off != 1:
	case d.index <= cmosYear, d.index == cmosC, d.index == cmosD, d.index == cmosCentury:
		// time, date and read-only status: the host's clock rules
	case d.index == cmosA:
		d.ram[cmosA] = v &^ cmosUIP
	case d.index == cmosB:
		d.ram[cmosB] = v &^ cmosSET
	default:
		d.ram[d.index] = v
	}
}

func (d *CMOS) reg(i uint8) byte {
	if i > cmosYear && i != cmosCentury {
		return d.ram[i]
	}
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	t := now().UTC()
	var v int
	switch i {
	case cmosSeconds:
		v = t.Second()
	case cmosMinutes:
		v = t.Minute()
	case cmosHours:
		h := t.Hour()
		if d.ram[cmosB]&cmos24h == 0 {
			pm := h >= 12
			h %= 12
			if h == 0 {
				h = 12
			}
			if pm {
				return d.format(h) | cmosHourPM
			}
		}
		v = h
	case cmosWeekday:
		v = int(t.Weekday()) + 1 // 1 = Sunday
	case cmosDay:
		v = t.Day()
	case cmosMonth:
		v = int(t.Month())
	case cmosYear:
		v = t.Year() % 100
	case cmosCentury:
		v = t.Year() / 100
	default:
		return d.ram[i] // alarm registers 1, 3, 5
	}
	return d.format(v)
}

// format encodes v (0..99) as register B says: binary or BCD.
func (d *CMOS) format(v int) byte {
	if d.ram[cmosB]&cmosDM != 0 {
		return byte(v)
	}
	return byte(v/10<<4 | v%10)
}
