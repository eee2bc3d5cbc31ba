package virtio

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
)

// virtio-vsock (virtio 1.2, 5.10) with Firecracker's hybrid convention: the
// host side of every connection is a Unix socket.
//
//   - Host-initiated: a host program connects to the device's socket path
//     and writes "CONNECT <port>\n"; the device opens a connection to that
//     guest port and, once the guest accepts, answers "OK <host port>\n";
//     then bytes flow both ways.
//   - Guest-initiated: a guest connection to CID 2, port P is connected to
//     the Unix socket "<path>_<P>"; if nobody listens there the guest gets a
//     reset.
//
// Flow control is virtio-vsock's credit scheme: each side advertises its
// buffer space (buf_alloc) and how much it has consumed (fwd_cnt); a sender
// never has more than buf_alloc - (sent - peer fwd_cnt) in flight.

const (
	vsockHostCID = 2

	vsockOpRequest       = 1
	vsockOpResponse      = 2
	vsockOpRst           = 3
	vsockOpShutdown      = 4
	vsockOpRW            = 5
	vsockOpCreditUpdate  = 6
	vsockOpCreditRequest = 7
	vsockTypeStream      = 1
	vsockHdrSize         = 44

	vsockBufAlloc   = 256 << 10
	vsockEventReset = 0 // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET

	vsockQueueRX    = 0
	vsockQueueTX    = 1
	vsockQueueEvent = 2
)

type vsockHdr struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

func (h *vsockHdr) decode(b []byte) {
	le := binary.LittleEndian
	h.SrcCID, h.DstCID = le.Uint64(b[0:]), le.Uint64(b[8:])
	h.SrcPort, h.DstPort = le.Uint32(b[16:]), le.Uint32(b[20:])
	h.Len = le.Uint32(b[24:])
	h.Type, h.Op = le.Uint16(b[28:]), le.Uint16(b[30:])
	h.Flags, h.BufAlloc, h.FwdCnt = le.Uint32(b[32:]), le.Uint32(b[36:]), le.Uint32(b[40:])
}

func (h *vsockHdr) encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}

// connKey names a connection by its two ports.
type connKey struct{ local, peer uint32 } // local: host port, peer: guest port

type vsockConn struct {
	key  connKey
	unix net.Conn
	// Guest → host accounting: bytes the device consumed (fwd_cnt).
	fwdCnt uint32
	// Host → guest: bytes sent, and the guest's credit.
	txCnt        uint32
	peerBufAlloc uint32
	peerFwdCnt   uint32
	// pending is host data read but not yet delivered to the guest.
	pending     []byte
	established bool
	// hostInitiated: the device asked the guest to connect; ok is sent
	// to the Unix side when the guest accepts.
	hostInitiated bool
	readerGone    bool
	credit        chan struct{} // wakes the reader when the guest has room again
}

// VsockState is the device's state that survives a snapshot: the guest
// CID. Connections do not survive; on restore the guest is told the
// transport was reset.
type VsockState struct {
	CID      uint64
	Features uint64
}

// Vsock is a virtio-vsock device bridging to Unix sockets.
type Vsock struct {
	State VsockState
	path  string
	log   *slog.Logger

	mu       sync.Mutex
	queues   []*Queue
	irq      func()
	conns    map[connKey]*vsockConn
	control  []vsockHdr // replies waiting for RX buffers
	nextPort uint32
	ln       net.Listener
	closed   bool
}

// NewVsock creates a device for guest CID cid whose host side is the Unix
// socket path (it listens there for host-initiated connections).
func NewVsock(cid uint64, path string, log *slog.Logger) (*Vsock, error) {
	if cid < 3 {
		return nil, fmt.Errorf("vsock guest CID %d: must be 3 or more", cid)
	}
	if log == nil {
		log = slog.Default()
	}
	v := &Vsock{State: VsockState{CID: cid}, path: path, log: log, conns: map[connKey]*vsockConn{}, nextPort: 1 << 30}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	v.ln = ln
	go v.accept()
	return v, nil
}

