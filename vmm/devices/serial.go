package devices

import (
	"io"
)

// 8250 register offsets and bits.
const (
	uartData = 0 // RBR/THR, or DLL with DLAB
	uartIER  = 1 // or DLM with DLAB
	uartIIR  = 2 // read: IIR; write: FCR
	uartLCR  = 3
	uartMCR  = 4
	uartLSR  = 5
	uartMSR  = 6
	uartSCR  = 7

	lcrDLAB = 0x80
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmitter holding register empty
	iirNone = 0x01
	iirTHRI = 0x02
	iirRDI  = 0x04
	iirFIFO = 0xc0
	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40
	mcrLoop = 0x10
	msrDCD  = 0x80
	msrDSR  = 0x20
	msrCTS  = 0x10
)

// SerialState is the 8250's registers.
type SerialState struct {
	IER, IIR, LCR, MCR, LSR, MSR, SCR, DLL, DLM uint8
	// THREPending: a THR-empty interrupt is owed to the guest.
	THREPending bool
	// In is received data not yet read by the guest.
	In []byte
}

// Serial is an 8250 UART (COM1) whose output goes to Out. It raises its
// interrupt through Interrupt (edge: called once per event).
type Serial struct {
	State     SerialState
	Out       io.Writer
	Interrupt func()
}

// NewSerial returns a UART in its reset state.
func NewSerial(out io.Writer, irq func()) *Serial {
	return &Serial{
		State:     SerialState{IIR: iirNone, LSR: lsrTHRE | lsrTEMT, MSR: msrDCD | msrDSR | msrCTS, DLL: 12},
		Out:       out,
		Interrupt: irq,
	}
}

func (s *Serial) update() {
	st := &s.State
	iir := uint8(iirNone)
	switch {
	case st.IER&ierRDI != 0 && len(st.In) > 0:
		iir = iirRDI
	case st.IER&ierTHRI != 0 && st.THREPending:
		iir = iirTHRI
	}
	st.IIR = iir
	if len(st.In) > 0 {
		st.LSR |= lsrDR
	} else {
		st.LSR &^= lsrDR
	}
	if iir != iirNone && s.Interrupt != nil {
		s.Interrupt()
	}
}

// Read implements Device.
func (s *Serial) Read(off uint64, data []byte) {
	st := &s.State
	var v uint8
	switch off {
	case uartData:
		if st.LCR&lcrDLAB != 0 {
			v = st.DLL
		} else if len(st.In) > 0 {
			v, st.In = st.In[0], st.In[1:]
			s.update()
		}
	case uartIER:
		if st.LCR&lcrDLAB != 0 {
			v = st.DLM
		} else {
			v = st.IER
		}
	case uartIIR:
		v = st.IIR | iirFIFO
		if st.IIR == iirTHRI {
			st.THREPending = false // reading IIR clears the THRE interrupt
			s.update()
		}
	case uartLCR:
		v = st.LCR
	case uartMCR:
		v = st.MCR
	case uartLSR:
		v = st.LSR
	case uartMSR:
		v = st.MSR
	case uartSCR:
		v = st.SCR
	}
	if len(data) > 0 {
		data[0] = v
	}
}

// Write implements Device.
func (s *Serial) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	st := &s.State
	v := data[0]
	switch off {
	case uartData:
		if st.LCR&lcrDLAB != 0 {
			st.DLL = v
			return
		}
		if st.MCR&mcrLoop != 0 {
			st.In = append(st.In, v)
		} else if s.Out != nil {
			s.Out.Write([]byte{v})
		}
		st.THREPending = true
		s.update()
	case uartIER:
		if st.LCR&lcrDLAB != 0 {
			st.DLM = v
			return
		}
		old := st.IER
		st.IER = v & 0x0f
		if st.IER&ierTHRI != 0 && old&ierTHRI == 0 {
			st.THREPending = true // enabling THRI with an empty THR interrupts
		}
		s.update()
	case uartLCR:
		st.LCR = v
	case uartMCR:
		st.MCR = v
	case uartSCR:
		st.SCR = v
	}
}

// Input queues bytes for the guest to read (a console's stdin).
func (s *Serial) Input(b []byte) {
	s.State.In = append(s.State.In, b...)
	s.update()
}
