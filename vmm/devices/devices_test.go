package devices

import (
	"bytes"
	"testing"
)

func TestSerial(t *testing.T) {
	var out bytes.Buffer
	irqs := 0
	s := NewSerial(&out, func() { irqs++ })
	var bus Bus
	if err := bus.Add(0x3f8, 8, s); err != nil {
		t.Fatal(err)
	}
	if err := bus.Add(0x3fc, 1, s); err == nil {
		t.Fatal("overlapping range accepted")
	}
	rd := func(port uint64) byte {
		b := []byte{0}
		bus.Read(port, b)
		return b[0]
	}
	if rd(0x3fd)&lsrTHRE == 0 {
		t.Fatal("THR not empty at reset")
	}
	for _, c := range []byte("hi\n") {
		bus.Write(0x3f8, []byte{c})
	}
	if out.String() != "hi\n" || irqs != 0 {
		t.Fatalf("output %q, %d interrupts with IER=0", out.String(), irqs)
	}
	// Divisor latch access does not print.
	bus.Write(0x3fb, []byte{lcrDLAB})
	bus.Write(0x3f8, []byte{1})
	if rd(0x3f8) != 1 || out.Len() != 3 {
		t.Fatal("DLAB write printed or did not latch")
	}
	bus.Write(0x3fb, []byte{0x03})
	// Enabling the THR-empty interrupt raises it; reading IIR clears it.
	bus.Write(0x3f9, []byte{ierTHRI})
	if irqs != 1 || rd(0x3fa)&0x0f != iirTHRI || rd(0x3fa)&0x0f != iirNone {
		t.Fatalf("THRI: %d interrupts", irqs)
	}
	// Input.
	bus.Write(0x3f9, []byte{ierRDI})
	s.Input([]byte("ok"))
	if rd(0x3fd)&lsrDR == 0 || rd(0x3f8) != 'o' || rd(0x3f8) != 'k' || rd(0x3fd)&lsrDR != 0 {
		t.Fatal("input path")
	}
	// Unmapped ports read as ones and report false.
	b := []byte{0}
	if bus.Read(0x2f8, b) || b[0] != 0xff {
		t.Fatal("unmapped read")
	}
}

func TestI8042AndSnapshotPort(t *testing.T) {
	resets := 0
	d := &I8042{Reset: func() { resets++ }}
	d.Write(4, []byte{0x01})
	d.Write(4, []byte{0xfe})
	if resets != 1 || !d.State.ResetRequested {
		t.Fatalf("resets %d", resets)
	}
	var got []uint8
	p := &SnapshotPort{Signal: func(v uint8) { got = append(got, v) }}
	p.Write(0, []byte{123})
	p.Write(0, []byte{124})
	if len(got) != 2 || got[1] != 124 {
		t.Fatalf("signals %v", got)
	}
}