// Close stops listening and drops every connection.
func (v *Vsock) Close() error {
	v.mu.Lock()
	v.closed = true
	for _, c := range v.conns {
		c.unix.Close()
	}
	v.conns = map[connKey]*vsockConn{}
	v.mu.Unlock()
	return v.ln.Close()
}

// Quiesce stops the device touching guest memory: host-side events that
// arrive later (a connection closing) are dropped. For a VM that has
// stopped, whose memory may no longer be served.
func (v *Vsock) Quiesce() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.queues = nil
}

// Type implements Device.
func (v *Vsock) Type() uint32 { return TypeVsock }

// Features implements Device (only VERSION_1).
func (v *Vsock) Features() uint64 { return 0 }

// QueueSizes implements Device: rx, tx, event.
func (v *Vsock) QueueSizes() []uint16 { return []uint16{256, 256, 256} }

// ReadConfig implements Device: guest_cid (u64) at 0.
func (v *Vsock) ReadConfig(off uint64, data []byte) {
	var cfg [8]byte
	binary.LittleEndian.PutUint64(cfg[:], v.State.CID)
	for i := range data {
		if o := off + uint64(i); o < 8 {
			data[i] = cfg[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements Device.
func (v *Vsock) WriteConfig(uint64, []byte) {}

// Activate implements Device.
func (v *Vsock) Activate(features uint64, queues []*Queue, irq func()) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.State.Features = features
	v.queues, v.irq = queues, irq
	return nil
}

// Reset implements Device: every connection is dropped.
func (v *Vsock) Reset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.conns {
		c.unix.Close()
	}
	v.conns = map[connKey]*vsockConn{}
	v.queues, v.control = nil, nil
}

// Notify implements Device.
func (v *Vsock) Notify(i int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.queues == nil {
		return
	}
	if i == vsockQueueTX {
		v.processTX()
	}
	// New RX buffers (or TX replies) may let pending data through.
	v.flushRX()
}

func (v *Vsock) processTX() {
	q := v.queues[vsockQueueTX]
	served := false
	for {
		head, chain, ok, err := q.Pop()
		if err != nil {
			v.log.Warn("vsock: tx queue", "err", err)
			return
		}
		if !ok {
			break
		}
		pkt, err := gather(q.mem, chain)
		if err != nil || len(pkt) < vsockHdrSize {
			v.log.Warn("vsock: malformed tx packet", "err", err, "len", len(pkt))
		} else {
			var h vsockHdr
			h.decode(pkt)
			payload := pkt[vsockHdrSize:]
			if int(h.Len) <= len(payload) {
				payload = payload[:h.Len]
			}
			v.fromGuest(h, payload)
		}
		_ = q.Push(head, 0)
		served = true
	}
	if served && q.NeedsInterrupt() && v.irq != nil {
		v.irq()
	}
}

// gather copies a driver-readable chain into one buffer.
func gather(mem Memory, chain []Desc) ([]byte, error) {
	var out []byte
	for _, d := range chain {
		if d.Write {
			continue
		}
		b, err := mem.Slice(d.Addr, int(d.Len))
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

func (v *Vsock) reply(to vsockHdr, op uint16) {
	v.control = append(v.control, vsockHdr{SrcCID: vsockHostCID, DstCID: v.State.CID, SrcPort: to.DstPort, DstPort: to.SrcPort, Type: vsockTypeStream, Op: op})
}

// fromGuest handles one packet the guest sent. Called with v.mu held.
func (v *Vsock) fromGuest(h vsockHdr, payload []byte) {
	if h.DstCID != vsockHostCID || h.Type != vsockTypeStream {
		v.reply(h, vsockOpRst)
		return
	}
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	c := v.conns[key]
	if c != nil {
		c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
		c.wake()
	}
	switch h.Op {
	case vsockOpRequest:
		if c != nil {
			v.reply(h, vsockOpRst)
			return
		}
		// Guest-initiated: connect to <path>_<port> without blocking the
		// vCPU on a slow listener for long.
		conn, err := net.Dial("unix", v.path+"_"+strconv.FormatUint(uint64(h.DstPort), 10))
		if err != nil {
			v.reply(h, vsockOpRst)
			return
		}
		c = v.newConn(key, conn, h)
		c.established = true
		v.reply(h, vsockOpResponse)
		go v.readHost(c)
	case vsockOpResponse:
		if c == nil || !c.hostInitiated || c.established {
			v.reply(h, vsockOpRst)
			return
		}
		c.established = true
		if _, err := fmt.Fprintf(c.unix, "OK %d\n", key.local); err != nil {
			v.drop(c, true)
			return
		}
		go v.readHost(c)
	case vsockOpRW:
		if c == nil || !c.established {
			v.reply(h, vsockOpRst)
			return
		}
		if _, err := c.unix.Write(payload); err != nil {
			v.drop(c, true)
			return
		}
		c.fwdCnt += uint32(len(payload))
		// Tell the guest about the room it regained, now and then.
		if c.fwdCnt%(vsockBufAlloc/4) < uint32(len(payload)) {
			v.replyCredit(c)
		}
	case vsockOpCreditRequest:
		if c != nil {
			v.replyCredit(c)
		}
	case vsockOpCreditUpdate:
		// Recorded above.
	case vsockOpShutdown, vsockOpRst:
		if c != nil {
			v.drop(c, h.Op == vsockOpShutdown)
		}
	default:
		v.reply(h, vsockOpRst)
	}
}

func (v *Vsock) replyCredit(c *vsockConn) {
	v.control = append(v.control, vsockHdr{SrcCID: vsockHostCID, DstCID: v.State.CID, SrcPort: c.key.local, DstPort: c.key.peer, Type: vsockTypeStream, Op: vsockOpCreditUpdate})
}

func (v *Vsock) newConn(key connKey, conn net.Conn, h vsockHdr) *vsockConn {
	c := &vsockConn{key: key, unix: conn, peerBufAlloc: h.BufAlloc, peerFwdCnt: h.FwdCnt, credit: make(chan struct{}, 1)}
	v.conns[key] = c
	return c
}

func (c *vsockConn) wake() {
	select {
	case c.credit <- struct{}{}:
	default:
	}
}

// drop closes a connection; with rst the guest is told.
func (v *Vsock) drop(c *vsockConn, rst bool) {
	if v.conns[c.key] != c {
		return
	}
	delete(v.conns, c.key)
	c.unix.Close()
	c.wake()
	if rst {
		v.control = append(v.control, vsockHdr{SrcCID: vsockHostCID, DstCID: v.State.CID, SrcPort: c.key.local, DstPort: c.key.peer, Type: vsockTypeStream, Op: vsockOpRst})
	}
}

// flushRX delivers control packets and pending host data into the guest's
// RX buffers. Called with v.mu held.
func (v *Vsock) flushRX() {
	if v.queues == nil {
		return
	}
	q := v.queues[vsockQueueRX]
	delivered := false
	for {
		var h vsockHdr
		var payload []byte
		var c *vsockConn
		switch {
		case len(v.control) > 0:
			h = v.control[0]
		default:
			for _, cc := range v.conns {
				if len(cc.pending) > 0 && cc.established && cc.room() > 0 {
					c = cc
					break
				}
			}
			if c == nil {
				goto done
			}
			h = vsockHdr{SrcCID: vsockHostCID, DstCID: v.State.CID, SrcPort: c.key.local, DstPort: c.key.peer, Type: vsockTypeStream, Op: vsockOpRW}
		}
		head, chain, ok, err := q.Pop()
		if err != nil || !ok {
			if err != nil {
				v.log.Warn("vsock: rx queue", "err", err)
			}
			goto done
		}
		space := 0
		for _, d := range chain {
			if d.Write {
				space += int(d.Len)
			}
		}
		if c != nil {
			n := min(len(c.pending), space-vsockHdrSize, int(c.room()))
			if n <= 0 {
				_ = q.Push(head, 0)
				goto done
			}
			payload = c.pending[:n]
		}
		h.Len = uint32(len(payload))
		if cc := v.conns[connKey{local: h.SrcPort, peer: h.DstPort}]; cc != nil {
			h.BufAlloc, h.FwdCnt = vsockBufAlloc, cc.fwdCnt
		}
		pkt := make([]byte, vsockHdrSize+len(payload))
		h.encode(pkt)
		copy(pkt[vsockHdrSize:], payload)
		n, err := scatter(q.mem, chain, pkt)
		if err != nil {
			v.log.Warn("vsock: rx buffer", "err", err)
		}
		_ = q.Push(head, uint32(n))
		delivered = true
		if c != nil {
			c.pending = c.pending[len(payload):]
			c.txCnt += uint32(len(payload))
			c.wake()
		} else {
			v.control = v.control[1:]
		}
	}
done:
	if delivered && q.NeedsInterrupt() && v.irq != nil {
		v.irq()
	}
}

// room is how much more the guest can take.
func (c *vsockConn) room() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

func scatter(mem Memory, chain []Desc, data []byte) (int, error) {
	n := 0
	for _, d := range chain {
		if !d.Write || n == len(data) {
			continue
		}
		b, err := mem.Slice(d.Addr, int(d.Len))
		if err != nil {
			return n, err
		}
		n += copy(b, data[n:])
	}
	if n < len(data) {
		return n, fmt.Errorf("rx buffer of %d bytes for a %d-byte packet", n, len(data))
	}
	return n, nil
}

// readHost moves bytes from the Unix side to the guest, within the
// guest's credit.
func (v *Vsock) readHost(c *vsockConn) {
	buf := make([]byte, 64<<10)
	for {
		v.mu.Lock()
		for len(c.pending) > 0 && v.conns[c.key] == c {
			v.mu.Unlock()
			<-c.credit
			v.mu.Lock()
		}
		live := v.conns[c.key] == c
		v.mu.Unlock()
		if !live {
			return
		}
		n, err := c.unix.Read(buf)
		v.mu.Lock()
		if n > 0 {
			c.pending = append(c.pending, buf[:n]...)
		}
		if err != nil {
			// The host side closed: tell the guest once the data is out.
			if v.conns[c.key] == c {
				v.control = append(v.control, vsockHdr{SrcCID: vsockHostCID, DstCID: v.State.CID, SrcPort: c.key.local, DstPort: c.key.peer, Type: vsockTypeStream, Op: vsockOpShutdown, Flags: 3})
				delete(v.conns, c.key)
			}
			v.flushRX()
			v.mu.Unlock()
			return
		}
		v.flushRX()
		v.mu.Unlock()
	}
}

// accept takes host-initiated connections: "CONNECT <port>\n".
func (v *Vsock) accept() {
	for {
		conn, err := v.ln.Accept()
		if err != nil {
			return
		}
		go v.hostConnect(conn)
	}
}

func (v *Vsock) hostConnect(conn net.Conn) {
	line, err := bufio.NewReader(&oneByteReader{conn}).ReadString('\n')
	port, perr := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "CONNECT ")), 10, 32)
	if err != nil || !strings.HasPrefix(line, "CONNECT ") || perr != nil {
		conn.Close()
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed || v.queues == nil {
		conn.Close()
		return
	}
	v.nextPort++
	key := connKey{local: v.nextPort, peer: uint32(port)}
	c := v.newConn(key, conn, vsockHdr{})
	c.hostInitiated = true
	v.control = append(v.control, vsockHdr{SrcCID: vsockHostCID, DstCID: v.State.CID, SrcPort: key.local, DstPort: key.peer, Type: vsockTypeStream, Op: vsockOpRequest})
	v.flushRX()
}

// oneByteReader keeps bufio from reading past the CONNECT line.
type oneByteReader struct{ r net.Conn }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// TransportReset tells the guest every connection is gone (after a
// restore): an event on the event queue.
func (v *Vsock) TransportReset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.queues == nil {
		return
	}
	q := v.queues[vsockQueueEvent]
	head, chain, ok, err := q.Pop()
	if err != nil || !ok {
		return
	}
	var ev [4]byte
	binary.LittleEndian.PutUint32(ev[:], vsockEventReset)
	n, _ := scatter(q.mem, chain, ev[:])
	_ = q.Push(head, uint32(n))
	if v.irq != nil {
		v.irq()
	}
}
