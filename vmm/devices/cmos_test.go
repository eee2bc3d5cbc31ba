package devices

import (
	"testing"
	"time"
)

func cmosRead(d *CMOS, index byte) byte {
	d.Write(0, []byte{index | 0x80}) // with the NMI-mask bit, as Linux writes it
	b := []byte{0}
	d.Read(1, b)
	return b[0]
}

func cmosWrite(d *CMOS, index, v byte) {
	d.Write(0, []byte{index})
	d.Write(1, []byte{v})
}

func TestCMOSReadsTheHostClock(t *testing.T) {
	now := time.Date(2026, 11, 30, 21, 7, 59, 0, time.UTC) // a Monday
	d := &CMOS{Now: func() time.Time { return now }}
	bcd := map[byte]byte{0x00: 0x59, 0x02: 0x07, 0x04: 0x21, 0x06: 0x02, 0x07: 0x30, 0x08: 0x11, 0x09: 0x26, 0x32: 0x20}
	for reg, want := range bcd {
		if got := cmosRead(d, reg); got != want {
			t.Errorf("BCD register %#x = %#x, want %#x", reg, got, want)
		}
	}
	if a := cmosRead(d, 0x0a); a&0x80 != 0 {
		t.Errorf("register A %#x: update in progress", a)
	}
	if dreg := cmosRead(d, 0x0d); dreg&0x80 == 0 {
		t.Errorf("register D %#x: time not valid", dreg)
	}
	// The guest asks for binary, 12-hour: 21:07 is 9 PM.
	cmosWrite(d, 0x0b, 0x04)
	bin := map[byte]byte{0x00: 59, 0x02: 7, 0x04: 9 | 0x80, 0x07: 30, 0x08: 11, 0x09: 26, 0x32: 20}
	for reg, want := range bin {
		if got := cmosRead(d, reg); got != want {
			t.Errorf("binary 12-hour register %#x = %#x, want %#x", reg, got, want)
		}
	}
	// Setting the time changes nothing; the update-in-progress flag
	// cannot be set; RAM keeps what is written.
	cmosWrite(d, 0x00, 0x11)
	cmosWrite(d, 0x0a, 0xa6)
	cmosWrite(d, 0x40, 0x5a)
	if got := cmosRead(d, 0x00); got != 59 {
		t.Errorf("seconds after a write: %d, want the clock's 59", got)
	}
	if a := cmosRead(d, 0x0a); a != 0x26 {
		t.Errorf("register A %#x after writing 0xa6, want 0x26", a)
	}
	if got := cmosRead(d, 0x40); got != 0x5a {
		t.Errorf("RAM byte 0x40 = %#x, want 0x5a", got)
	}
	// The index port reads nothing meaningful.
	b := []byte{0}
	d.Read(0, b)
	if b[0] != 0xff {
		t.Errorf("index port read %#x, want 0xff", b[0])
	}
}
